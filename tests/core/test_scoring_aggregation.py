"""Image-level aggregation and ranking of box uncertainties (IMAGE_SCORES)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from al_assets.core.schemas import IMAGE_SCORES, DETECTIONS
from al_assets.core.scoring.aggregation import MEASURES, aggregate_images
from al_assets.core.scoring.box_scores import box_scores


def _boxes(image_ids: list[int], values: list[float], column: str = "entropy") -> pa.Table:
    ids, scores = pa.array(image_ids, pa.int64()), pa.array(values, pa.float32())
    return pa.table({"image_id": ids, column: scores})


def _images(*image_ids: int) -> pa.Table:
    return pa.table({
        "image_id": pa.array(image_ids, pa.int64()),
        "uri": [f"file:///pool/{i}.jpg" for i in image_ids],
    })


def _by_id(table: pa.Table, column: str) -> dict[int, object]:
    return dict(zip(table.column("image_id").to_pylist(), table.column(column).to_pylist()))


BOXES = _boxes([1, 1, 1, 2, 3, 3], [0.5, 0.25, 0.125, 0.75, 0.5, 0.5])
IMAGES = _images(1, 2, 3, 4)


@pytest.mark.parametrize(
    ("agg", "top_k", "expected"),
    [
        ("max", 3, {1: 0.5, 2: 0.75, 3: 0.5}),
        ("sum", 3, {1: 0.875, 2: 0.75, 3: 1.0}),
        ("mean", 3, {1: 0.875 / 3, 2: 0.75, 3: 0.5}),
        ("topk_mean", 2, {1: 0.375, 2: 0.75, 3: 0.5}),
        ("topk_mean", 10, {1: 0.875 / 3, 2: 0.75, 3: 0.5}),  # top_k > detections: all of them
    ],
)
def test_aggregations(agg: str, top_k: int, expected: dict[int, float]) -> None:
    table = aggregate_images(BOXES, IMAGES, measure="entropy", agg=agg, top_k=top_k)
    assert table.schema.equals(IMAGE_SCORES)
    got = _by_id(table, "uncertainty")
    assert {i: got[i] for i in expected} == pytest.approx(expected, abs=1e-12)
    assert got[4] is None
    assert _by_id(table, "n_detections") == {1: 3, 2: 1, 3: 2, 4: 0}
    assert _by_id(table, "has_detections") == {1: True, 2: True, 3: True, 4: False}
    assert set(table.column("measure").to_pylist()) == {"entropy"}
    assert set(table.column("agg").to_pylist()) == {agg}
    assert set(table.column("top_k").to_pylist()) == ({top_k} if agg == "topk_mean" else {None})


def test_rank_is_by_uncertainty_then_image_id() -> None:
    table = aggregate_images(BOXES, IMAGES, measure="entropy", agg="max")
    # 2 (0.75) first; 1 and 3 tie at 0.5 -> by image_id; the empty image 4 last
    assert table.column("image_id").to_pylist() == [2, 1, 3, 4]
    assert table.column("rank").to_pylist() == [1, 2, 3, 4]
    assert table.column("uri").to_pylist()[0] == "file:///pool/2.jpg"


def test_ties_are_deterministic_whatever_the_input_order() -> None:
    boxes = _boxes([30, 10, 20, 10], [0.4, 0.4, 0.4, 0.1])
    for images in (_images(30, 20, 10), _images(10, 30, 20)):
        table = aggregate_images(boxes, images, measure="entropy", agg="max")
        assert table.column("image_id").to_pylist() == [10, 20, 30]
    shuffled = boxes.take([3, 2, 1, 0])
    assert aggregate_images(shuffled, _images(20, 10, 30), measure="entropy").equals(
        aggregate_images(boxes, _images(10, 20, 30), measure="entropy")
    )


@pytest.mark.parametrize(
    ("policy", "order", "ranked"),
    [
        ("lowest", [2, 1, 3, 4, 5], 5),
        ("highest", [4, 5, 2, 1, 3], 5),
        ("exclude", [2, 1, 3], 3),
    ],
)
def test_empty_image_policy(policy: str, order: list[int], ranked: int) -> None:
    table = aggregate_images(BOXES, _images(5, 4, 3, 2, 1), measure="entropy", empty_images=policy)
    assert table.column("image_id").to_pylist() == order
    assert table.column("rank").to_pylist() == list(range(1, ranked + 1))
    empties = [row for row in table.to_pylist() if not row["has_detections"]]
    assert all(row["uncertainty"] is None and row["n_detections"] == 0 for row in empties)


def test_no_detections_at_all() -> None:
    boxes = _boxes([], [])
    table = aggregate_images(boxes, _images(3, 1, 2), measure="entropy", agg="topk_mean")
    assert table.column("image_id").to_pylist() == [1, 2, 3]
    assert table.column("uncertainty").null_count == 3
    assert table.column("n_detections").to_pylist() == [0, 0, 0]
    excluded = aggregate_images(boxes, _images(3, 1, 2), measure="entropy", empty_images="exclude")
    assert excluded.num_rows == 0 and excluded.schema.equals(IMAGE_SCORES)
    nothing = aggregate_images(boxes, _images(), measure="entropy")
    assert nothing.num_rows == 0 and nothing.schema.equals(IMAGE_SCORES)


def test_one_image() -> None:
    boxes = _boxes([42, 42], [0.2, 0.6])
    table = aggregate_images(boxes, _images(42), measure="entropy", agg="mean")
    assert table.to_pylist() == [dict(
        image_id=42, uri="file:///pool/42.jpg", measure="entropy", agg="mean", top_k=None,
        uncertainty=pytest.approx(0.4), n_detections=2, has_detections=True, rank=1,
    )]


@pytest.mark.parametrize("measure", ["margin", "p1", "score"])
def test_small_is_uncertain_measures_are_flipped(measure: str) -> None:
    boxes = _boxes([1, 2, 2], [0.75, 0.5, 0.875], column=MEASURES[measure][0])
    table = aggregate_images(boxes, _images(1, 2), measure=measure, agg="max")
    # uncertainty = 1 - value: image 2's 0.5 margin is the most uncertain box
    assert _by_id(table, "uncertainty") == {1: 0.25, 2: 0.5}
    assert table.column("image_id").to_pylist() == [2, 1]
    assert table.column("measure").to_pylist() == [measure, measure]


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown measure 'confusion'"):
        aggregate_images(BOXES, IMAGES, measure="confusion")
    with pytest.raises(ValueError, match="unknown agg 'median'"):
        aggregate_images(BOXES, IMAGES, measure="entropy", agg="median")
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        aggregate_images(BOXES, IMAGES, measure="entropy", agg="topk_mean", top_k=0)
    with pytest.raises(ValueError, match="empty_images must be"):
        aggregate_images(BOXES, IMAGES, measure="entropy", empty_images="last")
    with pytest.raises(ValueError, match="no column 'ratio'"):
        aggregate_images(BOXES, IMAGES, measure="ratio")
    with pytest.raises(ValueError, match="image_id 2, which is not in images"):
        aggregate_images(BOXES, _images(1, 3), measure="entropy")
    with pytest.raises(ValueError, match="image_id 3 more than once"):
        aggregate_images(BOXES, _images(1, 2, 3, 3), measure="entropy")
    with pytest.raises(ValueError, match="NaN/inf for image_id 2"):
        aggregate_images(_boxes([1, 2], [0.1, float("nan")]), IMAGES, measure="entropy")
    two_versions = BOXES.append_column("model_version", pa.array([1, 1, 1, 2, 2, 2], pa.int32()))
    with pytest.raises(ValueError, match="one model version at a time"):
        aggregate_images(two_versions, IMAGES, measure="entropy")


def test_inputs_are_not_mutated() -> None:
    margins = pa.array([0.5, 0.2, 0.1], pa.float32())
    boxes = _boxes([2, 1, 2], [0.3, 0.1, 0.9]).append_column("margin", margins)
    images = _images(2, 1, 7)
    before = (boxes.to_pylist(), images.to_pylist())
    for agg in ("max", "mean", "sum", "topk_mean"):
        for measure in ("margin", "entropy"):
            aggregate_images(boxes, images, measure=measure, agg=agg)
    assert (boxes.to_pylist(), images.to_pylist()) == before


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 7), st.floats(0.0, 1.0, width=32)), max_size=40),
    st.sampled_from(["max", "mean", "sum", "topk_mean"]),
    st.integers(1, 4),
    st.sampled_from(["lowest", "highest", "exclude"]),
)
def test_matches_a_per_image_reference(detections, agg: str, top_k: int, policy: str) -> None:
    """Against a plain-Python computation: values, empties and the order of the ranking."""
    boxes = _boxes([i for i, _ in detections], [v for _, v in detections])
    image_ids = list(range(8))
    table = aggregate_images(boxes, _images(*image_ids[::-1]), measure="entropy", agg=agg,
                             top_k=top_k, empty_images=policy)
    per_image = {i: sorted((v for j, v in detections if j == i), reverse=True) for i in image_ids}
    reduce = {"max": lambda v: v[0], "sum": sum, "mean": lambda v: sum(v) / len(v),
              "topk_mean": lambda v: sum(v[:top_k]) / len(v[:top_k])}[agg]
    expected = {i: reduce(v) if v else None for i, v in per_image.items()}
    got = _by_id(table, "uncertainty")
    scored = sorted((i for i in image_ids if per_image[i]), key=lambda i: (-got[i], i))
    empty = [i for i in image_ids if not per_image[i]]
    order = {"lowest": scored + empty, "highest": empty + scored, "exclude": scored}[policy]
    assert table.column("image_id").to_pylist() == order
    assert table.column("rank").to_pylist() == list(range(1, len(order) + 1))
    for i in order:
        want = expected[i]
        assert got[i] == (None if want is None else pytest.approx(want, rel=1e-12, abs=1e-12))


def test_predictions_to_ranked_images() -> None:
    """End to end: DETECTIONS -> box_scores -> aggregate_images."""

    def detection(dist: list[float]) -> dict:
        order = np.argsort(dist)[::-1][:2]
        return dict(box=dict(xmin=0.0, ymin=0.0, xmax=1.0, ymax=1.0), score=max(dist),
                    label_id=int(order[0]), label_ids=[int(j) for j in order],
                    scores=[dist[j] for j in order], distribution=dist)

    predictions = pa.Table.from_pylist(
        [
            dict(image_id=i, uri=f"file:///pool/{i}.jpg", width=4, height=4, model_name="m",
                 model_version=3, shard="s", detections=[detection(d) for d in dets])
            for i, dets in [
                (10, [[0.9, 0.05, 0.05], [0.5, 0.45, 0.05]]),
                (11, []),
                (12, [[1 / 3, 1 / 3, 1 / 3]]),
                (13, [[0.98, 0.01, 0.01]]),
            ]
        ],
        schema=DETECTIONS,
    )
    scores = box_scores(predictions)
    by_margin = aggregate_images(scores, predictions, measure="margin", agg="max")
    assert by_margin.column("image_id").to_pylist() == [12, 10, 13, 11]
    assert _by_id(by_margin, "uncertainty")[10] == pytest.approx(1 - 0.05, rel=1e-6)
    by_entropy = aggregate_images(scores, predictions, measure="entropy_norm", agg="mean",
                                  empty_images="highest")
    assert by_entropy.column("image_id").to_pylist() == [11, 12, 10, 13]
    assert _by_id(by_entropy, "uncertainty")[12] == pytest.approx(1.0, rel=1e-6)


def test_noise_below_min_score_is_left_out_and_its_image_counts_as_empty() -> None:
    from al_assets.core.scoring.views import confident

    boxes = pa.table({"image_id": [1, 1, 2], "score": pa.array([0.9, 0.01, 0.05], pa.float32()),
                      "entropy": [0.1, 1.0, 1.9]})
    images = pa.table({"image_id": [1, 2], "uri": ["a", "b"]})
    kept = confident(boxes, 0.2)
    assert kept["image_id"].to_pylist() == [1] and boxes.num_rows == 3  # input untouched
    assert confident(boxes, 0.0) is boxes
    ranked = aggregate_images(kept, images, measure="entropy", empty_images="lowest")
    assert ranked["image_id"].to_pylist() == [1, 2]  # the noisy image no longer leads
    assert ranked["n_detections"].to_pylist() == [1, 0]
    noisy = aggregate_images(boxes, images, measure="entropy")
    assert noisy["image_id"].to_pylist() == [2, 1]  # without the filter, noise leads the queue
