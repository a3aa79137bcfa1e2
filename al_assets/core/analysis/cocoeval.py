"""COCO box AP computed as pycocotools' COCOeval computes it, one batch of images at a time.

Why not COCOeval itself: it holds Python dicts per detection and per (image, class, area) and
numpy arrays per (image, class); measured on the pool's predictions, 10k images took 103 s /
3.0 GB, 20k 308 s / 5.1 GB and 40k was killed at 8.9 GB, so COCO train (118k images) would not
fit a 24 GB machine. Matching is per image, so it can run on one batch of images at a time, and
accumulate() needs little of a detection afterwards: its class, score, image, input position
and whether it is a true positive, a false positive or ignored at each IoU threshold and area
range. :class:`CocoAccumulator` keeps only that (~64 bytes a detection, none per image).

The arithmetic follows pycocotools 2.0 step by step: the bbox IoU of maskApi.c (crowd regions:
intersection over the detection's area), evaluateImg's greedy matching in score order with its
crowd and area-range ignores and the top 100 detections per image and class, accumulate()'s
stable sort (ties: image id order, then input order), interpolated precision at the 101 recall
points, and summarize()'s mean over the valid cells. Numbers are therefore the same as
COCOeval's (tests/core/test_cocoeval.py compares them on random sets). Only the AP rows
(maxDets 100) are computed; nothing in the project reads COCOeval's AR rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# the same constructions as pycocotools' Params.setDetParams, so the floats are identical
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = ((0**2, 1e5**2), (0**2, 32**2), (32**2, 96**2), (96**2, 1e5**2))
AREA_NAMES = ("all", "small", "medium", "large")
MAX_DETS = 100
STAT_NAMES = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
_IOU_INDEX = {"ap50": 0, "ap75": 5}  # positions of .50 and .75 in IOU_THRESHOLDS
IGNORED, TRUE_POSITIVE, FALSE_POSITIVE = 0, 1, 2  # a detection's code per area, threshold


@dataclass(frozen=True)
class Detections:
    """Detections of a batch of images, in input order (ties keep it, as loadRes does)."""

    image: np.ndarray  # (n,) int64 image id
    category: np.ndarray  # (n,) int64 index of the class in the evaluated categories
    xywh: np.ndarray  # (n, 4) float64 COCO boxes
    score: np.ndarray  # (n,) float64


@dataclass(frozen=True)
class GroundTruth:
    """Annotations of the same images, in annotation order."""

    image: np.ndarray  # (m,) int64
    category: np.ndarray  # (m,) int64 class index
    xywh: np.ndarray  # (m, 4) float64
    area: np.ndarray  # (m,) float64 COCO area (of the mask when there is one)
    crowd: np.ndarray  # (m,) bool


@dataclass
class _Records:
    """What accumulate() reads, per kept detection and per annotation, batch after batch."""

    category: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    image: list[np.ndarray] = field(default_factory=list)
    position: list[np.ndarray] = field(default_factory=list)  # input order, over all batches
    code: list[np.ndarray] = field(default_factory=list)  # (n, areas, thresholds) codes
    gt_image: list[np.ndarray] = field(default_factory=list)
    gt_category: list[np.ndarray] = field(default_factory=list)
    gt_ignored: list[np.ndarray] = field(default_factory=list)  # (m, areas)


class CocoAccumulator:
    """COCOeval (bbox, default parameters) fed one batch of images at a time.

    Every detection and annotation of an image must come in the same :meth:`add` call; the
    evaluated images are those given (an image with neither boxes contributes nothing, as in
    COCOeval). Memory: the per-detection records above plus one batch being matched.
    """

    def __init__(self, num_categories: int) -> None:
        if num_categories < 0:
            raise ValueError(f"num_categories must be >= 0, got {num_categories}")
        self.num_categories = num_categories
        self._records = _Records()
        self._seen = 0
        self.num_detections = 0

    def add(self, detections: Detections, truth: GroundTruth) -> None:
        """Match one batch of images' detections to their annotations (COCO's evaluateImg)."""
        for what, ids in (("detection", detections.category), ("annotation", truth.category)):
            bad = (ids < 0) | (ids >= self.num_categories)
            if bad.any():
                raise ValueError(f"{what} category index {int(ids[bad][0])} is outside "
                                 f"0..{self.num_categories - 1}")
        self.num_detections += len(detections.score)
        kept, rank = _top_detections(detections, self.num_categories)
        dets = _take(detections, kept)
        codes = _match(dets, rank[kept], truth, self.num_categories)
        r = self._records
        r.category.append(dets.category.astype(np.int32))
        r.score.append(dets.score)
        r.image.append(dets.image)
        r.position.append(self._seen + kept)
        r.code.append(codes)
        r.gt_image.append(truth.image)
        r.gt_category.append(truth.category.astype(np.int32))
        r.gt_ignored.append(_ignored_gt(truth))
        self._seen += len(detections.score)

    def result(self) -> CocoResult:
        """accumulate() over everything added: precision per threshold, recall point, class."""
        r = self._records
        category, score, image, position = (_joined(x, dt) for x, dt in (
            (r.category, np.int32), (r.score, np.float64), (r.image, np.int64),
            (r.position, np.int64)))
        codes = (np.concatenate(r.code) if r.code else
                 np.zeros((0, len(AREA_RANGES), len(IOU_THRESHOLDS)), np.uint8))
        # accumulate(): one stable sort by score of the classes' images concatenated in id order
        order = np.lexsort((position, image, -score, category))
        gt_category = _joined(r.gt_category, np.int32)
        gt_ignored = (np.concatenate(r.gt_ignored) if r.gt_ignored else
                      np.zeros((0, len(AREA_RANGES)), bool))
        curves = _Sorted(category[order], image[order], codes[order], gt_category, gt_ignored,
                         _joined(r.gt_image, np.int64))
        return CocoResult(_precision(curves, self.num_categories), self.num_detections, curves)


@dataclass(frozen=True)
class _Sorted:
    """Kept detections in accumulate()'s order, grouped by class; annotations as added."""

    category: np.ndarray
    image: np.ndarray
    code: np.ndarray  # (n, areas, thresholds)
    gt_category: np.ndarray
    gt_ignored: np.ndarray  # (m, areas)
    gt_image: np.ndarray


