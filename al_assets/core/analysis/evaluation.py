"""COCO box mAP: the project's one evaluation module (stored predictions, ready detections, or
a model run over a COCO folder).

Every path ends in :class:`~al_assets.core.analysis.cocoeval.CocoAccumulator`, which computes
what pycocotools' COCOeval computes (same matching, accumulate and summarize arithmetic; see
that module and tests/core/test_cocoeval.py) one batch of images at a time. COCOeval's numbers
are the ones users compare with papers and model cards; COCOeval itself could not evaluate a
COCO-sized pool (it holds Python objects per detection: 40k images were killed at 8.9 GB).

* :func:`evaluate_predictions` scores a DETECTIONS table, or an iterable of them (one shard
  at a time: memory is the shard being matched plus ~64 bytes per detection), against the
  ground-truth tables, so a model version's accuracy on the labeled part of the pool costs no
  inference. Only images with both a prediction row and at least one annotation are
  evaluated: the pool mixes labeled and unlabeled images and ANNOTATIONS cannot tell an
  unlabeled image from an empty one, so an image without annotations would turn every
  detection into a false positive.
* :func:`compare_predictions` compares two model versions on an explicit held-out list
  instead: there an image without annotations *is* known to be empty and is evaluated as
  such. It matches once per model and bootstraps mAP over images by re-weighting the
  per-detection matches (paired: the same resamples for both models), so 200 resamples cost
  little more than one evaluation.
* :func:`evaluate_coco_map` runs a detector over a COCO folder; :func:`coco_map_from_detections`
  scores detections already computed ({image_id: tensors}). Predictions are mapped back to
  the dataset's category ids and to COCO ``[x, y, w, h]`` boxes first; a plain model's labels
  use the dataset's categories in id order, the order ``train_detector`` trains with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pycocotools.coco import COCO
from torch import Tensor, nn

from al_assets.core.analysis.cocoeval import (
    FALSE_POSITIVE,
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    STAT_NAMES,
    TRUE_POSITIVE,
    CocoAccumulator,
    CocoResult,
    Detections,
    GroundTruth,
)
from al_assets.core.analysis.confused_pairs import category_index, category_table
from al_assets.core.analysis.matching import unique_image_ids
from al_assets.core.detection.categories import CategoryError, CategoryMap
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.detection.factory import DetectorError, model_num_classes
from al_assets.core.detection.training import CocoDetectionDataset, DatasetError, read_coco
from al_assets.core.errors import ImageDecodeError
from al_assets.core.schemas import MODEL_EVALUATION, require_columns

ANNOTATION_COLUMNS = ("ann_id", "image_id", "category_id", "bbox_xywh", "area", "iscrowd")
DETECTION_FIELDS = ("box", "score", "label_id")  # what evaluation reads of each detection
TensorDetections = Mapping[int, Mapping[str, Tensor]]


# -- stored predictions ---------------------------------------------------------------------------
def evaluate_predictions(
    predictions: pa.Table | Iterable[pa.Table], annotations: pa.Table, images: pa.Table,
    categories: pa.Table,
) -> dict:
    """COCO bbox metrics of ``predictions`` (DETECTIONS) on ``annotations`` (ANNOTATIONS).

    ``predictions`` may be one table or an iterable of tables (shards, read one at a time; an
    image must not appear twice). ``images`` (IMAGES) must have a row per evaluated image,
    ``categories`` (CATEGORIES) gives the evaluated classes. Returns ``map`` (AP@[.5:.95]),
    ``ap50``, ``ap75``, ``ap_small|medium|large``, ``per_category``/``per_category_ap50``/
    ``per_category_ap75`` {category_id: AP or None when the class has no ground truth},
    ``per_category_num_gt``, ``num_images``, ``num_detections``, ``num_annotations`` and
    ``reason``: None when evaluated, else why not (no image with both predictions and ground
    truth), with every metric None.
    """
    require_columns(annotations, ANNOTATION_COLUMNS, "annotations", "ANNOTATIONS")
    lookup = category_table(categories)
    labeled = pc.unique(annotations["image_id"]).to_numpy()
    parts = [predictions] if isinstance(predictions, pa.Table) else predictions
    accumulator, counts, predicted = CocoAccumulator(lookup.num_rows), _Counts(lookup), []
    for part in parts:
        ids = unique_image_ids(part)
        predicted.append(ids)
        evaluated = np.intersect1d(ids, labeled)
        if evaluated.size:
            _add(accumulator, counts, part, annotations, images, lookup, evaluated,
                 "have predictions and annotations")
    _check_unique(predicted)
    if not counts.num_images:
        return _not_evaluated(sum(len(ids) for ids in predicted), len(labeled), lookup)
    return {**accumulator.result().summary(counts.category_ids), **counts.as_dict(),
            "num_detections": accumulator.num_detections, "reason": None}


def evaluation_table(result: dict, categories: pa.Table, model_version: str) -> pa.Table:
    """An :func:`evaluate_predictions` result as MODEL_EVALUATION rows of ``model_version``:
    overall row, then classes."""
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
            "model_version": [model_version] * (len(ids) + 1),
        },
        schema=MODEL_EVALUATION,
    )


def prediction_leaves(schema: pq.ParquetSchema) -> list[str]:
    """Parquet leaf paths of what evaluation reads of DETECTIONS: image_id and each
    detection's box, score and label_id (not the distributions, top-k lists or embedding)."""
    paths = [schema.column(i).path for i in range(len(schema))]
    return [path for path in paths if path == "image_id" or (
        path.startswith("detections.") and len(parts := path.split(".")) > 3
        and parts[3] in DETECTION_FIELDS)]


