"""COCO mAP of a detector (or of its class-score extractor) with pycocotools' COCOeval.

Why COCOeval and not a re-implementation: its numbers are the ones users compare with papers and
torchvision's model cards. Predictions are mapped back to the dataset's category ids and to COCO
``[x, y, w, h]`` boxes first; a plain model's labels use the dataset's categories in id order,
the order ``train_detector`` trains with. ``coco_map_from_detections`` scores detections that
were already computed (for example read back from the predictions table).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

from al_assets.core.detection.categories import CategoryError, CategoryMap
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.detection.factory import DetectorError, model_num_classes
from al_assets.core.detection.training import CocoDetectionDataset, DatasetError, read_coco
from al_assets.core.errors import ImageDecodeError

_STAT_NAMES = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
Detections = Mapping[int, Mapping[str, Tensor]]


def evaluate_coco_map(
    model_or_extractor: nn.Module,
    coco_json: Path,
    image_dir: Path,
    *,
    batch_size: int = 8,
) -> dict:
    """Run the detector on every readable image of ``coco_json`` and score it with COCOeval.

    The module's train/eval mode is restored afterwards. Returns ``coco_map_from_detections``'s
    dict plus ``skipped_images`` {path: reason}: unreadable images are left out of the
    evaluation, their ground truth too.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    dataset = CocoDetectionDataset(coco_json, image_dir)
    to_category_ids = _label_mapping(model_or_extractor, dataset.categories)
    was_training = model_or_extractor.training
    model_or_extractor.eval()
    try:
        detections, skipped = _predict(model_or_extractor, dataset, batch_size, to_category_ids)
    finally:
        model_or_extractor.train(was_training)
    summary = _evaluate(dataset.coco, dataset.categories, detections)
    return {**summary, "skipped_images": skipped}


def coco_map_from_detections(coco_json: Path, detections: Detections) -> dict:
    """COCOeval of ready detections: {image_id: {"boxes" xyxy, "scores", "labels" category ids}}.

    Only the images in ``detections`` are evaluated (give empty tensors for an image without
    detections). Returns ``map`` (AP@[.5:.95]), ``ap50``, ``ap75``, ``ap_small|medium|large``
    (None where the dataset has no such boxes), ``per_category`` {category_id: AP, None when the
    category has no ground truth}, ``num_images`` and ``num_detections``.
    """
    coco = read_coco(Path(coco_json))
    try:
        categories = CategoryMap.from_coco_categories(coco.dataset.get("categories", []))
    except CategoryError as exc:
        raise DatasetError(f"{coco_json}: bad or missing categories: {exc}") from exc
    unknown = sorted(set(detections) - set(coco.imgs))
    if unknown:
        raise DatasetError(f"image ids {unknown[:5]} are not in {coco_json}")
    return _evaluate(coco, categories, detections)


def _label_mapping(module: nn.Module, categories: CategoryMap) -> Callable[[Tensor], Tensor]:
    """How to turn the module's output labels into dataset category ids, after checking fit."""
    if isinstance(module, ClassScoreExtractor):
        if set(module.category_ids) != set(categories.category_ids):
            raise DetectorError(
                f"the extractor predicts categories {list(module.category_ids)} but the dataset "
                f"has {list(categories.category_ids)}; evaluate on the categories it was built for"
            )
        return lambda labels: labels
    num_classes = model_num_classes(module)
    if num_classes != categories.num_classes:
        raise DetectorError(
            f"the model has {num_classes} classes (background included) but the dataset has "
            f"{len(categories.category_ids)} categories; it was trained on other data"
        )
    return categories.category_ids_of


def _predict(
    module: nn.Module,
    dataset: CocoDetectionDataset,
    batch_size: int,
    to_category_ids: Callable[[Tensor], Tensor],
) -> tuple[dict[int, dict[str, Tensor]], dict[str, str]]:
    detections: dict[int, dict[str, Tensor]] = {}
    skipped: dict[str, str] = {}
    device = next(module.parameters()).device
    for start in range(0, len(dataset), batch_size):
        images, image_ids = [], []
        for index in range(start, min(start + batch_size, len(dataset))):
            try:
                images.append(dataset.load_image(index))
            except ImageDecodeError as exc:
                skipped[str(dataset.records[index].path)] = str(exc)
                continue
            image_ids.append(dataset.records[index].image_id)
        if not images:
            continue
        with torch.inference_mode():
            outputs = module([image.to(device) for image in images])
        for image_id, output in zip(image_ids, outputs, strict=True):
            detections[image_id] = {**output, "labels": to_category_ids(output["labels"])}
    return detections, skipped


def _evaluate(coco: COCO, categories: CategoryMap, detections: Detections) -> dict:
    results = [row for image_id, det in detections.items() for row in _coco_rows(image_id, det)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        evaluator = COCOeval(coco, _load_results(coco, results), iouType="bbox")
        evaluator.params.imgIds = sorted(detections)
        evaluator.params.catIds = list(categories.category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    first_stats = evaluator.stats[: len(_STAT_NAMES)]  # AP rows of COCOeval.summarize()
    stats = {name: _ap_or_none(v) for name, v in zip(_STAT_NAMES, first_stats, strict=True)}
    # precision: [iou thresholds, recall points, categories, area ranges, max dets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_category = {
        int(cat_id): _mean_precision(precision[:, :, k])
        for k, cat_id in enumerate(evaluator.params.catIds)
    }
    return {
        **stats,
        "per_category": per_category,
        "num_images": len(detections),
        "num_detections": len(results),
    }


def _coco_rows(image_id: int, det: Mapping[str, Tensor]) -> list[dict]:
    """COCO result records: boxes xyxy -> [x, y, w, h], labels already dataset ids."""
    boxes = torch.as_tensor(det["boxes"]).detach().cpu().double().reshape(-1, 4)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    category_ids = torch.as_tensor(det["labels"]).detach().cpu().reshape(-1).tolist()
    scores = torch.as_tensor(det["scores"]).detach().cpu().reshape(-1).tolist()
    return [
        {"image_id": int(image_id), "category_id": int(c), "bbox": b, "score": float(s)}
        for b, c, s in zip(xywh, category_ids, scores, strict=True)
    ]


def _load_results(coco: COCO, results: list[dict]) -> COCO:
    """``coco.loadRes``, which cannot take an empty list; no detection is a valid result."""
    if results:
        return coco.loadRes(results)
    empty = COCO()
    empty.dataset = {**coco.dataset, "annotations": []}
    empty.createIndex()
    return empty


def _ap_or_none(value: float) -> float | None:
    return None if value < 0 else float(value)


def _mean_precision(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None
