"""Box scores -> one ranked uncertainty per image (IMAGE_SCORES), the labeling queue's input.

Labeling happens per image, so box measures are aggregated per image (max, mean, sum or the
mean of the top-k boxes) and ranked. All measures are first turned into an *uncertainty* where
larger always means more uncertain: measures where small means uncertain (``margin``, ``p1`` and
the detector's ``score``) become ``1 - value`` (they all lie in [0, 1]).

Images without detections carry no box measure, so their ``uncertainty`` is null and
``has_detections`` false. Where they rank is a choice (``empty_images``): a detector that finds
nothing is either confidently empty ("lowest", after every image with detections), a miss
worth a look ("highest", before them), or out of the queue ("exclude").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.defaults import DEFAULT_AGG
from al_assets.core.schemas import IMAGE_SCORES

# measure -> (BOX_SCORES column, True when a small value means uncertain)
MEASURES: dict[str, tuple[str, bool]] = {
    "least_confidence": ("least_confidence", False),
    "least_confidence_norm": ("least_confidence_norm", False),
    "margin": ("margin", True),
    "margin_uncertainty": ("margin_uncertainty", False),
    "ratio": ("ratio", False),
    "entropy": ("entropy", False),
    "entropy_norm": ("entropy_norm", False),
    "p1": ("p1", True),
    "score": ("score", True),  # the detector's own score: the notebook's least-confidence query
}
AGGREGATIONS = ("max", "mean", "sum", "topk_mean")
_SOFT_COLUMNS = ("p1", "p2", "first_label_id", "second_label_id")  # what soft_weights reads
EmptyImages = Literal["lowest", "highest", "exclude"]


def aggregate_images(
    box_scores: pa.Table,
    images: pa.Table,
    *,
    measure: str,
    agg: str = DEFAULT_AGG,
    top_k: int = 3,
    empty_images: EmptyImages = "lowest",
    class_weights: Mapping[int, float] | None = None,
    soft_weights: bool = False,
) -> pa.Table:
    """Rank the predicted ``images`` by the aggregated uncertainty of their detections.

    ``box_scores`` needs ``image_id`` and the measure's column (BOX_SCORES) for one model
    version; ``images`` (``image_id``, ``uri``) lists every image that was predicted, so that
    images without detections are explicit. ``topk_mean`` averages the ``top_k`` most uncertain
    boxes (all of them when an image has fewer). ``class_weights`` (label_id -> weight, 1 for
    a label not listed) multiply each box's uncertainty before aggregating (class-calibrated
    and class-balancing strategies). ``soft_weights`` takes each box's weight as the expected
    weight over its two most likely classes (``p1``, ``p2`` renormalized) instead of its top
    class's weight, so that a box whose runner-up is a rare class counts toward it too.
    Returns IMAGE_SCORES sorted by rank: 1 = most uncertain, ties broken by ascending image_id.
    """
    weight_columns = (() if not class_weights else _SOFT_COLUMNS if soft_weights
                      else ("label_id",))
    column, small_is_uncertain = _check_arguments(box_scores, measure, agg, top_k, empty_images,
                                                  weight_columns)
    image_ids = _unique_image_ids(images)
    groups = _image_positions(image_ids, box_scores.column("image_id"))
    values = _uncertainties(box_scores, column, small_is_uncertain)
    if class_weights:
        values = values * (_soft_box_weights(box_scores, class_weights) if soft_weights
                           else _box_weights(box_scores, class_weights))
    counts = np.bincount(groups, minlength=len(image_ids))
    per_image = _aggregate(groups, values, counts, agg, top_k)
    keep = counts > 0 if empty_images == "exclude" else np.ones(len(image_ids), bool)
    order = rank_order(image_ids, per_image, counts, empty_images)
    order = order[keep[order]]
    return _image_scores(images, order, per_image, counts, measure, agg, top_k)


def _check_arguments(
    box_scores: pa.Table, measure: str, agg: str, top_k: int, empty_images: str,
    weight_columns: tuple[str, ...] = (),
) -> tuple[str, bool]:
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {sorted(MEASURES)}")
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown agg {agg!r}; choose one of {list(AGGREGATIONS)}")
    if agg == "topk_mean" and top_k < 1:
        raise ValueError(f"top_k must be >= 1 for topk_mean, got {top_k}")
    if empty_images not in ("lowest", "highest", "exclude"):
        raise ValueError(
            f"empty_images must be 'lowest', 'highest' or 'exclude', got {empty_images!r}"
        )
    column, small_is_uncertain = MEASURES[measure]
    for name in ("image_id", column, *weight_columns):
        if name not in box_scores.column_names:
            raise ValueError(f"box_scores has no column {name!r} (BOX_SCORES schema expected)")
    for name in ("model_name", "model_version"):
        if name in box_scores.column_names and len(pc.unique(box_scores.column(name))) > 1:
            raise ValueError(
                f"box_scores mixes several values of {name}; aggregate one model version at a time"
            )
    return column, small_is_uncertain


def _unique_image_ids(images: pa.Table) -> np.ndarray:
    for name in ("image_id", "uri"):
        if name not in images.column_names:
            raise ValueError(f"images table has no column {name!r} (need image_id and uri)")
    ids = images.column("image_id").to_numpy().astype(np.int64, copy=False)
    sorted_ids = np.sort(ids)
    duplicated = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if duplicated.size:
        raise ValueError(
            f"images lists image_id {duplicated[0]} more than once; pass each image once"
        )
    return ids


def _image_positions(image_ids: np.ndarray, box_image_ids: pa.ChunkedArray) -> np.ndarray:
    """Row of each detection's image in ``images`` (searchsorted over the sorted ids)."""
    ids = box_image_ids.to_numpy().astype(np.int64, copy=False)
    sorter = np.argsort(image_ids, kind="stable")
    found = np.searchsorted(image_ids, ids, sorter=sorter)
    found = np.minimum(found, max(len(image_ids) - 1, 0))
    missing = (image_ids[sorter[found]] != ids) if len(image_ids) else np.ones(len(ids), bool)
    if missing.any():
        raise ValueError(
            f"box_scores has detections of image_id {ids[np.argmax(missing)]}, which is not in "
            "images; pass the images table the predictions were made on"
        )
    return sorter[found] if len(ids) else np.zeros(0, np.int64)


