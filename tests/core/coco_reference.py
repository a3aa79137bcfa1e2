"""pycocotools' COCOeval on the project's tables: the reference the evaluation is checked with.

Tests only: al_assets computes the same numbers with al_assets.core.analysis.cocoeval.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def reference_cocoeval(predictions: pa.Table, annotations: pa.Table, image_ids: Sequence[int],
                       category_ids: Sequence[int]) -> COCOeval:
    """An evaluated, accumulated and summarized COCOeval of DETECTIONS on ANNOTATIONS rows,
    restricted to ``image_ids`` (annotation ids renumbered 1..n: COCOeval treats 0 as none)."""
    ids = sorted(int(i) for i in image_ids)
    selected = pa.array(ids, pa.int64())
    gt_rows = annotations.filter(pc.is_in(annotations["image_id"], value_set=selected))
    predicted = predictions.filter(pc.is_in(predictions["image_id"], value_set=selected))
    return cocoeval_of_records(_ground_truth(gt_rows), _results(predicted), ids, category_ids)


def cocoeval_of_records(annotations: list[dict], results: list[dict], image_ids: Sequence[int],
                        category_ids: Sequence[int]) -> COCOeval:
    """COCOeval of COCO annotation and result dicts on ``image_ids`` (its prints swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": int(i), "width": 1000, "height": 1000} for i in image_ids],
                      "annotations": [{**a, "id": n} for n, a in enumerate(annotations, 1)],
                      "categories": [{"id": int(c), "name": str(c)} for c in category_ids]}
        gt.createIndex()
        evaluator = COCOeval(gt, _load_results(gt, [dict(r) for r in results]), iouType="bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.params.catIds = list(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _load_results(gt: COCO, results: list[dict]) -> COCO:
    if results:
        return gt.loadRes(results)
    empty = COCO()
    empty.dataset = {**gt.dataset, "annotations": []}
    empty.createIndex()
    return empty


def _ground_truth(annotations: pa.Table) -> list[dict]:
    columns = annotations.select(["image_id", "category_id", "bbox_xywh", "area", "iscrowd"])
    return [{"image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": int(crowd)}
            for i, c, b, a, crowd in zip(*(columns[n].to_pylist() for n in columns.column_names))]


def _results(predictions: pa.Table) -> list[dict]:
    rows = []
    for image_id, detections in zip(predictions["image_id"].to_pylist(),
                                    predictions["detections"].to_pylist()):
        for d in detections:
            b = d["box"]
            x0, y0 = float(np.float32(b["xmin"])), float(np.float32(b["ymin"]))
            rows.append({"image_id": image_id, "category_id": d["label_id"],
                         "bbox": [x0, y0, b["xmax"] - x0, b["ymax"] - y0],
                         "score": float(d["score"])})
    return rows


def per_category(evaluator: COCOeval, iou_index: int | None = None) -> dict[int, float | None]:
    """Mean precision per category (area all, 100 detections); None without ground truth."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    if iou_index is not None:
        precision = precision[[iou_index]]
    out = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        out[int(category_id)] = float(valid.mean()) if valid.size else None
    return out