@dataclass(frozen=True)
class CocoResult:
    """COCOeval's ``eval["precision"][..., maxDets=100]`` and what summarize() makes of it."""

    precision: np.ndarray  # (thresholds, recall points, classes, areas); -1: no ground truth
    num_detections: int
    sorted: _Sorted

    def stats(self) -> dict[str, float | None]:
        """summarize()'s six AP rows by name; None where COCOeval prints -1."""
        p = self.precision
        cells = (p[..., 0], p[[0], ..., 0], p[[5], ..., 0], p[..., 1], p[..., 2], p[..., 3])
        return {name: _mean_or_none(c) for name, c in zip(STAT_NAMES, cells, strict=True)}

    def per_category(self, category_ids: list[int], iou: str | None = None
                     ) -> dict[int, float | None]:
        """AP@[.5:.95] (or at ``iou`` "ap50" | "ap75") per class id, area all; None: no truth."""
        p = self.precision[..., 0] if iou is None else self.precision[[_IOU_INDEX[iou]], ..., 0]
        return {int(c): _mean_or_none(p[:, :, k]) for k, c in enumerate(category_ids)}

    def summary(self, category_ids: list[int]) -> dict:
        """stats() plus ``per_category``, ``per_category_ap50`` and ``per_category_ap75``."""
        return {**self.stats(), "per_category": self.per_category(category_ids),
                **{f"per_category_{n}": self.per_category(category_ids, n) for n in _IOU_INDEX}}


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _take(d: Detections, index: np.ndarray) -> Detections:
    return Detections(d.image[index], d.category[index], d.xywh[index], d.score[index])


def _group_keys(image: np.ndarray, category: np.ndarray, images: np.ndarray,
                num_categories: int) -> np.ndarray:
    """One int per (image, class), ordered like (image id, class)."""
    return np.searchsorted(images, image) * max(num_categories, 1) + category


def _top_detections(d: Detections, num_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the detections COCOeval keeps (top 100 per image and class by score, input
    order on ties), sorted by (image, class, score desc, input order), and every one's rank."""
    n = len(d.score)
    key = _group_keys(d.image, d.category, np.unique(d.image), num_categories)
    order = np.lexsort((np.arange(n), -d.score, key))
    starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]]) if n else order
    rank_sorted = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, np.int64)
    rank[order] = rank_sorted
    return order[rank_sorted < MAX_DETS], rank


def _ignored_gt(g: GroundTruth) -> np.ndarray:
    """(m, areas): crowd, or area outside the range (evaluateImg's ``_ignore``)."""
    return np.stack([g.crowd | (g.area < lo) | (g.area > hi) for lo, hi in AREA_RANGES], axis=1)


def _pair_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """maskApi.c's bbIou, row by row, operation for operation (same doubles)."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    det_area, gt_area = d[:, 2] * d[:, 3], g[:, 2] * g[:, 3]
    union = np.where(crowd, det_area, det_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _pairs(d: Detections, g: GroundTruth, num_categories: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(detection, annotation, IoU) of same image and class with IoU >= the lowest threshold,
    and the annotations sorted by (image, class, annotation order)."""
    images = np.unique(np.concatenate([d.image, g.image]))
    g_key = _group_keys(g.image, g.category, images, num_categories)
    g_order = np.argsort(g_key, kind="stable")
    g_sorted = g_key[g_order]
    d_key = _group_keys(d.image, d.category, images, num_categories)
    lo = np.searchsorted(g_sorted, d_key, "left")
    counts = np.searchsorted(g_sorted, d_key, "right") - lo
    det = np.repeat(np.arange(len(d_key)), counts)
    within = np.arange(len(det)) - np.repeat(np.cumsum(counts) - counts, counts)
    gt = g_order[np.repeat(lo, counts) + within]  # position in ``g``
    iou = _pair_iou(d.xywh[det], g.xywh[gt], g.crowd[gt])
    keep = iou >= IOU_THRESHOLDS[0]
    return det[keep], gt[keep], iou[keep], g_order


