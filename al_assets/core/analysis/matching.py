"""Detections matched to ground truth, class-agnostically, and the confusion matrix.

Matching ignores classes on purpose: a "chair" box on a ground-truth "person" is then a
*confusion* (person -> chair), not one false positive plus one miss, which is what the
confused-pairs analysis wants to verify against labels. The rule is COCOeval's: per image,
detections in descending score order each take the unmatched ground-truth box of highest IoU
(>= the threshold); a detection that matches only a crowd region (IoU = intersection over the
detection's area) is ignored, neither true nor false positive, and crowd regions are never
"missed".

Greedy matching is sequential within an image, so the loop runs over score *ranks*: round r
matches the r-th detection of every image at once with vectorized numpy, on the sparse list of
(detection, annotation) pairs whose IoU reaches the threshold. Images are processed in chunks
of bounded pair count so memory does not grow with the pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.analysis.confused_pairs import category_index, category_table
from al_assets.core.schemas import CONFUSION_MATRIX, DETECTION_MATCHES, require_columns

BACKGROUND = "background"
_BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class _Detections:
    """Flattened detections sorted by (image, score desc, det_index)."""

    image: np.ndarray  # position in the predictions' image list
    det_index: np.ndarray
    boxes: np.ndarray  # (n, 4) xyxy, float64
    score: np.ndarray
    label: np.ndarray
    rank: np.ndarray  # 0 = the image's highest score


@dataclass(frozen=True)
class _GroundTruth:
    """Annotations of the predicted images, sorted by image."""

    image: np.ndarray
    ann_id: np.ndarray
    boxes: np.ndarray
    category: np.ndarray
    crowd: np.ndarray


@dataclass
class _Assignment:
    """Greedy result: matched annotation per detection (-1: none), crowd-ignored flags."""

    gt: np.ndarray
    iou: np.ndarray
    ignored: np.ndarray
    taken: np.ndarray  # per annotation


def match_detections(
    predictions: pa.Table,
    annotations: pa.Table,
    *,
    iou_threshold: float = 0.5,
    score_thresh: float = 0.0,
    max_pairs_per_chunk: int = 250_000,
) -> pa.Table:
    """Match the detections of ``predictions`` (DETECTIONS) to ``annotations`` (ANNOTATIONS).

    Only the predicted images are considered: their annotations are the ground truth, an image
    without annotations has no objects (restrict ``predictions`` to labeled images first when
    the pool holds unlabeled ones). Detections below ``score_thresh`` are dropped before
    matching. Returns DETECTION_MATCHES: one row per kept detection (matched or false positive,
    crowd matches left out) and one per missed non-crowd annotation, by image_id then score.
    ``max_pairs_per_chunk`` bounds the (detection, annotation) pairs held in memory at once.
    """
    _check_matching_options(iou_threshold, max_pairs_per_chunk)
    image_ids = unique_image_ids(predictions)
    dets = _flat_detections(predictions, image_ids, score_thresh)
    gts = _ground_truth(annotations, image_ids)
    done = _Assignment(
        gt=np.full(len(dets.image), -1), iou=np.zeros(len(dets.image)),
        ignored=np.zeros(len(dets.image), bool), taken=np.zeros(len(gts.image), bool),
    )
    g_start = _group_starts(gts.image, len(image_ids))
    for chunk in _detection_chunks(dets, g_start, len(image_ids), max_pairs_per_chunk):
        _greedy(dets, gts, g_start, chunk, iou_threshold, done)
    table = pa.concat_tables([
        _detection_rows(dets, gts, done, image_ids),
        _missed_rows(gts, done, image_ids),
    ])
    return table.sort_by([
        ("image_id", "ascending"), ("score", "descending"), ("det_index", "ascending"),
        ("ann_id", "ascending"),
    ])


def unique_image_ids(predictions: pa.Table) -> np.ndarray:
    """image_id of each DETECTIONS row; an image twice (two model versions?) is an error."""
    require_columns(predictions, ("image_id", "detections"), "predictions", "DETECTIONS")
    ids = predictions["image_id"].to_numpy()
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"image_id(s) {values[counts > 1][:10].tolist()} appear more than once in the "
            "predictions; analyse one model version (one prediction per image) at a time"
        )
    return ids


def _check_matching_options(iou_threshold: float, max_pairs: int) -> None:
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs_per_chunk must be >= 1, got {max_pairs}")


def _flat_detections(
    predictions: pa.Table, image_ids: np.ndarray, score_thresh: float
) -> _Detections:
    lists = predictions["detections"].combine_chunks()
    if lists.null_count:
        first = pc.filter(predictions["image_id"], pc.is_null(predictions["detections"]))[0]
        raise ValueError(
            f"image_id {first} has a null detections list; DETECTIONS needs [] instead"
        )
    image = pc.list_parent_indices(lists).to_numpy()
    offsets = lists.offsets.to_numpy()
    det_index = np.arange(len(image)) - (offsets[image] - offsets[0])
    flat = pc.list_flatten(lists)
    boxes = _boxes(pc.struct_field(flat, "box"), image_ids[image], "detection box")
    score = pc.struct_field(flat, "score").to_numpy()
    keep = score >= score_thresh
    image, det_index, boxes, score = image[keep], det_index[keep], boxes[keep], score[keep]
    label = pc.struct_field(flat, "label_id").to_numpy()[keep]
    order = np.lexsort((det_index, -score, image))
    image = image[order]
    rank = np.arange(len(image)) - _group_starts(image, len(image_ids))[image]
    return _Detections(
        image=image, det_index=det_index[order], boxes=boxes[order], score=score[order],
        label=label[order], rank=rank,
    )


def _ground_truth(annotations: pa.Table, image_ids: np.ndarray) -> _GroundTruth:
    columns = ("ann_id", "image_id", "category_id", "bbox", "iscrowd")
    require_columns(annotations, columns, "annotations", "ANNOTATIONS")
    value_set = pa.array(image_ids, annotations["image_id"].type)
    position = pc.index_in(annotations["image_id"], value_set=value_set)
    ours = annotations.filter(pc.is_valid(position))
    image = pc.drop_null(position).to_numpy()
    order = np.argsort(image, kind="stable")
    ann_id = ours["ann_id"].to_numpy()
    boxes = _boxes(ours["bbox"].combine_chunks(), ann_id, "annotation bbox", "ann_id")
    return _GroundTruth(
        image=image[order], ann_id=ann_id[order], boxes=boxes[order],
        category=ours["category_id"].to_numpy()[order], crowd=ours["iscrowd"].to_numpy()[order],
    )


def _boxes(
    structs: pa.StructArray, owners: np.ndarray, what: str, key: str = "image_id"
) -> np.ndarray:
    """BOX2D structs as an (n, 4) float64 array; NaN, inf or xmax < xmin is an error."""
    boxes = np.column_stack(
        [pc.struct_field(structs, f).to_numpy(zero_copy_only=False) for f in _BOX_FIELDS]
    ).astype(np.float64).reshape(-1, 4)
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    bad = ~np.isfinite(boxes).all(axis=1) | inverted
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} of {key} {owners[i]} is {boxes[i].tolist()}: boxes must be finite xyxy "
            "with xmin <= xmax and ymin <= ymax (BOX2D); fix the table that produced it"
        )
    return boxes


def _group_starts(sorted_groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Index of the first element of each group in a sorted group array (len n_groups + 1)."""
    return np.r_[0, np.cumsum(np.bincount(sorted_groups, minlength=n_groups))]