class _Counts:
    """Images, annotations and non-crowd boxes per class of the evaluated images."""

    def __init__(self, lookup: pa.Table) -> None:
        self.category_ids = [int(i) for i in lookup["category_id"].to_pylist()]
        self.num_gt = np.zeros(len(self.category_ids), np.int64)
        self.num_images = self.num_annotations = 0

    def add(self, num_images: int, truth: GroundTruth) -> None:
        self.num_images += num_images
        self.num_annotations += len(truth.area)
        self.num_gt += np.bincount(truth.category[~truth.crowd], minlength=len(self.num_gt))

    def as_dict(self) -> dict:
        return {"per_category_num_gt": dict(zip(self.category_ids, self.num_gt.tolist())),
                "num_images": self.num_images, "num_annotations": self.num_annotations}


def _add(accumulator: CocoAccumulator, counts: _Counts, predictions: pa.Table,
         annotations: pa.Table, images: pa.Table, lookup: pa.Table, image_ids: np.ndarray,
         why: str) -> None:
    """Match the predictions of ``image_ids`` (sorted, unique) to their annotations.

    An id without annotations is an empty image (its detections are false positives), an id
    without a prediction row an image without detections; callers decide which ids to pass.
    ``why`` says in the error for a missing IMAGES row why those images are evaluated.
    """
    _require_image_rows(images, image_ids, why)
    selected = pa.array(image_ids, pa.int64())
    truth = _truth_table(annotations.filter(pc.is_in(annotations["image_id"], value_set=selected)),
                         lookup)
    detections = _detection_arrays(
        predictions.filter(pc.is_in(predictions["image_id"], value_set=selected)), lookup)
    accumulator.add(detections, truth)
    counts.add(len(image_ids), truth)


def _check_unique(predicted: list[np.ndarray]) -> None:
    values, repeats = np.unique(np.concatenate(predicted) if predicted else np.zeros(0, np.int64),
                                return_counts=True)
    if (repeats > 1).any():
        raise ValueError(
            f"image_id(s) {values[repeats > 1][:10].tolist()} appear more than once in the "
            "predictions; analyse one model version (one prediction per image) at a time"
        )


