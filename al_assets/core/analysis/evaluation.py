"""COCO mAP of *stored* predictions against the ground-truth tables, with pycocotools.

Unlike :mod:`al_assets.core.detection.evaluation`, which runs a model over a COCO folder, this
scores a PREDICTIONS table that the pipeline already wrote, so a model version's accuracy on the
labeled part of the pool costs no inference. COCOeval is used rather than a re-implementation
because its numbers are the ones users compare with papers and model cards.

Only images with both a prediction row and at least one annotation are evaluated: the pool
mixes labeled and unlabeled images and ANNOTATIONS cannot tell an unlabeled image from an
empty one, so an image without annotations would turn every detection into a false positive.

:func:`compare_predictions` compares two model versions on an explicit held-out list instead:
there an image without annotations *is* known to be empty and is evaluated as such. It runs
COCOeval's per-image matching once per model and bootstraps mAP over images by re-weighting
the stored ``evalImgs`` (paired: the same resamples for both models), so 200 resamples cost
little more than one evaluation.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

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
    done = _evaluate_on(predictions, annotations, images, lookup, image_ids,
                        "have predictions and annotations")
    return {
        **done.summary,
        "per_category_num_gt": _num_gt(done.gt_annotations, lookup),
        "num_images": int(image_ids.size),
        "num_detections": done.num_detections,
        "num_annotations": done.gt_annotations.num_rows,
        "reason": None,
    }


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
    """COCO mAP of two model versions (PREDICTIONS) on the same held-out images, with a paired
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

    Cost, measured: 100 images x 8 classes x ~19 detections, n_boot=200, two models: 0.7 s
    on 2 cores (0.3 s of it the two COCOeval runs). pycocotools' own accumulate() on copied
    evalImgs takes 0.04 s per resample, 16 s for the same job: hence :func:`resampled_maps`.
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


def resampled_maps(evaluator: COCOeval, weights: np.ndarray) -> np.ndarray:
    """mAP (AP@[.5:.95], area all, 100 detections) of each resample of the evaluated images.

    ``weights[b, i]`` is how often resample ``b`` draws image ``params.imgIds[i]`` of an
    evaluated COCOeval. This is COCOeval.accumulate() restricted to what stats[0] reads,
    vectorized over resamples: a drawn-twice image weighs its detections and ground truth
    twice instead of being copied, which gives the same precision envelope. With all-ones
    weights it equals ``stats[0]``; otherwise it equals accumulate() on the copied images
    except for the order of detections with exactly equal scores. NaN: no ground truth drawn.
    """
    curves, rec_thrs = _curves(evaluator), evaluator.params.recThrs
    weights = np.asarray(weights, dtype=np.float64).reshape(-1, len(evaluator.params.imgIds))
    out = np.full(weights.shape[0], np.nan)
    longest = max([curve.image.size for curve in curves] + [1])
    step = max(1, _CHUNK_ELEMENTS // (longest * len(evaluator.params.iouThrs)))
    for start in range(0, weights.shape[0], step):
        chunk = weights[start:start + step]
        precision = np.stack([_precision(curve, chunk, rec_thrs) for curve in curves], axis=-1)
        out[start:start + step] = [_mean_valid(p) for p in precision]
    return out


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


def _image_sizes(images: pa.Table, image_ids: np.ndarray, why: str) -> list[dict]:
    """COCO image records of ``image_ids``; a missing IMAGES row is an error.

    ``why`` says in the message why those images are evaluated (e.g. "are held out").
    """
    require_columns(images, ("image_id", "width", "height"), "images", "IMAGES")
    rows = images.select(["image_id", "width", "height"]).filter(
        pc.is_in(images["image_id"], value_set=pa.array(image_ids, pa.int64()))
    )
    found = {row["image_id"]: row for row in rows.to_pylist()}
    missing = [int(i) for i in image_ids if int(i) not in found]
    if missing:
        raise ValueError(
            f"image_id(s) {missing[:10]} {why} but no row in the "
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


@dataclass(frozen=True)
class _Evaluated:
    """One model's COCOeval run, kept so the bootstrap can re-accumulate its ``evalImgs``."""

    evaluator: COCOeval
    summary: dict
    num_detections: int
    gt_annotations: pa.Table


def _evaluate_on(
    predictions: pa.Table, annotations: pa.Table, images: pa.Table, lookup: pa.Table,
    image_ids: np.ndarray, why: str,
) -> _Evaluated:
    """The one COCOeval path: ``predictions`` scored on exactly ``image_ids`` (sorted, unique).

    An id without annotations is an empty image (its detections are false positives), an id
    without a prediction row an image without detections; callers decide which ids to pass.
    """
    selected = pa.array(image_ids, pa.int64())
    gt_annotations = annotations.filter(pc.is_in(annotations["image_id"], value_set=selected))
    category_index(lookup, gt_annotations["category_id"], "annotation category_id(s)")
    gt = _coco_ground_truth(gt_annotations, _image_sizes(images, image_ids, why), lookup)
    predicted = predictions.filter(pc.is_in(predictions["image_id"], value_set=selected))
    results = _coco_results(predicted, lookup)
    category_ids = lookup["category_id"].to_pylist()
    evaluator = _cocoeval(gt, results, image_ids, category_ids)
    return _Evaluated(evaluator, _summary(evaluator, category_ids), len(results), gt_annotations)


def _cocoeval(gt: dict, results: list[dict], image_ids: np.ndarray,
              category_ids: list) -> COCOeval:
    """An evaluated, accumulated and summarized COCOeval (its prints swallowed)."""
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
    return evaluator


def _summary(evaluator: COCOeval, category_ids: list) -> dict:
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
    maps = resampled_maps(done.evaluator, weights)
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


def _curves(evaluator: COCOeval) -> list[_Curve]:
    """A curve per category from ``evalImgs`` (laid out [category][area][image])."""
    p = evaluator.params
    if p.areaRngLbl[0] != "all" or p.maxDets[-1] != 100:
        raise ValueError("resampled_maps reads area 'all' and maxDets 100: default params only")
    num_images, num_areas = len(p.imgIds), len(p.areaRng)
    return [
        _curve(evaluator.evalImgs[start:start + num_images], num_images, len(p.iouThrs),
               p.maxDets[-1])
        for start in range(0, len(p.catIds) * num_areas * num_images, num_areas * num_images)
    ]


def _curve(entries: list, num_images: int, num_thresholds: int, max_det: int) -> _Curve:
    num_gt = np.zeros(num_images)
    parts: list[tuple] = []
    for i, entry in enumerate(entries):
        if entry is None:  # neither ground truth nor detections of this class
            continue
        num_gt[i] = np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0)
        scores = np.asarray(entry["dtScores"][:max_det], dtype=np.float64)
        parts.append((np.full(scores.size, i), scores, entry["dtMatches"][:, :max_det],
                      entry["dtIgnore"][:, :max_det]))
    if not parts:
        empty = np.zeros((num_thresholds, 0))
        return _Curve(np.zeros(0, dtype=np.int64), empty, empty, num_gt)
    image, scores, matched, ignored = (np.concatenate(x, axis=-1) for x in zip(*parts))
    order = np.argsort(-scores, kind="mergesort")  # accumulate()'s (stable) sort
    matched, ignored = matched[:, order] != 0, ignored[:, order].astype(bool)
    return _Curve(image[order], (matched & ~ignored).astype(np.float64),
                  (~matched & ~ignored).astype(np.float64), num_gt)


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