def _detection_chunks(
    dets: _Detections, g_start: np.ndarray, n_images: int, max_pairs: int
) -> Iterator[tuple[int, int]]:
    """Detection ranges of consecutive images whose (detection, annotation) pairs stay under
    ``max_pairs`` (one image alone may exceed it)."""
    d_start = _group_starts(dets.image, n_images)
    cumulative = np.r_[0, np.cumsum(np.diff(d_start) * np.diff(g_start))]
    start = 0
    while start < n_images:
        stop = int(np.searchsorted(cumulative, cumulative[start] + max_pairs, side="right")) - 1
        stop = min(max(stop, start + 1), n_images)
        yield int(d_start[start]), int(d_start[stop])
        start = stop


def _greedy(
    dets: _Detections, gts: _GroundTruth, g_start: np.ndarray, chunk: tuple[int, int],
    threshold: float, done: _Assignment,
) -> None:
    """COCO's greedy matching for one chunk of images, one score rank at a time."""
    det, gt, iou = _candidate_pairs(dets, gts, g_start, chunk, threshold)
    crowd = gts.crowd[gt]
    # per rank, per detection: non-crowd first, then the highest IoU, then annotation order
    order = np.lexsort((gt, -iou, crowd, det, dets.rank[det]))
    det, gt, iou, crowd = det[order], gt[order], iou[order], crowd[order]
    bounds = _group_starts(dets.rank[det], int(dets.rank[det].max(initial=-1)) + 1)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        free = np.flatnonzero(~done.taken[gt[lo:hi]]) + lo
        if not free.size:
            continue
        _, first = np.unique(det[free], return_index=True)  # best free candidate per detection
        pick = free[first]
        done.ignored[det[pick[crowd[pick]]]] = True
        real = pick[~crowd[pick]]
        done.gt[det[real]], done.iou[det[real]] = gt[real], iou[real]
        done.taken[gt[real]] = True