def _not_evaluated(num_predicted: int, num_labeled: int, lookup: pa.Table) -> dict:
    none_per_category = {int(i): None for i in lookup["category_id"].to_pylist()}
    return {
        **{name: None for name in STAT_NAMES},
        "per_category": none_per_category,
        "per_category_ap50": dict(none_per_category),
        "per_category_ap75": dict(none_per_category),
        "per_category_num_gt": {i: 0 for i in none_per_category},
        "num_images": 0, "num_detections": 0, "num_annotations": 0,
        "reason": (
            f"no image has both predictions ({num_predicted} predicted images) and "
            f"ground truth ({num_labeled} annotated images): label some predicted images, or "
            "predict the labeled ones, to evaluate the model"
        ),
    }


def _require_image_rows(images: pa.Table, image_ids: np.ndarray, why: str) -> None:
    """A missing IMAGES row is an error: the pool does not know that image."""
    require_columns(images, ("image_id", "width", "height"), "images", "IMAGES")
    known = pc.is_in(pa.array(image_ids, pa.int64()), value_set=images["image_id"].combine_chunks())
    missing = image_ids[~known.to_numpy(zero_copy_only=False)]
    if missing.size:
        raise ValueError(
            f"image_id(s) {missing[:10].tolist()} {why} but no row in the "
            "images table; re-ingest their batch so width/height are known"
        )


def _truth_table(annotations: pa.Table, lookup: pa.Table) -> GroundTruth:
    """ANNOTATIONS rows as COCO ground truth, in table order (COCOeval's order)."""
    index = category_index(lookup, annotations["category_id"], "annotation category_id(s)")
    xywh = pc.list_flatten(annotations["bbox_xywh"].combine_chunks())
    return GroundTruth(
        image=annotations["image_id"].to_numpy().astype(np.int64),
        category=_indexes(index),
        xywh=xywh.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 4),
        area=annotations["area"].to_numpy().astype(np.float64),
        crowd=annotations["iscrowd"].to_numpy(zero_copy_only=False).astype(bool),
    )


def _detection_arrays(predictions: pa.Table, lookup: pa.Table) -> Detections:
    """Every stored detection as a COCO result (bbox [x, y, w, h]), row and list order kept."""
    lists = predictions["detections"].combine_chunks()
    parents = pc.list_parent_indices(lists).to_numpy()
    flat = pc.list_flatten(lists)
    index = category_index(lookup, pc.struct_field(flat, "label_id"), "predicted label_id(s)")
    box = pc.struct_field(flat, "box")
    xyxy = np.column_stack([
        pc.struct_field(box, f).to_numpy(zero_copy_only=False).astype(np.float64)
        for f in ("xmin", "ymin", "xmax", "ymax")
    ]).reshape(-1, 4)
    return Detections(
        image=predictions["image_id"].to_numpy().astype(np.int64)[parents],
        category=_indexes(index),
        xywh=np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]),
        score=pc.struct_field(flat, "score").to_numpy().astype(np.float64),
    )


