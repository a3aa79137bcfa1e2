"""Box-level uncertainty measures and the per-detection BOX_SCORES table."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from al_assets.core.schemas import BOX_SCORES, DETECTIONS
from al_assets.core.scoring import measures as m
from al_assets.core.scoring.box_scores import box_scores

MEASURE_FUNCTIONS = {
    "least_confidence": m.least_confidence,
    "least_confidence_norm": m.least_confidence_normalized,
    "margin": m.margin,
    "margin_uncertainty": m.margin_uncertainty,
    "ratio": m.ratio,
    "entropy": m.entropy,
    "entropy_norm": m.entropy_normalized,
}


def _all(probs, **kwargs) -> dict[str, np.ndarray]:
    result = m.box_measures(probs, **kwargs)
    return {name: getattr(result, name) for name in ("p1", "p2", *MEASURE_FUNCTIONS)}


# --- hand-worked examples -------------------------------------------------------------------

H_532 = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))  # 1.0296530140645737
N_532 = H_532 / math.log(3)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            [0.5, 0.3, 0.2],
            dict(p1=0.5, p2=0.3, least_confidence=0.5, least_confidence_norm=0.75, margin=0.2,
                 margin_uncertainty=0.8, ratio=0.6, entropy=H_532, entropy_norm=N_532),
        ),
        (
            [0.25, 0.25, 0.25, 0.25],
            dict(p1=0.25, p2=0.25, least_confidence=0.75, least_confidence_norm=1.0, margin=0.0,
                 margin_uncertainty=1.0, ratio=1.0, entropy=math.log(4), entropy_norm=1.0),
        ),
        (
            [0.0, 1.0, 0.0],
            dict(p1=1.0, p2=0.0, least_confidence=0.0, least_confidence_norm=0.0, margin=1.0,
                 margin_uncertainty=0.0, ratio=0.0, entropy=0.0, entropy_norm=0.0),
        ),
        (  # unnormalized: renormalized to [0.5, 0.3, 0.2]
            [5.0, 3.0, 2.0],
            dict(p1=0.5, p2=0.3, least_confidence=0.5, least_confidence_norm=0.75, margin=0.2,
                 margin_uncertainty=0.8, ratio=0.6, entropy=H_532, entropy_norm=N_532),
        ),
    ],
)
def test_hand_worked_rows(row: list[float], expected: dict[str, float]) -> None:
    got = _all(np.array([row]))
    for name, value in expected.items():
        assert got[name][0] == pytest.approx(value, abs=1e-12), name


def test_each_function_matches_box_measures_and_the_formula() -> None:
    probs = np.random.default_rng(3).dirichlet(np.ones(6), size=50)
    top = np.sort(probs, axis=1)[:, ::-1]
    p1, p2 = top[:, 0], top[:, 1]
    formulas = {
        "least_confidence": 1 - p1,
        "least_confidence_norm": 6 / 5 * (1 - p1),
        "margin": p1 - p2,
        "margin_uncertainty": 1 - (p1 - p2),
        "ratio": p2 / p1,
        "entropy": scipy.stats.entropy(probs, axis=1),
        "entropy_norm": scipy.stats.entropy(probs, axis=1) / math.log(6),
    }
    for name, fn in MEASURE_FUNCTIONS.items():
        np.testing.assert_allclose(fn(probs), formulas[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_entropy_matches_scipy_with_zeros_and_unnormalized_rows() -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(20, 0.2), size=300) * rng.uniform(0.1, 10, (300, 1))
    probs[rng.random(probs.shape) < 0.2] = 0.0
    probs[:, 0] += 0.01  # keep every row positive
    expected = scipy.stats.entropy(probs, axis=1)
    np.testing.assert_allclose(m.entropy(probs), expected, rtol=1e-12, atol=1e-14)


def test_float32_stays_float32_and_agrees_with_float64() -> None:
    probs = np.random.default_rng(1).dirichlet(np.full(91, 0.3), size=2000)
    probs[:, 5] = 0.0
    got32, got64 = _all(probs.astype(np.float32)), _all(probs)
    for name in got64:
        assert got32[name].dtype == np.float32, name
        np.testing.assert_allclose(got32[name], got64[name], atol=2e-6, err_msg=name)


# --- invalid rows, edge cases ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([0.5, np.nan, 0.5], "NaN or inf"),
        ([0.5, np.inf, 0.5], "NaN or inf"),
        ([0.5, -np.inf, 0.5], "NaN or inf"),
        ([0.7, -0.1, 0.4], "negative probability"),
        ([0.0, 0.0, 0.0], "sums to 0"),
    ],
)
def test_invalid_rows_raise_naming_the_row(bad: list[float], message: str) -> None:
    probs = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], bad, [np.nan, 0.0, 0.0]])
    for fn in (m.entropy, m.margin, m.box_measures):
        with pytest.raises(m.InvalidProbabilitiesError, match=f"row 2 .*{message}") as info:
            fn(probs)
        assert info.value.row == 2
        assert isinstance(info.value, ValueError)


def test_invalid_row_found_in_any_block_and_with_threads() -> None:
    probs = np.random.default_rng(0).dirichlet(np.ones(91), size=40_000).astype(np.float32)
    probs[33_333, 7] = -1e-3
    with pytest.raises(m.InvalidProbabilitiesError, match="row 33333 contains a negative"):
        m.box_measures(probs, workers=2)


def test_single_class_is_certain() -> None:
    got = _all(np.array([[1.0], [0.3]]))  # 0.3 renormalizes to 1
    expected = dict(p1=1, p2=0, least_confidence=0, least_confidence_norm=0, margin=1,
                    margin_uncertainty=0, ratio=0, entropy=0, entropy_norm=0)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], [value, value], err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_give_margin_zero_and_ratio_one(dtype) -> None:
    got = _all(np.array([[0.1, 0.45, 0.45], [0.3, 0.3, 0.3]], dtype=dtype))
    np.testing.assert_array_equal(got["margin"], [0.0, 0.0])
    np.testing.assert_array_equal(got["ratio"], [1.0, 1.0])


@pytest.mark.parametrize("width", [0, 1, 91])
def test_zero_rows_give_empty_results(width: int) -> None:
    got = _all(np.zeros((0, width), dtype=np.float32))
    for name, values in got.items():
        assert values.shape == (0,) and values.dtype == np.float32, name


def test_bad_shapes_and_arguments_raise() -> None:
    with pytest.raises(ValueError, match="2-D"):
        m.entropy(np.array([0.5, 0.5]))
    with pytest.raises(m.InvalidProbabilitiesError, match="row 0 is empty"):
        m.entropy(np.zeros((2, 0)))
    with pytest.raises(ValueError, match="num_classes=2 is invalid"):
        m.entropy(np.array([[0.2, 0.3, 0.5]]), num_classes=2)
    with pytest.raises(ValueError, match="row_lengths"):
        m.box_measures(np.array([[0.2, 0.8]]), row_lengths=[3])


def test_integer_and_list_inputs_are_computed_as_float64() -> None:
    got = m.entropy([[1, 1], [2, 0]])
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [math.log(2), 0.0])


# --- top-k rows -----------------------------------------------------------------------------


def test_top_k_row_uses_exact_p1_p2_and_renormalized_entropy() -> None:
    got = _all(np.array([[0.6, 0.3]]), num_classes=5)
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    expected = dict(p1=0.6, p2=0.3, least_confidence=0.4, least_confidence_norm=0.5, margin=0.3,
                    margin_uncertainty=0.7, ratio=0.5, entropy=h, entropy_norm=h / math.log(5))
    for name, value in expected.items():
        assert got[name][0] == pytest.approx(value, abs=1e-12), name


def test_top_1_row_has_p2_zero() -> None:
    got = _all(np.array([[0.7]]), num_classes=3)
    assert (got["p1"][0], got["p2"][0], got["margin"][0], got["ratio"][0]) == (0.7, 0.0, 0.7, 0.0)
    assert got["least_confidence_norm"][0] == pytest.approx(1.5 * 0.3)
    assert got["entropy"][0] == 0.0


def test_top_k_summing_above_one_is_scaled_down() -> None:
    got = _all(np.array([[0.8, 0.4]]), num_classes=4)
    assert got["p1"][0] == pytest.approx(0.8 / 1.2) and got["p2"][0] == pytest.approx(0.4 / 1.2)


def test_row_lengths_mark_padded_top_k_rows() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.0], [0.5, 0.0, 0.0]])
    got = _all(probs, num_classes=3, row_lengths=[3, 2, 1])
    np.testing.assert_allclose(got["p1"], [0.5, 0.6, 0.5])  # top-k rows are not renormalized
    np.testing.assert_allclose(got["p2"], [0.3, 0.3, 0.0])
    np.testing.assert_allclose(got["entropy"], [H_532, scipy.stats.entropy([0.6, 0.3]), 0.0])


# --- inputs are never written ---------------------------------------------------------------


def test_inputs_are_not_mutated() -> None:
    probs = np.random.default_rng(2).dirichlet(np.ones(10), size=500).astype(np.float32)
    probs[:, 3] = 0.0
    probs[7] *= 3.0
    for source in (probs, np.asfortranarray(probs), probs[:, ::-1]):
        before = source.copy()
        source.flags.writeable = False  # any write would raise
        m.box_measures(source, workers=2)
        m.box_measures(source[:, :4], num_classes=10)
        np.testing.assert_array_equal(source, before)


# --- properties -----------------------------------------------------------------------------


@st.composite
def distributions(draw, min_classes: int = 1) -> np.ndarray:
    n = draw(st.integers(min_value=min_classes, max_value=12))
    rows = draw(st.integers(min_value=1, max_value=8))
    values = draw(
        arrays(np.float64, (rows, n), elements=st.floats(0.0, 1.0, allow_subnormal=False))
    )
    values[:, 0] += 1e-3  # a positive sum
    return values


@settings(max_examples=100, deadline=None)
@given(distributions())
def test_ranges(probs: np.ndarray) -> None:
    got = _all(probs)
    log_n = math.log(probs.shape[1])
    for name, values in got.items():
        upper = log_n + 1e-12 if name == "entropy" else 1.0
        assert np.all(values >= 0.0) and np.all(values <= upper), (name, values)


@settings(max_examples=100, deadline=None)
@given(distributions(), st.floats(0.0, 1.0))
def test_top_k_ranges_and_entropy_lower_bound(probs: np.ndarray, keep: float) -> None:
    """The renormalized top-k entropy never exceeds the full entropy (majorization)."""
    n = probs.shape[1]
    k = max(1, round(keep * n))
    top = -np.sort(-probs, axis=1)[:, :k]
    got, full = _all(top, num_classes=n), _all(probs)
    assert np.all(got["entropy"] <= full["entropy"] + 1e-12)
    for name, values in got.items():
        upper = math.log(n) + 1e-12 if name == "entropy" else 1.0
        assert np.all(values >= 0.0) and np.all(values <= upper), name


@settings(max_examples=100, deadline=None)
@given(distributions(min_classes=2), st.floats(0.01, 0.99))
def test_moving_mass_from_p1_to_p2_raises_uncertainty(probs: np.ndarray, fraction: float) -> None:
    probs = probs / probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1)
    rows = np.arange(len(probs))
    i1, i2 = order[:, 0], order[:, 1]
    gap = probs[rows, i1] - probs[rows, i2]
    delta = fraction * gap / 2  # p1 stays >= p2
    moved = probs.copy()
    moved[rows, i1] -= delta
    moved[rows, i2] += delta
    changed = delta > 1e-6
    before, after = _all(probs), _all(moved)
    for name in ("least_confidence", "ratio", "entropy"):
        assert np.all(after[name][changed] > before[name][changed]), name
    assert np.all(after["margin"][changed] < before["margin"][changed])
    unchanged = ~changed
    np.testing.assert_allclose(after["margin"][unchanged], before["margin"][unchanged], atol=3e-6)


@settings(max_examples=100, deadline=None)
@given(distributions(), st.randoms(use_true_random=False))
def test_measures_are_permutation_invariant(probs: np.ndarray, random) -> None:
    perm = list(range(probs.shape[1]))
    random.shuffle(perm)
    before, after = _all(probs), _all(probs[:, perm])
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-12, atol=1e-12, err_msg=name)


@settings(max_examples=100, deadline=None)
@given(distributions(), st.floats(1e-3, 1e3))
def test_full_rows_are_scale_invariant(probs: np.ndarray, scale: float) -> None:
    before, after = _all(probs), _all(probs * scale)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-9, atol=1e-12, err_msg=name)


@settings(max_examples=100, deadline=None)
@given(distributions())
def test_entropy_agrees_with_scipy(probs: np.ndarray) -> None:
    np.testing.assert_allclose(
        m.entropy(probs), scipy.stats.entropy(probs, axis=1), rtol=1e-10, atol=1e-12
    )


# --- the BOX_SCORES table -------------------------------------------------------------------


def _detection(scores, labels, distribution=None, score=0.9, label_id=1, x=0.0) -> dict:
    box = dict(xmin=x, ymin=1.0, xmax=x + 10.0, ymax=21.0)
    return dict(box=box, score=score, label_id=label_id, label_ids=labels, scores=scores,
                distribution=distribution)


def _image(image_id: int, detections: list[dict], version: int = 1) -> dict:
    return dict(image_id=image_id, uri=f"file:///pool/{image_id}.jpg", width=640, height=480,
                model_name="detector", model_version=version, shard=f"s{image_id % 2}",
                detections=detections)


def _predictions(*images: dict) -> pa.Table:
    return pa.Table.from_pylist(list(images), schema=DETECTIONS)


def test_box_scores_flattens_detections_with_their_measures() -> None:
    predictions = _predictions(
        _image(7, [
            _detection([0.5, 0.3], [3, 5], [0.3, 0.5, 0.2], score=0.8, label_id=3, x=1.0),
            _detection([0.9], [9], [0.05, 0.05, 0.9], score=0.7, label_id=9, x=2.0),
        ]),
        _image(8, []),
        _image(9, [_detection([1 / 3, 1 / 3], [4, 1], [1 / 3, 1 / 3, 1 / 3], label_id=4)]),
    )
    table = box_scores(predictions)
    assert table.schema.equals(BOX_SCORES)
    rows = table.to_pylist()
    assert [(r["image_id"], r["det_index"]) for r in rows] == [(7, 0), (7, 1), (9, 0)]
    assert [r["uri"] for r in rows] == [f"file:///pool/{i}.jpg" for i in (7, 7, 9)]
    assert [r["shard"] for r in rows] == ["s1", "s1", "s1"]
    assert [r["box"]["xmin"] for r in rows] == [1.0, 2.0, 0.0]
    assert [(r["label_id"], r["first_label_id"], r["second_label_id"]) for r in rows] == [
        (3, 3, 5), (9, 9, None), (4, 4, 1)
    ]
    assert rows[0]["score"] == pytest.approx(0.8) and all(r["from_distribution"] for r in rows)
    # the full distribution is used, so the single-score detection still has p2 = 0.05
    assert rows[1]["p2"] == pytest.approx(0.05) and rows[1]["ratio"] == pytest.approx(0.05 / 0.9)
    assert rows[0]["entropy"] == pytest.approx(H_532, rel=1e-6)
    assert rows[0]["least_confidence_norm"] == pytest.approx(0.75, rel=1e-6)
    assert rows[2]["margin"] == 0.0 and rows[2]["ratio"] == 1.0
    assert rows[2]["entropy_norm"] == pytest.approx(1.0, rel=1e-6)


def test_box_scores_match_box_measures_on_the_same_rows() -> None:
    rng = np.random.default_rng(11)
    dist = rng.dirichlet(np.full(8, 0.5), size=30).astype(np.float32)
    images = [
        _image(i, [_detection([1.0], [1], dist[j].tolist()) for j in range(3 * i, 3 * i + 3)])
        for i in range(10)
    ]
    table = box_scores(_predictions(*images))
    expected = _all(dist)
    for name, values in expected.items():
        np.testing.assert_array_equal(table.column(name).to_numpy(), values, err_msg=name)


def test_top_k_only_detections_need_num_classes() -> None:
    predictions = _predictions(_image(1, [_detection([0.6, 0.3], [2, 7]), _detection([0.5], [4])]))
    message = "image_id 1 .*detection 0 has only top-k scores.*num_classes"
    with pytest.raises(ValueError, match=message):
        box_scores(predictions)
    rows = box_scores(predictions, num_classes=5).to_pylist()
    assert [r["from_distribution"] for r in rows] == [False, False]
    assert [r["p1"] for r in rows] == [pytest.approx(0.6), pytest.approx(0.5)]
    assert [r["p2"] for r in rows] == [pytest.approx(0.3), 0.0]
    assert rows[0]["entropy"] == pytest.approx(scipy.stats.entropy([0.6, 0.3]), rel=1e-6)
    assert rows[1]["second_label_id"] is None and rows[1]["entropy"] == 0.0
    assert rows[0]["least_confidence_norm"] == pytest.approx(5 / 4 * 0.4, rel=1e-6)


def test_mixed_distribution_and_top_k_detections() -> None:
    predictions = _predictions(
        _image(1, [
            _detection([0.6, 0.3], [2, 7]), _detection([0.5, 0.4], [1, 2], [0.4, 0.5, 0.1])
        ]),
        _image(2, [_detection([0.9, 0.05], [1, 2])]),
    )
    rows = box_scores(predictions).to_pylist()  # num_classes inferred from the distribution
    assert [r["from_distribution"] for r in rows] == [False, True, False]
    assert [r["p1"] for r in rows] == [pytest.approx(0.6), pytest.approx(0.5), pytest.approx(0.9)]
    assert rows[0]["least_confidence_norm"] == pytest.approx(1.5 * 0.4, rel=1e-6)


def test_distribution_length_must_match_num_classes() -> None:
    predictions = _predictions(_image(4, [_detection([0.6], [2], [0.6, 0.4])]))
    message = r"image_id 4 .*detection 0: distribution has 2 entries, expected exactly 3"
    with pytest.raises(ValueError, match=message):
        box_scores(predictions, num_classes=3)
    ragged = _predictions(_image(4, [
        _detection([0.6], [2], [0.6, 0.4]), _detection([0.5], [2], [0.5, 0.3, 0.2])
    ]))
    message = "detection 1: distribution has 3 entries, expected exactly 2"
    with pytest.raises(ValueError, match=message):
        box_scores(ragged)


def test_ragged_top_k_lists_are_padded() -> None:
    predictions = _predictions(
        _image(1, [_detection([0.5, 0.2, 0.1], [1, 2, 3]), _detection([0.8], [4])]),
        _image(2, [_detection([0.4, 0.4], [5, 6])]),
    )
    rows = box_scores(predictions, num_classes=3).to_pylist()
    assert [r["p2"] for r in rows] == [pytest.approx(0.25), 0.0, pytest.approx(0.4)]
    assert rows[0]["entropy"] == pytest.approx(scipy.stats.entropy([0.5, 0.2, 0.1]), rel=1e-6)
    assert rows[0]["p1"] == pytest.approx(0.5 / 0.8)  # k == num_classes: a full, renormalized row
    assert rows[2]["ratio"] == 1.0


def test_invalid_probabilities_name_the_image_and_detection() -> None:
    predictions = _predictions(
        _image(1, [_detection([0.6], [2], [0.6, 0.4])]),
        _image(5, [
            _detection([0.6], [2], [0.6, 0.4]), _detection([0.6], [2], [0.6, float("nan")])
        ]),
    )
    message = r"image_id 5 \(uri file:///pool/5.jpg\), detection 1: .*NaN"
    with pytest.raises(ValueError, match=message):
        box_scores(predictions)


def test_label_ids_must_match_scores() -> None:
    predictions = _predictions(_image(3, [_detection([0.6, 0.3], [2], [0.6, 0.3, 0.1])]))
    with pytest.raises(ValueError, match="image_id 3 .*scores has 2 entries and label_ids 1"):
        box_scores(predictions)


def test_empty_tables_and_images_without_detections_give_no_rows() -> None:
    for predictions in (_predictions(), _predictions(_image(1, []), _image(2, []))):
        table = box_scores(predictions)
        assert table.num_rows == 0 and table.schema.equals(BOX_SCORES)


def test_chunked_and_sliced_tables_keep_det_index() -> None:
    first = _predictions(_image(1, [_detection([0.5], [1], [0.5, 0.5])] * 2))
    second = _predictions(
        _image(2, [_detection([0.7], [1], [0.7, 0.3])] * 3),
        _image(3, [_detection([0.9], [1], [0.9, 0.1])]),
    )
    table = pa.concat_tables([first, second]).slice(1)
    rows = box_scores(table).to_pylist()
    assert [(r["image_id"], r["det_index"]) for r in rows] == [(2, 0), (2, 1), (2, 2), (3, 0)]
    assert [r["p1"] for r in rows] == [pytest.approx(0.7)] * 3 + [pytest.approx(0.9)]


def test_box_scores_does_not_mutate_predictions() -> None:
    predictions = _predictions(
        _image(1, [_detection([0.6, 0.3], [2, 7], [0.1, 0.6, 0.3])]), _image(2, [])
    )
    before = predictions.to_pylist()
    box_scores(predictions)
    assert predictions.to_pylist() == before


def test_wrong_schema_is_rejected() -> None:
    with pytest.raises(ValueError, match="no column 'detections'"):
        box_scores(_predictions().drop_columns(["detections"]))
    bad = _predictions().set_column(0, "image_id", pa.array([], pa.string()))
    with pytest.raises(ValueError, match="'image_id' is string, expected int64"):
        box_scores(bad)
