"""Model comparison on held-out images (paired bootstrap over images) and the promotion gate."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pyarrow as pa
import pytest
from pycocotools.cocoeval import COCOeval

from al_assets.core.analysis.confused_pairs import category_table
from al_assets.core.analysis.evaluation import (
    _evaluate_on,
    compare_predictions,
    evaluate_predictions,
    resampled_maps,
)
from al_assets.core.analysis.gate import GateDecision, GatePolicy, decide, per_class_deltas
from al_assets.core.schemas import ANNOTATIONS, CATEGORIES, IMAGES, DETECTIONS
from tests.core.coco_reference import reference_cocoeval

SIZE = 200
CLASSES = {1: "person", 3: "car", 7: "dog"}  # gaps on purpose: dataset ids, not indexes


# -- table builders (as in test_analysis.py) ---------------------------------------------------
def _categories(names: dict[int, str]) -> pa.Table:
    rows = [{"category_id": i, "name": n, "supercategory": None, "batch": "b0"}
            for i, n in names.items()]
    return pa.Table.from_pylist(rows, schema=CATEGORIES)


def _box(xyxy) -> dict:
    return dict(zip(("xmin", "ymin", "xmax", "ymax"), map(float, xyxy)))


def _det(xyxy, score: float, label: int) -> dict:
    return {"box": _box(xyxy), "score": score, "label_id": label, "label_ids": [label],
            "scores": [1.0], "distribution": None}


def _predictions(per_image: dict[int, list[dict]]) -> pa.Table:
    rows = [
        {"image_id": i, "uri": f"file:///pool/{i}.jpg", "width": SIZE, "height": SIZE,
         "model_name": "detector", "model_version": 1, "shard": "s0", "detections": dets}
        for i, dets in per_image.items()
    ]
    return pa.Table.from_pylist(rows, schema=DETECTIONS)


def _annotations(rows: list[tuple]) -> pa.Table:
    """rows: (ann_id, image_id, category_id, xyxy)."""
    records = [{
        "ann_id": ann_id, "image_id": image_id, "category_id": category_id,
        "label": str(category_id), "supercategory": None, "bbox": _box((x0, y0, x1, y1)),
        "bbox_xywh": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
        "iscrowd": False, "segmentation": None, "batch": "b0",
    } for ann_id, image_id, category_id, (x0, y0, x1, y1) in rows]
    return pa.Table.from_pylist(records, schema=ANNOTATIONS)


def _images(image_ids) -> pa.Table:
    rows = [{"image_id": int(i), "file_name": f"{i}.jpg", "uri": f"file:///pool/{i}.jpg",
             "width": SIZE, "height": SIZE, "date_captured": None, "batch": "b0",
             "shard": "s0"} for i in image_ids]
    return pa.Table.from_pylist(rows, schema=IMAGES)


# -- a synthetic held-out split -----------------------------------------------------------------
def _world(num_images: int, classes: dict[int, str], per_image: int, seed: int):
    """Random ground truth boxes (ann rows) on ``num_images`` images."""
    rng = np.random.default_rng(seed)
    rows, ann_id = [], 1
    for image_id in range(1, num_images + 1):
        for _ in range(int(rng.integers(1, per_image + 1))):
            x0, y0 = rng.uniform(0, 140, 2)
            w, h = rng.uniform(20, 60, 2)
            rows.append((ann_id, image_id, int(rng.choice(list(classes))), (x0, y0, x0 + w,
                                                                          y0 + h)))
            ann_id += 1
    return rows


def _model(gt_rows: list[tuple], num_images: int, *, jitter: float, miss: float,
           false_positives: int, seed: int, classes=CLASSES) -> pa.Table:
    """Detections near the ground truth: moved by up to ``jitter`` px, some missed, plus
    ``false_positives`` random boxes per image; continuous scores (no ties)."""
    rng = np.random.default_rng(seed)
    per_image: dict[int, list[dict]] = {i: [] for i in range(1, num_images + 1)}
    for _, image_id, category_id, (x0, y0, x1, y1) in gt_rows:
        if rng.random() < miss:
            continue
        dx, dy = rng.uniform(-jitter, jitter, 2)
        per_image[image_id].append(
            _det((x0 + dx, y0 + dy, x1 + dx, y1 + dy), rng.uniform(0.3, 1.0), category_id))
    for image_id in per_image:
        for _ in range(false_positives):
            x0, y0 = rng.uniform(0, 150, 2)
            per_image[image_id].append(_det((x0, y0, x0 + 30, y0 + 30), rng.uniform(0.0, 0.6),
                                            int(rng.choice(list(classes)))))
    return _predictions(per_image)


N = 40
GT_ROWS = _world(N, CLASSES, 3, seed=1)
GT = _annotations(GT_ROWS)
IMAGES_T = _images(range(1, N + 2))  # one more image than annotated: used as the empty one
CATS = _categories(CLASSES)
PERFECT = _model(GT_ROWS, N, jitter=0.0, miss=0.0, false_positives=0, seed=2)
NOISY = _model(GT_ROWS, N, jitter=8.0, miss=0.2, false_positives=2, seed=3)
NOISY_2 = _model(GT_ROWS, N, jitter=8.0, miss=0.2, false_positives=2, seed=4)


IDS = np.arange(1, N + 1)


def _evaluated(predictions: pa.Table):
    return _evaluate_on(predictions, GT, IMAGES_T, category_table(CATS), IDS, "are held out")


def _reference(predictions: pa.Table) -> COCOeval:
    return reference_cocoeval(predictions, GT, IDS, sorted(CLASSES))


def _pycocotools_resample_map(evaluator: COCOeval, resample: np.ndarray) -> float:
    """The reference: accumulate() itself on evalImgs copied per drawn image."""
    p = evaluator.params
    num_images, num_areas = len(p.imgIds), len(p.areaRng)
    copied = copy.copy(evaluator)
    copied.evalImgs = [evaluator.evalImgs[k * num_areas * num_images + a * num_images + i]
                       for k in range(len(p.catIds)) for a in range(num_areas)
                       for i in resample]
    params = copy.deepcopy(p)
    params.imgIds = list(range(len(resample)))
    copied.params, copied._paramsEval = params, copy.deepcopy(params)
    with contextlib.redirect_stdout(io.StringIO()):
        copied.accumulate()
    precision = copied.eval["precision"][:, :, :, 0, -1]
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


# -- the bootstrap's accumulate -----------------------------------------------------------------
def test_identity_resample_equals_cocoeval_stats() -> None:
    for model in (NOISY, PERFECT):
        done, evaluator = _evaluated(model), _reference(model)
        identity = resampled_maps(done.result, IDS, np.ones((1, N)))
        assert abs(identity[0] - evaluator.stats[0]) <= 1e-12
        assert identity[0] == pytest.approx(done.summary["map"], abs=1e-12)
        reference = _pycocotools_resample_map(evaluator, np.arange(N))
        assert abs(identity[0] - reference) <= 1e-12
    assert _reference(NOISY).stats[0] < 0.9  # the noisy model is not trivially 1
    assert _evaluated(NOISY).summary["map"] == pytest.approx(_reference(NOISY).stats[0],
                                                             abs=1e-12)


def test_random_resamples_match_pycocotools_accumulate() -> None:
    done, evaluator = _evaluated(NOISY), _reference(NOISY)
    rng = np.random.default_rng(7)
    draws = rng.integers(0, N, size=(5, N))
    weights = np.stack([np.bincount(d, minlength=N) for d in draws])
    ours = resampled_maps(done.result, IDS, weights)
    reference = [_pycocotools_resample_map(evaluator, d) for d in draws]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9)
    assert len(set(np.round(ours, 9))) == 5  # resamples really differ


# -- comparisons --------------------------------------------------------------------------------
def test_perfect_challenger_beats_noisy_champion_and_is_promoted() -> None:
    result = compare_predictions(PERFECT, NOISY, GT, IMAGES_T, CATS, n_boot=100)
    assert result["challenger"]["map"] == pytest.approx(1.0)
    assert result["champion"]["map"] < 0.9
    assert result["delta_map"] == pytest.approx(1.0 - result["champion"]["map"])
    assert 0 < result["delta_low"] <= result["delta_map"] <= result["delta_high"]
    assert result["challenger"]["map_low"] <= 1.0 <= result["challenger"]["map_high"] + 1e-12
    assert (result["num_images"], result["n_boot"], result["confidence"]) == (N, 100, 0.95)
    assert set(result["per_category_delta"]) == set(CLASSES)
    assert all(d > 0 for d in result["per_category_delta"].values())
    decision = decide(result, GatePolicy(require_significant=True))
    assert decision.promote, decision.reason
    assert "promoted" in decision.reason and "95% CI" in decision.reason


def test_identical_models_have_zero_delta_and_are_kept() -> None:
    result = compare_predictions(NOISY, NOISY, GT, IMAGES_T, CATS, n_boot=50)
    assert result["delta_map"] == 0.0
    assert result["delta_low"] == 0.0 and result["delta_high"] == 0.0  # paired: no noise
    decision = decide(result, GatePolicy())
    assert not decision.promote
    assert "+0.000" in decision.reason and "margin 0.005" in decision.reason


def test_two_similar_models_interval_contains_zero_not_significant() -> None:
    result = compare_predictions(NOISY, NOISY_2, GT, IMAGES_T, CATS, n_boot=200)
    assert 0 < result["delta_map"] < 0.05  # same noise, other draw: a small gain by chance
    assert result["delta_low"] < 0 < result["delta_high"]
    loose = GatePolicy(min_improvement=0.0)
    strict = GatePolicy(min_improvement=0.0, require_significant=True)
    assert decide(result, loose).promote
    assert not decide(result, strict).promote
    assert "not significant" in decide(result, strict).reason


def test_worse_challenger_is_kept() -> None:
    result = compare_predictions(NOISY, PERFECT, GT, IMAGES_T, CATS, n_boot=50)
    assert result["delta_map"] < 0 and result["delta_high"] < 0
    decision = decide(result, GatePolicy(min_improvement=0.0))
    assert not decision.promote and "kept" in decision.reason
    rows = per_class_deltas(result, CLASSES)
    assert [r["delta"] for r in rows] == sorted(r["delta"] for r in rows)  # worst first
    assert {r["name"] for r in rows} == set(CLASSES.values())
    assert all(r["champion_ap"] == pytest.approx(1.0) for r in rows)


def test_same_seed_same_intervals_other_seed_other_intervals() -> None:
    def run(seed: int) -> tuple:
        r = compare_predictions(NOISY_2, NOISY, GT, IMAGES_T, CATS, n_boot=60, seed=seed)
        return r["delta_low"], r["delta_high"], r["challenger"]["map_low"]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_empty_heldout_image_with_a_false_positive_lowers_map() -> None:
    empty = N + 1  # in IMAGES, without annotations: a held-out image labeled empty
    with_fp = pa.concat_tables([PERFECT, _predictions({empty: [_det((0, 0, 40, 40), 0.99, 1)]})])
    ids = list(range(1, N + 2))
    clean = compare_predictions(PERFECT, None, GT, IMAGES_T, CATS, image_ids=ids, n_boot=20)
    dirty = compare_predictions(with_fp, None, GT, IMAGES_T, CATS, image_ids=ids, n_boot=20)
    assert clean["challenger"]["map"] == pytest.approx(1.0)
    assert dirty["challenger"]["map"] < clean["challenger"]["map"] - 0.01
    assert dirty["challenger"]["per_category"][3] == pytest.approx(1.0)  # only class 1 hit
    assert dirty["num_images"] == N + 1
    # evaluate_predictions still leaves unannotated images out (pool semantics)
    assert evaluate_predictions(with_fp, GT, IMAGES_T, CATS)["map"] == pytest.approx(1.0)


def test_image_missing_from_a_prediction_table_counts_as_no_detections() -> None:
    ids = list(range(1, N + 1))
    partial = PERFECT.slice(0, N // 2)  # predictions of the first half only
    explicit = compare_predictions(partial, PERFECT, GT, IMAGES_T, CATS, image_ids=ids,
                                   n_boot=20)
    assert explicit["num_images"] == N
    assert explicit["challenger"]["map"] < 0.75 and explicit["delta_map"] < 0
    default = compare_predictions(partial, PERFECT, GT, IMAGES_T, CATS, n_boot=20)
    assert default["num_images"] == N // 2  # default: images both tables cover
    assert default["delta_map"] == pytest.approx(0.0)


def test_first_model_without_champion() -> None:
    result = compare_predictions(NOISY, None, GT, IMAGES_T, CATS, n_boot=30)
    assert result["champion"] is None and result["delta_map"] is None
    assert result["delta_low"] is None and set(result["per_category_delta"].values()) == {None}
    assert result["challenger"]["map_low"] < result["challenger"]["map"]
    assert result["challenger"]["map"] < result["challenger"]["map_high"]
    decision = decide(result, GatePolicy())
    assert decision.promote and "no champion" in decision.reason
    assert not decide(result, GatePolicy(min_heldout_images=N + 1)).promote


def test_comparison_input_errors() -> None:
    with pytest.raises(ValueError, match="n_boot must be >= 1"):
        compare_predictions(NOISY, None, GT, IMAGES_T, CATS, n_boot=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        compare_predictions(NOISY, None, GT, IMAGES_T, CATS, confidence=1.0)
    with pytest.raises(ValueError, match=r"image_id\(s\) \[99\] are held out but no row"):
        compare_predictions(NOISY, None, GT, IMAGES_T, CATS, image_ids=[1, 99])
    with pytest.raises(ValueError, match="appear more than once"):
        compare_predictions(NOISY, pa.concat_tables([NOISY] * 2), GT, IMAGES_T, CATS)


def test_no_ground_truth_keeps_the_champion() -> None:
    result = compare_predictions(NOISY, NOISY_2, GT.slice(0, 0), IMAGES_T, CATS,
                                 image_ids=range(1, N + 1), n_boot=10)
    assert result["challenger"]["map"] is None and result["delta_low"] is None
    decision = decide(result, GatePolicy())
    assert not decision.promote and "no ground truth" in decision.reason
    nothing = compare_predictions(NOISY, None, GT, IMAGES_T, CATS, image_ids=[], n_boot=10)
    assert nothing["num_images"] == 0 and nothing["challenger"]["map"] is None


# -- the gate -----------------------------------------------------------------------------------
def _comparison(challenger: float | None, champion: float | None, low: float | None = -0.01,
                high: float | None = 0.05, num_images: int = 100) -> dict:
    def entry(value):
        return {"map": value, "per_category": {1: value}}

    return {
        "challenger": entry(challenger), "champion": None if champion is None else entry(champion),
        "delta_map": None if champion is None or challenger is None else challenger - champion,
        "delta_low": low, "delta_high": high, "num_images": num_images, "confidence": 0.95,
    }


def test_gate_margin_and_significance() -> None:
    promoted = decide(_comparison(0.212, 0.198, -0.003, 0.031), GatePolicy())
    assert promoted == GateDecision(True, promoted.reason)
    assert promoted.reason == ("challenger mAP 0.212 vs champion 0.198 (+0.014, 95% CI "
                               "-0.003..+0.031) >= margin 0.005: promoted")
    below = decide(_comparison(0.202, 0.198), GatePolicy())
    assert not below.promote and "< margin 0.005" in below.reason and "+0.004" in below.reason
    unsure = decide(_comparison(0.212, 0.198, -0.003, 0.031), GatePolicy(require_significant=True))
    assert not unsure.promote and "-0.003" in unsure.reason
    sure = decide(_comparison(0.212, 0.198, 0.001, 0.031), GatePolicy(require_significant=True))
    assert sure.promote


def test_gate_min_heldout_images() -> None:
    small = _comparison(0.5, 0.1, 0.3, 0.5, num_images=19)
    decision = decide(small, GatePolicy(min_heldout_images=20))
    assert not decision.promote
    assert "19 labeled held-out images" in decision.reason
    assert "min_heldout_images" in decision.reason and "label more" in decision.reason
    assert decide(small, GatePolicy(min_heldout_images=19)).promote
    first = decide(_comparison(0.5, None, num_images=5), GatePolicy())
    assert not first.promote and "5 labeled held-out images" in first.reason


def test_gate_policy_validation() -> None:
    with pytest.raises(ValueError, match="min_improvement must be >= 0"):
        GatePolicy(min_improvement=-0.01)
    with pytest.raises(ValueError, match="min_heldout_images must be >= 1"):
        GatePolicy(min_heldout_images=0)
    GatePolicy(min_improvement=0.0, min_heldout_images=1)  # the boundaries are allowed


def test_per_class_deltas_sorts_worst_first_and_keeps_unknowns_last() -> None:
    comparison = {
        "challenger": {"per_category": {1: 0.5, 3: 0.2, 7: None}},
        "champion": {"per_category": {1: 0.4, 3: 0.6, 7: None}},
    }
    rows = per_class_deltas(comparison, {1: "person", 3: "car", 7: "dog"})
    assert [r["name"] for r in rows] == ["car", "person", "dog"]
    assert rows[0] == {"category_id": 3, "name": "car", "champion_ap": 0.6,
                       "challenger_ap": 0.2, "delta": pytest.approx(-0.4)}
    assert rows[2]["delta"] is None
    first = per_class_deltas({"challenger": comparison["challenger"], "champion": None},
                             {1: "person"})
    assert first[0]["champion_ap"] is None and first[0]["delta"] is None
    assert first[1]["name"] == "3"  # an id without a name still shows