def _indexes(index: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(index, pa.ChunkedArray):
        index = index.combine_chunks()
    return index.to_numpy(zero_copy_only=False).astype(np.int64)


ALL_CLASSES = "all classes"


def version_comparison(evaluation: pa.Table, versions: Sequence[str] | None = None) -> pa.Table:
    """MODEL_EVALUATION rows side by side, so versions compare at a glance.

    Rows: ``all classes`` mAP, ``all classes`` AP50, then one AP@[.5:.95] row per class (in
    the order of the table); columns ``category_id``, ``name``, ``metric`` (mAP | AP50 | AP),
    one per version (``versions``, default: in order of appearance, which is oldest first for
    model_evaluation), then ``delta`` = the last version minus the one before it (what the
    newest version changed; null with one version, or where either value is null).
    """
    order = list(versions) if versions is not None else list(dict.fromkeys(
        evaluation["model_version"].to_pylist()))
    clash = set(order) & {"category_id", "name", "metric", "delta"}
    if clash:
        raise ValueError(f"model version(s) {sorted(clash)} clash with the comparison's own "
                         "columns; name versions like 'al-detector-v3'")
    values: dict[tuple, dict[str, float | None]] = {}
    for row in evaluation.to_pylist():
        if row["model_version"] not in order:
            continue
        if row["category_id"] is None:
            values.setdefault((None, ALL_CLASSES, "mAP"), {})[row["model_version"]] = row["ap"]
            values.setdefault((None, ALL_CLASSES, "AP50"), {})[row["model_version"]] = row["ap50"]
        else:
            values.setdefault((row["category_id"], row["name"], "AP"), {})[
                row["model_version"]] = row["ap"]
    keys = sorted(values, key=lambda key: key[0] is not None)  # overall rows first, stable
    columns = {
        "category_id": pa.array([key[0] for key in keys], pa.int32()),
        "name": pa.array([key[1] for key in keys], pa.string()),
        "metric": pa.array([key[2] for key in keys], pa.string()),
        **{v: pa.array([values[key].get(v) for key in keys], pa.float64()) for v in order},
        "delta": pa.array([_last_change(values[key], order) for key in keys], pa.float64()),
    }
    return pa.table(columns)


def _last_change(by_version: dict[str, float | None], order: list[str]) -> float | None:
    """The newest value minus the one before it; None without two values."""
    if len(order) < 2:
        return None
    return _difference(by_version.get(order[-1]), by_version.get(order[-2]))


def compare_predictions(
    challenger: pa.Table, champion: pa.Table | None, annotations: pa.Table, images: pa.Table,
    categories: pa.Table, *, image_ids: Sequence[int] | None = None, n_boot: int = 200,
    seed: int = 0, confidence: float = 0.95,
) -> dict:
    """COCO mAP of two model versions (DETECTIONS) on the same held-out images, with a paired
    bootstrap over images, for a promotion gate.

    ``image_ids`` are the held-out labeled images; default: the annotated images that every
    given prediction table covers. Each id is evaluated even without annotations (a held-out
    image can be labeled empty: its detections are false positives) or without a prediction
    row (no detections). The bootstrap draws ``n_boot`` resamples of these images with
    replacement (``numpy.random.default_rng(seed)``), the *same* ones for both models, so the
    interval of the difference is paired: image difficulty cancels out.

    Returns ``challenger`` / ``champion`` (None without a champion), each with ``map``,
    ``ap50``, ``ap75``, ``per_category``, ``per_category_ap50`` (None: class without ground
    truth), ``num_images``, ``num_detections`` and the percentile interval ``map_low`` /
    ``map_high``; then ``delta_map`` (challenger - champion), its paired interval
    ``delta_low`` / ``delta_high``, ``per_category_delta``, ``num_images``,
    ``num_annotations``, ``n_boot`` and ``confidence``. Deltas are None without a champion.

    Cost, measured (with COCOeval doing the matching then): 100 images x 8 classes x ~19
    detections, n_boot=200, two models: 0.7 s on 2 cores (0.3 s of it the two COCOeval runs).
    pycocotools' own accumulate() on copied evalImgs takes 0.04 s per resample, 16 s for the
    same job: hence :func:`resampled_maps`.
    """
    _check_bootstrap(n_boot, confidence)
    require_columns(annotations, ("ann_id", "image_id", "category_id", "bbox_xywh", "area",
                                  "iscrowd"), "annotations", "ANNOTATIONS")
    lookup = category_table(categories)
    models = [challenger] if champion is None else [challenger, champion]
    heldout = _heldout_images(models, annotations, image_ids)
    weights = _resample_weights(heldout.size, n_boot, seed)
    first, first_maps = _scored(challenger, annotations, images, lookup, heldout, weights,
                                confidence)
    second, second_maps = (None, None) if champion is None else _scored(
        champion, annotations, images, lookup, heldout, weights, confidence)
    num_annotations = int(pc.sum(pc.is_in(
        annotations["image_id"], value_set=pa.array(heldout, pa.int64()))).as_py() or 0)
    return {
        "challenger": first,
        "champion": second,
        **_deltas(first, second, first_maps, second_maps, confidence),
        "num_images": int(heldout.size),
        "num_annotations": num_annotations,
        "n_boot": n_boot,
        "confidence": confidence,
    }


@dataclass(frozen=True)
class _Evaluated:
    """One model's matches on exactly ``image_ids``, kept so the bootstrap can re-weight them."""

    result: CocoResult
    image_ids: np.ndarray
    summary: dict
    num_detections: int
    num_annotations: int


def _evaluate_on(predictions: pa.Table, annotations: pa.Table, images: pa.Table,
                 lookup: pa.Table, image_ids: np.ndarray, why: str) -> _Evaluated:
    """``predictions`` scored on exactly ``image_ids`` (sorted, unique), see :func:`_add`."""
    accumulator, counts = CocoAccumulator(lookup.num_rows), _Counts(lookup)
    _add(accumulator, counts, predictions, annotations, images, lookup, image_ids, why)
    result = accumulator.result()
    return _Evaluated(result, image_ids, result.summary(counts.category_ids),
                      accumulator.num_detections, counts.num_annotations)


def resampled_maps(result: CocoResult, image_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mAP (AP@[.5:.95], area all, 100 detections) of each resample of the evaluated images.

    ``weights[b, i]`` is how often resample ``b`` draws image ``image_ids[i]`` (the sorted ids
    ``result`` was evaluated on). This is COCOeval.accumulate() restricted to what stats[0]
    reads, vectorized over resamples: a drawn-twice image weighs its detections and ground
    truth twice instead of being copied, which gives the same precision envelope. With
    all-ones weights it equals ``stats()["map"]``; otherwise it equals accumulate() on the
    copied images except for the order of detections with exactly equal scores. NaN: no
    ground truth drawn.
    """
    curves = _curves(result, np.asarray(image_ids))
    weights = np.asarray(weights, dtype=np.float64).reshape(-1, len(image_ids))
    out = np.full(weights.shape[0], np.nan)
    longest = max([curve.image.size for curve in curves] + [1])
    step = max(1, _CHUNK_ELEMENTS // (longest * len(IOU_THRESHOLDS)))
    for start in range(0, weights.shape[0], step):
        chunk = weights[start:start + step]
        precision = np.stack([_precision(curve, chunk, RECALL_THRESHOLDS) for curve in curves],
                             axis=-1)
        out[start:start + step] = [_mean_valid(p) for p in precision]
    return out


# -- comparison and bootstrap --------------------------------------------------------------------
_CHUNK_ELEMENTS = 4_000_000  # floats per (resamples x thresholds x detections) block: ~32 MB


def _check_bootstrap(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 (resamples of the held-out images), got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence}")


def _heldout_images(models: list[pa.Table], annotations: pa.Table,
                    image_ids: Sequence[int] | None) -> np.ndarray:
    """Sorted unique held-out ids; by default the annotated images every model predicted."""
    covered = [unique_image_ids(table) for table in models]  # also rejects duplicate rows
    if image_ids is not None:
        return np.unique(np.asarray(list(image_ids), dtype=np.int64))
    ids = pc.unique(annotations["image_id"]).to_numpy()
    for predicted in covered:
        ids = np.intersect1d(ids, predicted)
    return ids.astype(np.int64)


def _resample_weights(num_images: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, num_images) draw counts of images resampled with replacement."""
    if not num_images:
        return np.zeros((n_boot, 0))
    draws = np.random.default_rng(seed).integers(0, num_images, size=(n_boot, num_images))
    flat = (draws + num_images * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * num_images).reshape(n_boot, num_images)


def _scored(table: pa.Table, annotations: pa.Table, images: pa.Table, lookup: pa.Table,
            heldout: np.ndarray, weights: np.ndarray, confidence: float
            ) -> tuple[dict, np.ndarray]:
    """One model's comparison entry and its bootstrap mAPs (NaN when nothing evaluated)."""
    category_ids = lookup["category_id"].to_pylist()
    if not heldout.size:
        none = {int(i): None for i in category_ids}
        return ({"map": None, "ap50": None, "ap75": None, "per_category": none,
                 "per_category_ap50": dict(none), "num_images": 0, "num_detections": 0,
                 "map_low": None, "map_high": None}, np.full(weights.shape[0], np.nan))
    done = _evaluate_on(table, annotations, images, lookup, heldout, "are held out")
    maps = resampled_maps(done.result, heldout, weights)
    low, high = _interval(maps, confidence)
    keys = ("map", "ap50", "ap75", "per_category", "per_category_ap50")
    return ({**{key: done.summary[key] for key in keys}, "num_images": int(heldout.size),
             "num_detections": done.num_detections, "map_low": low, "map_high": high}, maps)


def _deltas(challenger: dict, champion: dict | None, challenger_maps: np.ndarray,
            champion_maps: np.ndarray | None, confidence: float) -> dict:
    """Point and paired-bootstrap differences challenger - champion (None: no champion)."""
    categories = challenger["per_category"]
    if champion is None:
        return {"delta_map": None, "delta_low": None, "delta_high": None,
                "per_category_delta": {k: None for k in categories}}
    low, high = _interval(challenger_maps - champion_maps, confidence)
    return {
        "delta_map": _difference(challenger["map"], champion["map"]),
        "delta_low": low,
        "delta_high": high,
        "per_category_delta": {k: _difference(v, champion["per_category"].get(k))
                               for k, v in categories.items()},
    }


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a - b)


def _interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Percentile interval over the resamples that had ground truth."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None, None
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class _Curve:
    """One category's detections over all images, in accumulate()'s order (score desc)."""

    image: np.ndarray  # (D,) position of each detection's image in params.imgIds
    tp: np.ndarray  # (T, D) 1.0 where a true positive at IoU threshold t
    fp: np.ndarray  # (T, D) 1.0 where a false positive (ignored detections are neither)
    num_gt: np.ndarray  # (I,) non-ignored ground truth per image


def _curves(result: CocoResult, image_ids: np.ndarray) -> list[_Curve]:
    """A curve per category from the matches at area 'all' (already in accumulate()'s order)."""
    s = result.sorted
    bounds = np.searchsorted(s.category, np.arange(result.precision.shape[2] + 1))
    counted = ~s.gt_ignored[:, 0]
    gt_image = np.searchsorted(image_ids, s.gt_image)
    curves = []
    for k in range(len(bounds) - 1):
        codes = s.code[bounds[k]:bounds[k + 1], 0, :].T  # (thresholds, detections)
        num_gt = np.bincount(gt_image[counted & (s.gt_category == k)], minlength=len(image_ids))
        curves.append(_Curve(np.searchsorted(image_ids, s.image[bounds[k]:bounds[k + 1]]),
                             (codes == TRUE_POSITIVE).astype(np.float64),
                             (codes == FALSE_POSITIVE).astype(np.float64),
                             num_gt.astype(np.float64)))
    return curves


def _precision(curve: _Curve, weights: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """(B, T, R) interpolated precision of one category per resample; -1 without ground truth.

    Same arithmetic as accumulate() (so the identity resample matches it bit for bit), with
    each detection counted as often as its image was drawn.
    """
    num_gt = weights @ curve.num_gt
    drawn = weights[:, curve.image][:, None, :]
    tp_sum = np.cumsum(curve.tp[None] * drawn, axis=2)
    fp_sum = np.cumsum(curve.fp[None] * drawn, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp_sum / num_gt[:, None, None]
    precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    out = np.zeros(recall.shape[:2] + (rec_thrs.size,))
    size = recall.shape[2]
    for b, t in np.ndindex(*recall.shape[:2]):
        if num_gt[b] == 0:
            continue
        index = np.searchsorted(recall[b, t], rec_thrs, side="left")
        reached = index < size  # accumulate() leaves the unreached recall points at 0
        out[b, t, reached] = envelope[b, t, index[reached]]
    out[num_gt == 0] = -1.0
    return out


def _mean_valid(precision: np.ndarray) -> float:
    """summarize()'s mean over the classes with ground truth; NaN when there is none."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


# -- a model over a COCO folder, or ready detections --------------------------------------------
def evaluate_coco_map(
    model_or_extractor: nn.Module,
    coco_json: Path,
    image_dir: Path,
    *,
    batch_size: int = 8,
) -> dict:
    """Run the detector on every readable image of ``coco_json`` and score it.

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
    summary = _evaluate_tensors(dataset.coco, dataset.categories, detections)
    return {**summary, "skipped_images": skipped}


def coco_map_from_detections(coco_json: Path, detections: TensorDetections) -> dict:
    """COCO mAP of ready detections: {image_id: {"boxes" xyxy, "scores", "labels" category ids}}.

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
    return _evaluate_tensors(coco, categories, detections)


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


def _evaluate_tensors(coco: COCO, categories: CategoryMap, detections: TensorDetections) -> dict:
    """The images of ``detections`` scored on ``coco``'s annotations, in one batch."""
    category_ids = [int(i) for i in categories.category_ids]
    image_ids = sorted(int(i) for i in detections)
    accumulator = CocoAccumulator(len(category_ids))
    dets, num_detections = _tensor_detections(image_ids, detections, category_ids)
    accumulator.add(dets, _coco_truth(coco, image_ids, category_ids))
    result = accumulator.result()
    return {**result.stats(), "per_category": result.per_category(category_ids),
            "num_images": len(detections), "num_detections": num_detections}


def _tensor_detections(image_ids: list[int], detections: TensorDetections,
                       category_ids: list[int]) -> tuple[Detections, int]:
    """COCO results of tensors (xyxy -> [x, y, w, h]) and how many there were; labels outside
    the dataset's categories are left out, as COCOeval does with ``params.catIds``."""
    rows = [_tensor_rows(i, detections[i]) for i in image_ids]
    image, labels, xywh, scores = (np.concatenate(x) for x in zip(*rows)) if rows else (
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
    lookup = np.asarray(category_ids, np.int64)
    sorter = np.argsort(lookup)
    found = np.searchsorted(lookup, labels, sorter=sorter).clip(0, max(len(lookup) - 1, 0))
    index = sorter[found] if len(lookup) else found
    known = lookup[index] == labels if len(lookup) else np.zeros(len(labels), bool)
    return Detections(image[known], index[known], xywh[known], scores[known]), len(labels)


def _tensor_rows(image_id: int, det: Mapping[str, Tensor]) -> tuple[np.ndarray, ...]:
    boxes = torch.as_tensor(det["boxes"]).detach().cpu().double().reshape(-1, 4).numpy()
    labels = torch.as_tensor(det["labels"]).detach().cpu().reshape(-1).numpy().astype(np.int64)
    scores = torch.as_tensor(det["scores"]).detach().cpu().reshape(-1).double().numpy()
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
    return np.full(len(labels), image_id, np.int64), labels, xywh, scores


def _coco_truth(coco: COCO, image_ids: list[int], category_ids: list[int]) -> GroundTruth:
    """The annotations of ``image_ids`` in pycocotools' order (image, then file order)."""
    position = {c: k for k, c in enumerate(category_ids)}
    anns = [a for i in image_ids for a in coco.imgToAnns.get(i, [])
            if a["category_id"] in position]
    return GroundTruth(
        image=np.array([a["image_id"] for a in anns], np.int64),
        category=np.array([position[a["category_id"]] for a in anns], np.int64),
        xywh=np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4),
        area=np.array([a["area"] for a in anns], np.float64),
        crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
    )