def _match(d: Detections, rank: np.ndarray, g: GroundTruth, num_categories: int) -> np.ndarray:
    """(n, areas, thresholds) codes: evaluateImg's dtMatches / dtIgnore as one code each.

    Greedy matching is sequential within an (image, class), so the loop runs over score ranks:
    rank r matches the r-th detection of every group at once, for every area range and IoU
    threshold. A detection takes the eligible annotation (not yet matched, or crowd) that is
    not ignored if there is one, else an ignored one; the highest IoU; the last in annotation
    order on equal IoU (COCOeval's ``>=`` scan).
    """
    n, m, areas, thresholds = len(d.score), len(g.area), len(AREA_RANGES), len(IOU_THRESHOLDS)
    det, gt, iou, g_order = _pairs(d, g, num_categories)
    g_ignored = _ignored_gt(g)
    g_rank = np.empty(m, np.int64)
    g_rank[g_order] = np.arange(m)  # annotation order within the group, as COCOeval scans
    matched = np.zeros((areas, thresholds, n), bool)
    d_ignored = np.zeros((areas, thresholds, n), bool)
    for a in range(areas):
        order = np.lexsort((g_rank[gt], iou, ~g_ignored[gt, a], det, rank[det]))
        _greedy(det[order], gt[order], iou[order], rank[det[order]], g.crowd, g_ignored[:, a],
                matched[a], d_ignored[a], m)
    det_area = d.xywh[:, 2] * d.xywh[:, 3]
    outside = np.stack([(det_area < lo) | (det_area > hi) for lo, hi in AREA_RANGES])
    d_ignored |= ~matched & outside[:, None, :]
    codes = np.where(d_ignored, IGNORED, np.where(matched, TRUE_POSITIVE, FALSE_POSITIVE))
    codes = codes.astype(np.uint8)
    return np.ascontiguousarray(codes.transpose(2, 0, 1))


def _greedy(det: np.ndarray, gt: np.ndarray, iou: np.ndarray, rank: np.ndarray,
            crowd: np.ndarray, ignored: np.ndarray, matched: np.ndarray,
            d_ignored: np.ndarray, m: int) -> None:
    """One area range: pairs sorted by (rank, detection, preference); fills matched/ignored."""
    taken = np.zeros((len(IOU_THRESHOLDS), m), bool)
    above = iou[None, :] >= IOU_THRESHOLDS[:, None]
    bounds = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1], True]) if len(rank) else []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        g = gt[lo:hi]
        eligible = above[:, lo:hi] & (crowd[g] | ~taken[:, g])
        index = np.where(eligible, np.arange(lo, hi), -1)
        starts = np.flatnonzero(np.r_[True, det[lo + 1:hi] != det[lo:hi - 1]])
        best = np.maximum.reduceat(index, starts, axis=1)  # the last eligible = the preferred
        t, s = np.nonzero(best >= 0)
        pair = best[t, s]
        matched[t, det[pair]] = True
        d_ignored[t, det[pair]] = ignored[gt[pair]]
        taken[t, gt[pair]] = True


def _precision(s: _Sorted, num_categories: int) -> np.ndarray:
    """accumulate()'s precision[:, :, k, a, maxDets=100] for every class and area."""
    areas = len(AREA_RANGES)
    out = np.full((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), num_categories, areas), -1.0)
    counted = np.zeros((num_categories, areas), np.int64)
    for a in range(areas):
        counted[:, a] = np.bincount(s.gt_category[~s.gt_ignored[:, a]],
                                    minlength=num_categories)[:num_categories]
    bounds = np.searchsorted(s.category, np.arange(num_categories + 1))
    for k in range(num_categories):
        codes = s.code[bounds[k]:bounds[k + 1]]
        for a in range(areas):
            if counted[k, a]:
                out[:, :, k, a] = _interpolated(codes[:, a, :], int(counted[k, a]))
    return out


def _interpolated(codes: np.ndarray, num_gt: int) -> np.ndarray:
    """(thresholds, recall points) precision of one class and area, as accumulate() does it."""
    tp = np.cumsum(codes == TRUE_POSITIVE, axis=0).astype(float)
    fp = np.cumsum(codes == FALSE_POSITIVE, axis=0).astype(float)
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
    out = np.zeros((codes.shape[1], len(RECALL_THRESHOLDS)))
    for t in range(codes.shape[1]):
        index = np.searchsorted(recall[:, t], RECALL_THRESHOLDS, side="left")
        reached = index < len(codes)  # accumulate() leaves the unreached recall points at 0
        out[t, reached] = envelope[index[reached], t]
    return out


def _mean_or_none(cells: np.ndarray) -> float | None:
    """summarize()'s mean over the cells > -1; None where it would print -1."""
    valid = cells[cells > -1]
    return float(np.mean(valid)) if valid.size else None
