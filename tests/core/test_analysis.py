"""Confusion analysis: confused pairs, class frequency, matching, confusion matrix, COCO mAP."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from al_assets.core.analysis.confused_pairs import confused_pairs
from al_assets.core.analysis.evaluation import (
    evaluate_predictions,
    evaluation_table,
    version_comparison,
)
from al_assets.core.analysis.frequency import class_frequency, imbalance_summary
from al_assets.core.analysis.matching import confusion_matrix, confusion_table, match_detections
from al_assets.core.schemas import (
    ANNOTATIONS,
    CATEGORIES,
    CLASS_FREQUENCY,
    CONFUSED_PAIRS,
    CONFUSION_MATRIX,
    DETECTION_MATCHES,
    IMAGES,
    MODEL_EVALUATION,
    DETECTIONS,
)
from al_assets.core.scoring.box_scores import box_scores

PERSON, CHAIR, REMOTE, PHONE = 1, 62, 75, 77


# -- table builders ------------------------------------------------------------------------------
def _categories(names: dict[int, str]) -> pa.Table:
    rows = [{"category_id": i, "name": n, "supercategory": None, "batch": "b0"}
            for i, n in names.items()]
    return pa.Table.from_pylist(rows, schema=CATEGORIES)


COCO_FOUR = _categories({PERSON: "person", CHAIR: "chair", REMOTE: "remote", PHONE: "cell phone"})


def _box(xyxy) -> dict:
    return dict(zip(("xmin", "ymin", "xmax", "ymax"), map(float, xyxy)))


def _det(xyxy, score: float, label: int, second: int | None = None) -> dict:
    labels, scores = ([label], [1.0]) if second is None else ([label, second], [0.625, 0.375])
    return {"box": _box(xyxy), "score": score, "label_id": label, "label_ids": labels,
            "scores": scores, "distribution": None}


def _predictions(per_image: dict[int, list[dict]]) -> pa.Table:
    rows = [
        {"image_id": i, "uri": f"file:///pool/{i}.jpg", "width": 200, "height": 200,
         "model_name": "detector", "model_version": 1, "shard": "s0", "detections": dets}
        for i, dets in per_image.items()
    ]
    return pa.Table.from_pylist(rows, schema=DETECTIONS)


def _annotations(rows: list[tuple]) -> pa.Table:
    """rows: (ann_id, image_id, category_id, xyxy, iscrowd)."""
    records = []
    for ann_id, image_id, category_id, (x0, y0, x1, y1), crowd in rows:
        records.append({
            "ann_id": ann_id, "image_id": image_id, "category_id": category_id,
            "label": str(category_id), "supercategory": None, "bbox": _box((x0, y0, x1, y1)),
            "bbox_xywh": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
            "iscrowd": crowd, "segmentation": None, "batch": "b0",
        })
    return pa.Table.from_pylist(records, schema=ANNOTATIONS)


def _images(*image_ids: int, size: int = 200) -> pa.Table:
    rows = [{"image_id": i, "file_name": f"{i}.jpg", "uri": f"file:///pool/{i}.jpg",
             "width": size, "height": size, "date_captured": None, "batch": "b0",
             "shard": "s0"} for i in image_ids]
    return pa.Table.from_pylist(rows, schema=IMAGES)


def _pair_scores(rows: list[tuple]) -> pa.Table:
    """A BOX_SCORES subset; rows: (image_id, det_index, first, second, margin)."""
    image_id, det_index, first, second, margin = zip(*rows)
    return pa.table({
        "image_id": pa.array(image_id, pa.int64()),
        "det_index": pa.array(det_index, pa.int32()),
        "first_label_id": pa.array(first, pa.int32()),
        "second_label_id": pa.array(second, pa.int32()),
        "margin": pa.array(margin, pa.float32()),
    })


# -- confused pairs -----------------------------------------------------------------------------
PAIRS = _pair_scores([
    (1, 0, PERSON, CHAIR, 0.25),
    (1, 1, PERSON, CHAIR, 0.125),
    (2, 0, PERSON, CHAIR, 0.5),
    (3, 0, CHAIR, PERSON, 0.0625),
    (3, 1, CHAIR, PERSON, 0.125),
    (4, 0, REMOTE, PHONE, 0.25),
    (5, 0, REMOTE, PHONE, 0.25),
    (5, 1, PHONE, None, 0.0),  # one label only (k == 1): never a pair
])


def _rows(table: pa.Table, *columns: str) -> list[tuple]:
    return list(zip(*(table[c].to_pylist() for c in columns)))


def test_confused_pairs_groups_ordered_pairs_like_the_notebook() -> None:
    table = confused_pairs(PAIRS, COCO_FOUR)
    assert table.schema.equals(CONFUSED_PAIRS)
    # count desc; the two pairs of 2 by avg_margin asc
    assert _rows(table, "first_name", "second_name", "count", "n_images") == [
        ("person", "chair", 3, 2), ("chair", "person", 2, 1), ("remote", "cell phone", 2, 2),
    ]
    assert table["avg_margin"].to_pylist() == pytest.approx([0.875 / 3, 0.09375, 0.25])
    assert table["min_margin"].to_pylist() == [0.125, 0.0625, 0.25]
    assert table["median_margin"].to_pylist() == [0.25, 0.09375, 0.25]
    assert table["first_label_id"].to_pylist() == [PERSON, CHAIR, REMOTE]
    assert set(table["unordered"].to_pylist()) == {False}


def test_unordered_pairs_merge_both_directions() -> None:
    table = confused_pairs(PAIRS, COCO_FOUR, unordered=True)
    assert _rows(table, "first_label_id", "second_label_id", "count", "n_images") == [
        (PERSON, CHAIR, 5, 3), (REMOTE, PHONE, 2, 2),
    ]
    assert table["avg_margin"][0].as_py() == pytest.approx(1.0625 / 5)
    assert table["median_margin"][0].as_py() == 0.125  # of .0625 .125 .125 .25 .5
    assert set(table["unordered"].to_pylist()) == {True}


def test_lowest_n_max_margin_and_limit() -> None:
    # the 3 lowest two-label margins: .0625 (3), then the .125 tie broken by image_id: 1, 3
    lowest = confused_pairs(PAIRS, COCO_FOUR, lowest_n=3)
    assert _rows(lowest, "first_label_id", "second_label_id", "count") == [
        (CHAIR, PERSON, 2), (PERSON, CHAIR, 1),
    ]
    below = confused_pairs(PAIRS, COCO_FOUR, max_margin=0.125)
    assert _rows(below, "first_label_id", "count", "avg_margin") == [
        (CHAIR, 2, 0.09375), (PERSON, 1, 0.125),
    ]
    assert confused_pairs(PAIRS, COCO_FOUR, limit=1)["count"].to_pylist() == [3]
    assert confused_pairs(PAIRS, COCO_FOUR, max_margin=0.01).num_rows == 0


def test_confused_pairs_from_real_box_scores() -> None:
    predictions = _predictions({
        1: [_det((0, 0, 5, 5), 0.5, PERSON, CHAIR), _det((0, 0, 5, 5), 0.5, PERSON, CHAIR)],
        2: [_det((0, 0, 5, 5), 0.5, REMOTE, PHONE), _det((0, 0, 5, 5), 0.9, PHONE)],
        3: [],
    })
    table = confused_pairs(box_scores(predictions, num_classes=4), COCO_FOUR)
    assert _rows(table, "first_name", "second_name", "count", "n_images", "avg_margin") == [
        ("person", "chair", 2, 1, 0.25), ("remote", "cell phone", 1, 1, 0.25),
    ]


def test_confused_pairs_rejects_unknown_categories_and_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[62\] not in the categories table"):
        confused_pairs(PAIRS, _categories({PERSON: "person", REMOTE: "remote", PHONE: "phone"}))
    with pytest.raises(ValueError, match="no column.*margin.*BOX_SCORES"):
        confused_pairs(PAIRS.drop_columns(["margin"]), COCO_FOUR)
    with pytest.raises(ValueError, match="lowest_n"):
        confused_pairs(PAIRS, COCO_FOUR, lowest_n=-1)
    twice = pa.concat_tables([COCO_FOUR, _categories({PERSON: "human"})])
    with pytest.raises(ValueError, match=r"category_id\(s\) \[1\] several names"):
        confused_pairs(PAIRS, twice)


# -- class frequency ----------------------------------------------------------------------------
FREQ_PREDICTIONS = _predictions({
    1: [_det((0, 0, 5, 5), 0.9, PERSON, CHAIR) for _ in range(4)]
       + [_det((0, 0, 5, 5), 0.1, PERSON)],  # below the threshold below
    2: [_det((0, 0, 5, 5), 0.9, PERSON), _det((0, 0, 5, 5), 0.3, PERSON)]
       + [_det((0, 0, 5, 5), 0.8, CHAIR, PERSON) for _ in range(3)]
       + [_det((0, 0, 5, 5), 0.5, PHONE, REMOTE)],
    3: [],
})
FREQ_ANNOTATIONS = _annotations(
    [(i, 1, PERSON, (0, 0, 5, 5), False) for i in range(4)]
    + [(10, 1, PERSON, (0, 0, 50, 50), True),  # crowd: not counted
       (11, 2, CHAIR, (0, 0, 5, 5), False), (12, 2, CHAIR, (0, 0, 5, 5), False),
       (13, 2, REMOTE, (0, 0, 5, 5), False)]
)


def test_class_frequency_counts_shares_and_imbalance() -> None:
    table = class_frequency(FREQ_PREDICTIONS, FREQ_ANNOTATIONS, COCO_FOUR, score_thresh=0.3)
    assert table.schema.equals(CLASS_FREQUENCY)
    assert table["name"].to_pylist() == ["person", "chair", "cell phone", "remote"]
    assert table["predicted_count"].to_pylist() == [6, 3, 1, 0]
    assert table["predicted_share"].to_pylist() == pytest.approx([0.6, 0.3, 0.1, 0.0])
    assert table["predicted_imbalance"].to_pylist() == [1.0, 2.0, 6.0, None]
    assert table["gt_count"].to_pylist() == [4, 2, 0, 1]
    assert table["gt_share"].to_pylist() == pytest.approx([4 / 7, 2 / 7, 0.0, 1 / 7])
    assert table["gt_imbalance"].to_pylist() == [1.0, 2.0, None, 4.0]


def test_class_frequency_same_from_box_scores_and_without_ground_truth() -> None:
    from_predictions = class_frequency(FREQ_PREDICTIONS, None, COCO_FOUR, score_thresh=0.3)
    scored = box_scores(FREQ_PREDICTIONS, num_classes=4)
    assert class_frequency(scored, None, COCO_FOUR, score_thresh=0.3).equals(from_predictions)
    assert from_predictions["gt_count"].null_count == 4
    assert class_frequency(FREQ_PREDICTIONS, None, COCO_FOUR)["predicted_count"].to_pylist() == [
        7, 3, 1, 0,  # no threshold: the 0.1 person counts too
    ]


def test_imbalance_summary() -> None:
    table = class_frequency(FREQ_PREDICTIONS, FREQ_ANNOTATIONS, COCO_FOUR, score_thresh=0.3)
    assert imbalance_summary(table) == {
        "source": "predicted", "total": 10, "absent": ["remote"],
        "most_frequent": "person", "most_count": 6,
        "least_frequent": "cell phone", "least_count": 1, "ratio": 6.0,
    }
    gt = imbalance_summary(table, source="ground_truth")
    assert (gt["most_frequent"], gt["least_frequent"], gt["ratio"], gt["absent"]) == (
        "person", "remote", 4.0, ["cell phone"],
    )
    among = imbalance_summary(table, among=["chair", "cell phone", "remote"])
    assert (among["most_frequent"], among["ratio"], among["total"]) == ("chair", 3.0, 4)
    with pytest.raises(ValueError, match="class name"):
        imbalance_summary(table, among=["sofa"])
    no_gt = class_frequency(FREQ_PREDICTIONS, None, COCO_FOUR)
    with pytest.raises(ValueError, match="no gt_count"):
        imbalance_summary(no_gt, source="ground_truth")


def test_class_frequency_of_nothing() -> None:
    table = class_frequency(_predictions({1: []}), _annotations([]), COCO_FOUR)
    assert table["predicted_count"].to_pylist() == [0, 0, 0, 0]
    assert table["predicted_share"].null_count == 4
    assert table["gt_imbalance"].null_count == 4
    summary = imbalance_summary(table)
    assert (summary["most_frequent"], summary["ratio"], len(summary["absent"])) == (None, None, 4)
    with pytest.raises(ValueError, match=r"predicted label_id\(s\) \[5\] not in the categories"):
        class_frequency(_predictions({1: [_det((0, 0, 1, 1), 0.9, 5)]}), None, COCO_FOUR)


# -- matching and confusion matrix --------------------------------------------------------------
DOG = 3
THREE = _categories({PERSON: "person", 2: "chair", DOG: "dog"})
MATCH_PREDICTIONS = _predictions({
    1: [_det((0, 0, 10, 10), 0.9, PERSON), _det((0, 0, 10, 8), 0.8, 2)],  # two on one gt
    2: [_det((0, 0, 10, 10), 0.6, 2), _det((0, 0, 10, 6), 0.9, PERSON)],  # score beats IoU
    3: [_det((5, 0, 15, 10), 0.9, DOG)],  # IoU 1/3 < 0.5
    4: [],  # no predictions
    5: [_det((0, 0, 10, 10), 0.7, DOG)],  # no ground truth
    6: [_det((0, 0, 10, 10), 0.9, PERSON), _det((50, 50, 60, 60), 0.8, PERSON),
        _det((150, 150, 160, 160), 0.7, 2)],  # crowd
    7: [_det((0, 0, 10, 10), 0.9, 2)],  # class confusion
})
MATCH_ANNOTATIONS = _annotations([
    (10, 1, PERSON, (0, 0, 10, 10), False),
    (20, 2, PERSON, (0, 0, 10, 10), False),
    (30, 3, DOG, (0, 0, 10, 10), False),
    (40, 4, 2, (0, 0, 10, 10), False),
    (60, 6, PERSON, (0, 0, 100, 100), True),
    (61, 6, PERSON, (0, 0, 10, 10), False),
    (70, 7, PERSON, (0, 0, 10, 10), False),
    (99, 99, PERSON, (0, 0, 10, 10), False),  # an image that was not predicted
])
EXPECTED_MATCHES = [  # image_id, det_index, ann_id, gt, predicted, outcome
    (1, 0, 10, PERSON, PERSON, "correct"),
    (1, 1, None, None, 2, "false_positive"),
    (2, 1, 20, PERSON, PERSON, "correct"),
    (2, 0, None, None, 2, "false_positive"),
    (3, 0, None, None, DOG, "false_positive"),
    (3, None, 30, DOG, None, "missed"),
    (4, None, 40, 2, None, "missed"),
    (5, 0, None, None, DOG, "false_positive"),
    (6, 0, 61, PERSON, PERSON, "correct"),  # the non-crowd box wins over the crowd region
    (6, 2, None, None, 2, "false_positive"),  # det 1 lies in the crowd region: ignored
    (7, 0, 70, PERSON, 2, "confused"),
]
MATCH_COLUMNS = ("image_id", "det_index", "ann_id", "gt_category_id", "pred_category_id",
                 "outcome")


def test_match_detections_edge_cases() -> None:
    matched = match_detections(MATCH_PREDICTIONS, MATCH_ANNOTATIONS)
    assert matched.schema.equals(DETECTION_MATCHES)
    assert _rows(matched, *MATCH_COLUMNS) == EXPECTED_MATCHES
    assert matched["iou"].to_pylist() == pytest.approx(
        [1.0, None, 0.6, None, None, None, None, None, 1.0, None, 1.0]
    )
    assert matched["score"].to_pylist()[:3] == pytest.approx([0.9, 0.8, 0.9])


def test_a_detection_takes_its_best_free_annotation() -> None:
    predictions = _predictions({1: [_det((0, 0, 10, 10), 0.9, PERSON),
                                    _det((0, 0, 10, 10), 0.8, PERSON)]})
    annotations = _annotations([(1, 1, PERSON, (0, 0, 10, 6), False),
                                (2, 1, PERSON, (0, 0, 10, 10), False)])
    matched = match_detections(predictions, annotations)
    assert _rows(matched, "det_index", "ann_id", "iou") == [(0, 2, 1.0), (1, 1, 0.6)]


def test_match_thresholds() -> None:
    strict = match_detections(MATCH_PREDICTIONS, MATCH_ANNOTATIONS, iou_threshold=0.7)
    image2 = strict.filter(pc.equal(strict["image_id"], 2))
    # det 1 (IoU 0.6) can no longer match: det 0 takes the person, as a chair
    assert _rows(image2, *MATCH_COLUMNS) == [
        (2, 1, None, None, PERSON, "false_positive"), (2, 0, 20, PERSON, 2, "confused"),
    ]
    confident = match_detections(MATCH_PREDICTIONS, MATCH_ANNOTATIONS, score_thresh=0.75)
    kept = [row for row in EXPECTED_MATCHES if row[:2] not in {(2, 0), (5, 0), (6, 2)}]
    assert _rows(confident, *MATCH_COLUMNS) == kept


def test_match_without_predictions_or_ground_truth() -> None:
    none_at_all = match_detections(MATCH_PREDICTIONS.slice(0, 0), MATCH_ANNOTATIONS)
    assert none_at_all.num_rows == 0 and none_at_all.schema.equals(DETECTION_MATCHES)
    no_gt = match_detections(MATCH_PREDICTIONS, MATCH_ANNOTATIONS.slice(0, 0))
    assert set(no_gt["outcome"].to_pylist()) == {"false_positive"}
    assert no_gt.num_rows == 10
    with pytest.raises(ValueError, match=r"\[1, 2, 3, 4, 5, 6, 7\] appear more than once"):
        match_detections(pa.concat_tables([MATCH_PREDICTIONS] * 2), MATCH_ANNOTATIONS)
    bad = _predictions({1: [_det((5, 0, 1, 10), 0.9, PERSON)]})
    with pytest.raises(ValueError, match="detection box of image_id 1"):
        match_detections(bad, MATCH_ANNOTATIONS)


def test_confusion_matrix_and_table() -> None:
    matched = match_detections(MATCH_PREDICTIONS, MATCH_ANNOTATIONS)
    matrix, labels = confusion_matrix(matched, THREE)
    assert labels == ["person", "chair", "dog", "background"]
    np.testing.assert_array_equal(matrix, [
        [3, 1, 0, 0],  # person: 3 correct, 1 taken for a chair
        [0, 0, 0, 1],  # chair: missed
        [0, 0, 0, 1],  # dog: missed
        [0, 3, 2, 0],  # background: false positives
    ])
    assert matrix.sum() == matched.num_rows
    assert matrix[:, -1].sum() == matched["outcome"].to_pylist().count("missed")
    table = confusion_table(matched, THREE)
    assert table.schema.equals(CONFUSION_MATRIX)
    assert _rows(table, "gt_name", "pred_name", "count") == [
        ("person", "person", 3), ("person", "chair", 1), ("chair", "background", 1),
        ("dog", "background", 1), ("background", "chair", 3), ("background", "dog", 2),
    ]
    assert table["gt_category_id"].to_pylist()[-1] is None


# A COCO-style reference: a plain per-detection loop, to check the rank-vectorized greedy.
def _reference(per_image: dict, gts: list[tuple], threshold: float) -> set[tuple]:
    out = set()
    for image_id, dets in per_image.items():
        mine = [g for g in gts if g[1] == image_id]
        taken: set[int] = set()
        for index in sorted(range(len(dets)), key=lambda i: -dets[i]["score"]):
            box = [dets[index]["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
            best, best_iou, crowd_hit = None, threshold, False
            for ann_id, _, _, gbox, crowd in mine:
                iou = _iou(box, gbox, crowd)
                if crowd and iou >= threshold:
                    crowd_hit = True
                elif not crowd and ann_id not in taken and iou >= best_iou and (
                        best is None or iou > best_iou):
                    best, best_iou = ann_id, iou
            if best is not None:
                taken.add(best)
                out.add((image_id, index, best))
            elif not crowd_hit:
                out.add((image_id, index, None))
        out |= {(image_id, None, g[0]) for g in mine if not g[4] and g[0] not in taken}
    return out


def _iou(a, b, crowd: bool) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter = width * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    union = area_a if crowd else area_a + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# small coordinates so that boxes overlap often: several candidates per detection
_boxes = st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)
                   ).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


@settings(max_examples=150, deadline=None)
@given(
    dets=st.lists(st.lists(st.tuples(_boxes, st.sampled_from([0.25, 0.5, 0.75])), max_size=8),
                  min_size=1, max_size=3),
    gts=st.lists(st.tuples(st.integers(0, 2), _boxes, st.booleans()), min_size=1, max_size=12),
    threshold=st.sampled_from([0.1, 0.3, 0.5, 0.9]),
    chunk=st.integers(1, 40),
)
def test_greedy_matches_a_per_detection_reference(dets, gts, threshold, chunk) -> None:
    per_image = {i: [_det(b, s, PERSON) for b, s in image] for i, image in enumerate(dets)}
    gt_rows = [(100 + n, image, PERSON, box, crowd) for n, (image, box, crowd) in enumerate(gts)]
    matched = match_detections(_predictions(per_image), _annotations(gt_rows),
                               iou_threshold=threshold, max_pairs_per_chunk=chunk)
    got = set(_rows(matched, "image_id", "det_index", "ann_id"))
    assert got == _reference(per_image, gt_rows, threshold)


# -- COCO evaluation ----------------------------------------------------------------------------
EVAL_GT = _annotations([
    (1, 1, PERSON, (10, 10, 110, 110), False),
    (2, 1, CHAIR, (120, 120, 190, 190), False),
    (3, 2, PERSON, (0, 0, 100, 100), False),
    (4, 4, PERSON, (0, 0, 100, 100), False),  # annotated, never predicted: left out
])


def _eval_predictions(shift: float) -> pa.Table:
    def moved(x0, y0, x1, y1):
        return (x0 + shift, y0, x1 + shift, y1)

    return _predictions({
        1: [_det(moved(10, 10, 110, 110), 0.9, PERSON),
            _det(moved(120, 120, 190, 190), 0.8, CHAIR)],
        2: [_det(moved(0, 0, 100, 100), 0.7, PERSON)],
        3: [_det((0, 0, 50, 50), 0.99, PERSON)],  # predicted, not annotated: left out
    })


def test_perfect_predictions_have_map_one() -> None:
    result = evaluate_predictions(_eval_predictions(0), EVAL_GT, _images(1, 2, 3, 4), COCO_FOUR)
    assert result["reason"] is None
    assert (result["map"], result["ap50"], result["ap75"]) == (1.0, 1.0, 1.0)
    assert result["ap_small"] is None  # no small box in the ground truth
    assert result["per_category"] == {
        PERSON: pytest.approx(1.0), CHAIR: pytest.approx(1.0), REMOTE: None, PHONE: None,
    }
    assert result["per_category_num_gt"] == {PERSON: 2, CHAIR: 1, REMOTE: 0, PHONE: 0}
    assert (result["num_images"], result["num_detections"], result["num_annotations"]) == (2, 3, 3)
    table = evaluation_table(result, COCO_FOUR, "detector-v1")
    assert table.schema.equals(MODEL_EVALUATION)
    assert _rows(table, "name", "num_gt") == [
        ("all", 3), ("person", 2), ("chair", 1), ("remote", 0), ("cell phone", 0),
    ]
    assert table["ap"].to_pylist() == pytest.approx([1.0, 1.0, 1.0, None, None])
    assert table["model_version"].to_pylist() == ["detector-v1"] * 5


def test_shifted_boxes_lower_map(capsys: pytest.CaptureFixture[str]) -> None:
    # every box moved by 20 px: IoU = 80/120 = 0.667 -> matches at .50 .55 .60 .65 only
    result = evaluate_predictions(_eval_predictions(20), EVAL_GT, _images(1, 2, 3, 4), COCO_FOUR)
    # the chair box is 70 px wide: IoU 50/90 = 0.556 -> .50 and .55 only
    assert result["per_category"][PERSON] == pytest.approx(0.4)
    assert result["per_category"][CHAIR] == pytest.approx(0.2)
    assert result["map"] == pytest.approx(0.3)
    assert (result["ap50"], result["ap75"]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed


def test_version_comparison_puts_versions_side_by_side_with_the_newest_change() -> None:
    images = _images(1, 2, 3, 4)
    stacked = pa.concat_tables([
        evaluation_table(evaluate_predictions(_eval_predictions(shift), EVAL_GT, images,
                                              COCO_FOUR), COCO_FOUR, version)
        for version, shift in (("det-v1", 0), ("det-v2", 20))
    ])

    table = version_comparison(stacked)

    assert table.column_names == ["category_id", "name", "metric", "det-v1", "det-v2", "delta"]
    assert _rows(table, "category_id", "name", "metric") == [
        (None, "all classes", "mAP"), (None, "all classes", "AP50"), (PERSON, "person", "AP"),
        (CHAIR, "chair", "AP"), (REMOTE, "remote", "AP"), (PHONE, "cell phone", "AP"),
    ]
    assert table["det-v2"].to_pylist() == pytest.approx([0.3, 1.0, 0.4, 0.2, None, None])
    # newest minus previous; null where a class has no ground truth
    assert table["delta"].to_pylist() == pytest.approx([-0.7, 0.0, -0.6, -0.8, None, None])
    older_last = version_comparison(stacked, ["det-v2", "det-v1"])
    assert older_last["delta"].to_pylist()[:2] == pytest.approx([0.7, 0.0])
    only_one = version_comparison(stacked.filter(pc.equal(stacked["model_version"], "det-v1")))
    assert only_one.column_names[-2:] == ["det-v1", "delta"]
    assert only_one["delta"].null_count == only_one.num_rows == 6
    assert version_comparison(MODEL_EVALUATION.empty_table()).num_rows == 0
    with pytest.raises(ValueError, match="clash"):
        version_comparison(stacked, ["det-v1", "name"])


def test_evaluation_without_ground_truth() -> None:
    result = evaluate_predictions(_eval_predictions(0), EVAL_GT.slice(0, 0), _images(1, 2),
                                  COCO_FOUR)
    assert result["map"] is None and result["ap50"] is None and result["num_images"] == 0
    assert "no image has both predictions" in result["reason"]
    assert set(result["per_category"].values()) == {None}
    assert evaluation_table(result, COCO_FOUR, "detector-v1")["ap"].null_count == 5


def test_evaluation_errors_name_the_record() -> None:
    with pytest.raises(ValueError, match=r"image_id\(s\) \[2\] .* no row in the images table"):
        evaluate_predictions(_eval_predictions(0), EVAL_GT, _images(1), COCO_FOUR)
    unknown = _predictions({1: [_det((0, 0, 5, 5), 0.9, 5)]})
    with pytest.raises(ValueError, match=r"predicted label_id\(s\) \[5\]"):
        evaluate_predictions(unknown, EVAL_GT, _images(1, 2), COCO_FOUR)


def test_no_predictions_on_annotated_images_scores_zero() -> None:
    result = evaluate_predictions(_predictions({1: [], 2: []}), EVAL_GT, _images(1, 2), COCO_FOUR)
    assert (result["map"], result["num_detections"], result["num_images"]) == (0.0, 0, 2)


# -- every version's mAP from the store (evaluate_versions) -----------------------------------------
def test_evaluate_versions_streams_shards_and_matches_one_evaluation(tmp_path) -> None:
    from al_assets.core.analysis.versions import evaluate_versions, off_diagonal
    from al_assets.core.storage import TableStore

    store = TableStore(tmp_path)
    truth = _annotations([(1, 1, PERSON, (10, 10, 60, 60), False),
                          (2, 2, CHAIR, (20, 20, 90, 90), False),
                          (3, 3, PERSON, (5, 5, 50, 50), False)])  # image 3: not held out
    good = {1: [_det((10, 10, 60, 60), 0.9, PERSON)], 2: [_det((20, 20, 90, 90), 0.8, PERSON)],
            3: [_det((5, 5, 50, 50), 0.9, PERSON)]}
    worse = {1: [_det((30, 30, 80, 80), 0.9, PERSON)], 2: [_det((60, 60, 140, 140), 0.8, CHAIR)]}
    for version, per_image in (("1", good), ("2", worse)):
        table = _predictions(per_image)
        for shard, ids in (("s0", [1]), ("s1", [2, 3])):  # two shards per version
            rows = table.filter(pc.is_in(table["image_id"], value_set=pa.array(ids)))
            store.write("detections", rows, f"{version}/{shard}")
    store.write("detections", _predictions({3: good[3]}), "3/s0")  # no held-out image
    heldout = pa.array([1, 2], pa.int64())
    found = evaluate_versions(store, ["1", "2", "3"], "1", heldout, truth, _images(1, 2, 3),
                              COCO_FOUR, iou_threshold=0.5, score_thresh=0.5)

    assert set(found.evaluation["model_version"].to_pylist()) == {"1", "2"}  # 3: no rows
    for version, per_image in (("1", good), ("2", worse)):
        alone = evaluate_predictions(_predictions({i: per_image[i] for i in (1, 2)}),
                                     truth.filter(pc.is_in(truth["image_id"], value_set=heldout)),
                                     _images(1, 2, 3), COCO_FOUR)
        assert found.summary[version] == {**{k: round(alone[k], 3) for k in ("map", "ap50",
                                                                            "ap75")},
                                          "num_images": 2}
    assert found.summary["1"]["map"] > found.summary["2"]["map"]
    # the champion's (version 1) confusion: one person right, the chair called a person
    cells = {(r["gt_category_id"], r["pred_category_id"]): r["count"]
             for r in found.matrix.to_pylist()}
    assert cells[(PERSON, PERSON)] == 1 and cells[(CHAIR, PERSON)] == 1
    top = off_diagonal(found.matrix).to_pylist()
    assert (top[0]["gt_category_id"], top[0]["pred_category_id"]) == (CHAIR, PERSON)
    assert all(r["gt_category_id"] != r["pred_category_id"] for r in top)