def _box_weights(box_scores: pa.Table, weights: Mapping[int, float],
                 column: str = "label_id") -> np.ndarray:
    """Each box's weight by its ``column`` class (1 for a class ``weights`` does not list)."""
    labels = box_scores.column(column).fill_null(-1).to_numpy().astype(np.int64)
    known = np.array(sorted(weights), np.int64)
    table = np.array([weights[k] for k in known.tolist()], np.float64)
    where = np.clip(np.searchsorted(known, labels), 0, known.size - 1)
    return np.where(known[where] == labels, table[where], 1.0)


def _soft_box_weights(box_scores: pa.Table, weights: Mapping[int, float]) -> np.ndarray:
    """``(p1 w(first) + p2 w(second)) / (p1 + p2)``: the class weight expected over the box's
    two most likely classes (BOX_SCORES keeps these two; a box with one class gets its own).
    The classes are the distribution's (``first_label_id``), which is the detector's
    ``label_id`` except where its post-processing kept a box under another label."""
    p1 = box_scores.column("p1").to_numpy().astype(np.float64)
    # a box stored with one class (top_k=1) has no runner-up id, though p2 may be known
    second = box_scores.column("second_label_id")
    p2 = pc.if_else(pc.is_null(second), 0.0, box_scores.column("p2").fill_null(0.0))
    p2 = p2.to_numpy().astype(np.float64)
    total = np.where(p1 + p2 > 0, p1 + p2, 1.0)
    return (p1 * _box_weights(box_scores, weights, "first_label_id")
            + p2 * _box_weights(box_scores, weights, "second_label_id")) / total


def _uncertainties(box_scores: pa.Table, column: str, small_is_uncertain: bool) -> np.ndarray:
    values = box_scores.column(column).to_numpy().astype(np.float64)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        image_id = box_scores.column("image_id")[row]
        raise ValueError(f"box_scores column {column!r} is null/NaN/inf for image_id {image_id}")
    return 1.0 - values if small_is_uncertain else values


def _aggregate(
    groups: np.ndarray, values: np.ndarray, counts: np.ndarray, agg: str, top_k: int
) -> np.ndarray:
    """Per image aggregate (NaN for images without detections), via sorted segments."""
    result = np.full(len(counts), np.nan)
    if groups.size == 0:
        return result
    # by image; top-k also needs ascending uncertainty within each image
    if agg == "topk_mean":
        order = np.lexsort((values, groups))
    else:
        order = np.argsort(groups, kind="stable")
    g, v = groups[order], values[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    present = g[starts]
    if agg == "max":
        result[present] = np.maximum.reduceat(v, starts)
    elif agg in ("sum", "mean"):
        sums = np.add.reduceat(v, starts)
        result[present] = sums if agg == "sum" else sums / counts[present]
    else:
        ends = np.r_[starts[1:], len(g)]
        from_end = np.repeat(ends, ends - starts) - np.arange(len(g))  # 1 = the image's max
        top = from_end <= top_k
        sums = np.bincount(g[top], weights=v[top], minlength=len(counts))[present]
        result[present] = sums / np.minimum(counts[present], top_k)
    return result


def rank_order(
    image_ids: np.ndarray, per_image: np.ndarray, counts: np.ndarray, empty_images: str
) -> np.ndarray:
    """Image rows from most to least uncertain; ties by image_id; empties placed by policy."""
    empty = counts == 0
    block = ~empty if empty_images == "highest" else empty  # False sorts first
    key = np.where(empty, 0.0, -per_image)
    return np.lexsort((image_ids, key, block))


def _image_scores(
    images: pa.Table, order: np.ndarray, per_image: np.ndarray, counts: np.ndarray,
    measure: str, agg: str, top_k: int,
) -> pa.Table:
    n = len(order)
    uncertainty = per_image[order]
    k = pa.array(np.full(n, top_k, np.int32)) if agg == "topk_mean" else pa.nulls(n, pa.int32())
    return pa.Table.from_arrays(
        [
            pc.take(images.column("image_id"), order).cast(pa.int64()),
            pc.take(images.column("uri"), order),
            pa.array([measure] * n, pa.string()),
            pa.array([agg] * n, pa.string()),
            k,
            pa.array(uncertainty, mask=np.isnan(uncertainty)),
            pa.array(counts[order].astype(np.int32)),
            pa.array(counts[order] > 0),
            pa.array(np.arange(1, n + 1, dtype=np.int64)),
        ],
        schema=IMAGE_SCORES,
    )
