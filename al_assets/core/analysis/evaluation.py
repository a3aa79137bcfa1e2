"""COCO mAP of *stored* predictions against the ground-truth tables, with pycocotools.

Unlike :mod:`al_assets.core.detection.evaluation`, which runs a model over a COCO folder, this
scores a PREDICTIONS table that the pipeline already wrote, so a model version's accuracy on the
labeled part of the pool costs no inference. COCOeval is used rather than a re-implementation
because its numbers are the ones users compare with papers and model cards.

Only images with both a prediction row and at least one annotation are evaluated: the pool
mixes labeled and unlabeled images and ANNOTATIONS cannot tell an unlabeled image from an
empty one, so an image without annotations would turn every detection into a false positive.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from al_assets.core.analysis.confused_pairs import category_index, category_table, require_columns
from al_assets.core.analysis.matching import unique_image_ids
from al_assets.core.schemas import MODEL_EVALUATION

_STAT_NAMES = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
_IOU_INDEX = {"ap50": 0, "ap75": 5}  # positions of .50 and .75 in COCOeval's iouThrs


def evaluate_predictions(
    predictions: pa.Table, annotations: pa.Table, images: pa.Table, categories: pa.Table
) -> dict:
    """COCO bbox metrics of ``predictions`` (PREDICTIONS) on ``annotations`` (ANNOTATIONS).

    ``images`` (IMAGES) gives width/height, ``categories`` (CATEGORIES) the evaluated classes.
    Returns ``map`` (AP@[.5:.95]), ``ap50``, ``ap75``, ``ap_small|medium|large``,
    ``per_category``/``per_category_ap50``/``per_category_ap75`` {category_id: AP or None when
    the class has no ground truth}, ``per_category_num_gt``, ``num_images``,
    ``num_detections``, ``num_annotations`` and ``reason``: None when evaluated, else why not
    (no image with both predictions and ground truth), with every metric None.
    """
    require_columns(annotations, ("ann_id", "image_id", "category_id", "bbox_xywh", "area",
                                  "iscrowd"), "annotations", "ANNOTATIONS")
    lookup = category_table(categories)
    image_ids = _evaluated_images(predictions, annotations)
    if not image_ids.size:
        return _not_evaluated(predictions, annotations, lookup)
    selected = pa.array(image_ids, pa.int64())
    gt_annotations = annotations.filter(pc.is_in(annotations["image_id"], value_set=selected))
    category_index(lookup, gt_annotations["category_id"], "annotation category_id(s)")
    gt = _coco_ground_truth(gt_annotations, _image_sizes(images, image_ids), lookup)
    predicted = predictions.filter(pc.is_in(predictions["image_id"], value_set=selected))
    results = _coco_results(predicted, lookup)
    summary = _cocoeval(gt, results, image_ids, lookup["category_id"].to_pylist())
    return {
        **summary,
        "per_category_num_gt": _num_gt(gt_annotations, lookup),
        "num_images": int(image_ids.size),
        "num_detections": len(results),
        "num_annotations": gt_annotations.num_rows,
        "reason": None,
    }


def evaluation_table(result: dict, categories: pa.Table) -> pa.Table:
    """An :func:`evaluate_predictions` result as MODEL_EVALUATION: overall row, then classes."""
    lookup = category_table(categories)
    ids = lookup["category_id"].to_pylist()
    per = {key: result.get(key) or {} for key in
           ("per_category", "per_category_ap50", "per_category_ap75", "per_category_num_gt")}
    return pa.table(
        {
            "category_id": pa.array([None, *ids], pa.int32()),
            "name": ["all", *lookup["name"].to_pylist()],
            "ap": [result["map"], *(per["per_category"].get(i) for i in ids)],
            "ap50": [result["ap50"], *(per["per_category_ap50"].get(i) for i in ids)],
            "ap75": [result["ap75"], *(per["per_category_ap75"].get(i) for i in ids)],
            "num_gt": [sum(per["per_category_num_gt"].values()),
                       *(per["per_category_num_gt"].get(i, 0) for i in ids)],
        },
        schema=MODEL_EVALUATION,
    )


def _evaluated_images(predictions: pa.Table, annotations: pa.Table) -> np.ndarray:
    """Sorted ids of the images with a prediction row and at least one annotation."""
    predicted = unique_image_ids(predictions)
    labeled = pc.unique(annotations["image_id"]).to_numpy()
    return np.intersect1d(predicted, labeled)


def _not_evaluated(predictions: pa.Table, annotations: pa.Table, lookup: pa.Table) -> dict:
    n_labeled = len(pc.unique(annotations["image_id"]))
    none_per_category = {int(i): None for i in lookup["category_id"].to_pylist()}
    return {
        **{name: None for name in _STAT_NAMES},
        "per_category": none_per_category,
        "per_category_ap50": dict(none_per_category),
        "per_category_ap75": dict(none_per_category),
        "per_category_num_gt": {i: 0 for i in none_per_category},
        "num_images": 0, "num_detections": 0, "num_annotations": 0,
        "reason": (
            f"no image has both predictions ({predictions.num_rows} predicted images) and "
            f"ground truth ({n_labeled} annotated images): label some predicted images, or "
            "predict the labeled ones, to evaluate the model"
        ),
    }


def _image_sizes(images: pa.Table, image_ids: np.ndarray) -> list[dict]:
    """COCO image records of ``image_ids``; a missing IMAGES row is an error."""
    require_columns(images, ("image_id", "width", "height"), "images", "IMAGES")
    rows = images.select(["image_id", "width", "height"]).filter(
        pc.is_in(images["image_id"], value_set=pa.array(image_ids, pa.int64()))
    )
    found = {row["image_id"]: row for row in rows.to_pylist()}
    missing = [int(i) for i in image_ids if int(i) not in found]
    if missing:
        raise ValueError(
            f"image_id(s) {missing[:10]} have predictions and annotations but no row in the "
            "images table; re-ingest their batch so width/height are known"
        )
    return [{"id": int(i), "width": found[i]["width"], "height": found[i]["height"]}
            for i in image_ids.tolist()]


def _coco_ground_truth(annotations: pa.Table, images: list[dict], lookup: pa.Table) -> dict:
    """A COCO instances dict; annotation ids are renumbered 1..n (COCOeval treats 0 as none)."""
    columns = annotations.select(["image_id", "category_id", "bbox_xywh", "area", "iscrowd"])
    records = [
        {"id": n, "image_id": image_id, "category_id": category_id, "bbox": bbox,
         "area": area, "iscrowd": int(crowd)}
        for n, (image_id, category_id, bbox, area, crowd) in enumerate(
            zip(*(columns[name].to_pylist() for name in columns.column_names)), start=1
        )
    ]
    classes = [{"id": i, "name": name} for i, name in
               zip(lookup["category_id"].to_pylist(), lookup["name"].to_pylist())]
    return {"images": images, "annotations": records, "categories": classes}


def _coco_results(predictions: pa.Table, lookup: pa.Table) -> list[dict]:
    """COCO result records (bbox as [x, y, w, h]) of every stored detection."""
    lists = predictions["detections"].combine_chunks()
    parents = pc.list_parent_indices(lists).to_numpy()
    flat = pc.list_flatten(lists)
    category_index(lookup, pc.struct_field(flat, "label_id"), "predicted label_id(s)")
    box = pc.struct_field(flat, "box")
    xyxy = np.column_stack([
        pc.struct_field(box, f).to_numpy(zero_copy_only=False).astype(np.float64)
        for f in ("xmin", "ymin", "xmax", "ymax")
    ]).reshape(-1, 4)
    xywh = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
    image_ids = predictions["image_id"].to_numpy()[parents].tolist()
    labels = pc.struct_field(flat, "label_id").to_pylist()
    scores = pc.struct_field(flat, "score").to_numpy().astype(np.float64).tolist()
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(image_ids, labels, xywh.tolist(), scores)
    ]


def _cocoeval(gt: dict, results: list[dict], image_ids: np.ndarray, category_ids: list) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, _load_results(coco_gt, results), iouType="bbox")
        evaluator.params.imgIds = image_ids.tolist()
        evaluator.params.catIds = category_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: _ap_or_none(value) for name, value in zip(_STAT_NAMES, evaluator.stats)}
    # precision: [iou thresholds, recall points, categories, area ranges ("all" first), max dets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    return {
        **stats,
        "per_category": _per_category(precision, category_ids),
        **{f"per_category_{name}": _per_category(precision[[t]], category_ids)
           for name, t in _IOU_INDEX.items()},
    }


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """``loadRes``, which rejects an empty list; no detection at all is a valid result."""
    if results:
        return coco_gt.loadRes(results)
    empty = COCO()
    empty.dataset = {**coco_gt.dataset, "annotations": []}
    empty.createIndex()
    return empty


def _per_category(precision: np.ndarray, category_ids: list) -> dict[int, float | None]:
    """Mean precision per category; None (not COCO's -1) for a class without ground truth."""
    out = {}
    for k, category_id in enumerate(category_ids):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        out[int(category_id)] = float(valid.mean()) if valid.size else None
    return out


def _num_gt(annotations: pa.Table, lookup: pa.Table) -> dict[int, int]:
    """Non-crowd annotations per category (0 for the absent ones)."""
    counted = annotations.filter(pc.invert(annotations["iscrowd"])).group_by(
        "category_id").aggregate([("category_id", "count")])
    found = dict(zip(counted["category_id"].to_pylist(), counted["category_id_count"].to_pylist()))
    return {int(i): int(found.get(i, 0)) for i in lookup["category_id"].to_pylist()}


def _ap_or_none(value: float) -> float | None:
    return None if value < 0 else float(value)