def _candidate_pairs(
    dets: _Detections, gts: _GroundTruth, g_start: np.ndarray, chunk: tuple[int, int],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(detection, annotation, IoU) of the chunk's same-image pairs with IoU >= threshold."""
    d0, d1 = chunk
    det_image = dets.image[d0:d1]
    repeats = g_start[det_image + 1] - g_start[det_image]
    det = np.repeat(np.arange(d0, d1), repeats)
    within = np.arange(len(det)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    gt = np.repeat(g_start[det_image], repeats) + within
    iou = _pair_iou(dets.boxes[det], gts.boxes[gt], gts.crowd[gt])
    keep = iou >= threshold
    return det[keep], gt[keep], iou[keep]


def _pair_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes ``a`` and ``b``; for a crowd ``b``, intersection over area(a)."""
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = np.where(crowd, area_a, area_a + area_b - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _detection_rows(
    dets: _Detections, gts: _GroundTruth, done: _Assignment, image_ids: np.ndarray
) -> pa.Table:
    keep = ~done.ignored
    gt = done.gt[keep]
    matched = gt >= 0
    label = dets.label[keep]
    category = gts.category[gt] if len(gts.category) else np.zeros(len(gt), np.int32)
    outcome = np.where(
        matched, np.where(category == label, "correct", "confused"), "false_positive"
    )
    return pa.table(
        {
            "image_id": pa.array(image_ids[dets.image[keep]], pa.int64()),
            "det_index": pa.array(dets.det_index[keep], pa.int32()),
            "ann_id": pa.array(gts.ann_id[gt] if len(gts.ann_id) else gt, pa.int64(),
                               mask=~matched),
            "gt_category_id": pa.array(category, pa.int32(), mask=~matched),
            "pred_category_id": pa.array(label, pa.int32()),
            "iou": pa.array(done.iou[keep], pa.float64(), mask=~matched),
            "score": pa.array(dets.score[keep], pa.float32()),
            "outcome": pa.array(outcome.astype(object), pa.string()),
        },
        schema=DETECTION_MATCHES,
    )


def _missed_rows(gts: _GroundTruth, done: _Assignment, image_ids: np.ndarray) -> pa.Table:
    missed = ~done.taken & ~gts.crowd
    n = int(missed.sum())
    return pa.table(
        {
            "image_id": pa.array(image_ids[gts.image[missed]], pa.int64()),
            "det_index": pa.nulls(n, pa.int32()),
            "ann_id": pa.array(gts.ann_id[missed], pa.int64()),
            "gt_category_id": pa.array(gts.category[missed], pa.int32()),
            "pred_category_id": pa.nulls(n, pa.int32()),
            "iou": pa.nulls(n, pa.float64()),
            "score": pa.nulls(n, pa.float32()),
            "outcome": pa.array(["missed"] * n, pa.string()),
        },
        schema=DETECTION_MATCHES,
    )


def confusion_matrix(matched: pa.Table, categories: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Counts of (ground truth row, predicted column) from DETECTION_MATCHES.

    Rows and columns are the categories in id order, then "background": the background row
    holds false positives, the background column missed annotations; the diagonal is correct.
    """
    require_columns(
        matched, ("gt_category_id", "pred_category_id"), "matched", "DETECTION_MATCHES"
    )
    lookup = category_table(categories)
    k = lookup.num_rows
    gt = _index_or_background(lookup, matched["gt_category_id"], "gt_category_id(s)")
    pred = _index_or_background(lookup, matched["pred_category_id"], "pred_category_id(s)")
    cells = np.bincount(gt * (k + 1) + pred, minlength=(k + 1) ** 2)
    return cells.reshape(k + 1, k + 1), [*lookup["name"].to_pylist(), BACKGROUND]


def confusion_table(matched: pa.Table, categories: pa.Table) -> pa.Table:
    """The non-empty cells of :func:`confusion_matrix` as a CONFUSION_MATRIX table."""
    return counts_table(confusion_matrix(matched, categories)[0], categories)


def counts_table(matrix: np.ndarray, categories: pa.Table) -> pa.Table:
    """A :func:`confusion_matrix` (or a sum of them, e.g. one per shard) as CONFUSION_MATRIX.

    Matching is per image, so the matrices of disjoint sets of images add up exactly.
    """
    lookup = category_table(categories)
    names = [*lookup["name"].to_pylist(), BACKGROUND]
    if matrix.shape != (len(names), len(names)):
        raise ValueError(f"a {matrix.shape} matrix for {len(names) - 1} categories; expected "
                         f"{(len(names), len(names))} (categories then background)")
    ids = [*lookup["category_id"].to_pylist(), None]
    rows, cols = np.nonzero(matrix)
    return pa.table(
        {
            "gt_category_id": pa.array([ids[i] for i in rows], pa.int32()),
            "gt_name": pa.array([names[i] for i in rows], pa.string()),
            "pred_category_id": pa.array([ids[j] for j in cols], pa.int32()),
            "pred_name": pa.array([names[j] for j in cols], pa.string()),
            "count": pa.array(matrix[rows, cols], pa.int64()),
        },
        schema=CONFUSION_MATRIX,
    )


def _index_or_background(lookup: pa.Table, ids: pa.ChunkedArray, what: str) -> np.ndarray:
    """Row of each id in ``lookup``; a null id (background) maps past the last category."""
    index = category_index(lookup, ids, f"matched {what}")
    return pc.fill_null(index, lookup.num_rows).to_numpy().astype(np.int64)
