"""IMAGE_SCORES + DETECTIONS -> LABELING_QUEUE: which images to label next, in order.

The most uncertain images alone make a poor batch: they tend to be one confusing class, images
already labeled, or bursts of near-identical frames. So the queue is picked greedily in rank
order with three filters: already labeled images are skipped, at most ``max_per_class`` images
per predicted top class are taken, and of a near-duplicate cluster only its most uncertain
member competes. The pick is deterministic: rank, then image_id, decide every tie.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.schemas import LABELING_QUEUE, require_columns

SCORE_COLUMNS = ("image_id", "uri", "measure", "agg", "uncertainty", "n_detections", "rank")
PREDICTION_COLUMNS = ("image_id", "detections")


@dataclass(frozen=True)
class LabelSummary:
    """Per prediction row: its top label and its distinct labels (CSR layout, ascending)."""

    top: np.ndarray  # int64 label id; meaningless where has_top is False
    has_top: np.ndarray  # False for an image without detections
    offsets: np.ndarray  # labels of row r: labels[offsets[r]:offsets[r + 1]]
    labels: np.ndarray


@dataclass(frozen=True)
class _Candidates:
    """The scored images in queue order, with what the greedy pick needs per image."""

    scores: pa.Table  # image_scores sorted by (rank, image_id)
    image_ids: list[int]
    classes: list[int | None]  # top label id; None = no detections (its own class)
    prediction_rows: np.ndarray  # row of each candidate in predictions


def select_queue(
    image_scores: pa.Table,
    predictions: pa.Table,
    *,
    size: int,
    max_per_class: int | None = None,
    exclude_image_ids: Iterable[int] = (),
    duplicates: Mapping[int, int] | None = None,
    order: Sequence[int] | None = None,
    max_boxes: int | None = None,
    soft_cap: bool = False,
) -> pa.Table:
    """Pick up to ``size`` images to label, most uncertain first (LABELING_QUEUE rows).

    ``image_scores`` is one IMAGE_SCORES ranking; ``predictions`` the DETECTIONS of the same
    model version (for the labels of each image). ``exclude_image_ids`` are images already
    labeled. ``duplicates`` maps image_id -> near-duplicate cluster id (``duplicate_clusters``);
    a cluster contributes only its most uncertain member, and none at all when one of its
    members is excluded, since labeling a copy of a labeled image teaches the model nothing.
    ``soft_cap``: when the class cap leaves the queue short, fill it with the capped images in
    order (a strategy's cap balances a batch; it should not shrink it).
    ``max_boxes``: a budget in boxes (what labeling costs by the box): images whose predicted
    boxes would overrun it are skipped, so the queue holds at most that many predicted boxes.
    ``order`` (image ids, a permutation of ``image_scores``') replaces rank order as the order of
    consideration (the diversity order); the queue keeps each image's uncertainty rank.
    Images without detections form their own class under ``max_per_class``. When fewer
    images are eligible than ``size``, the queue is simply shorter: padding it with ineligible
    images would defeat the filters.
    """
    _check_arguments(image_scores, predictions, size, max_per_class)
    summary = label_summary(predictions)
    candidates = _candidates(image_scores, predictions, summary, order)
    excluded = {int(i) for i in exclude_image_ids}
    blocked = {duplicates[i] for i in excluded if i in duplicates} if duplicates else set()
    picks = _greedy(candidates, size, max_per_class, excluded, duplicates, blocked, max_boxes)
    if soft_cap and max_per_class is not None and len(picks) < size:
        picks = _greedy(candidates, size, None, excluded, duplicates, blocked, max_boxes,
                        first=picks)
    return _queue_table(candidates, picks, summary, duplicates)


def _check_arguments(
    image_scores: pa.Table, predictions: pa.Table, size: int, max_per_class: int | None
) -> None:
    if size < 1:
        raise ValueError(f"queue size must be >= 1, got {size}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None (no cap), got {max_per_class}")
    require_columns(image_scores, SCORE_COLUMNS, "image_scores", "IMAGE_SCORES")
    require_columns(predictions, PREDICTION_COLUMNS, "predictions", "DETECTIONS")
    for name in ("measure", "agg"):
        if len(pc.unique(image_scores.column(name))) > 1:
            raise ValueError(
                f"image_scores mixes several values of {name!r}; ranks only compare within one "
                "ranking, so select from one measure/aggregation at a time"
            )


def label_summary(predictions: pa.Table) -> LabelSummary:
    """Top and distinct labels of every prediction row, by vectorized group-bys.

    The top label is the most frequent ``label_id``; ties go to the label with the highest
    single detection score, then to the lowest id, so that the result never depends on order.
    """
    detections = predictions.column("detections").combine_chunks()
    n = len(detections)
    flat = pc.list_flatten(detections)
    image = pc.list_parent_indices(detections).to_numpy().astype(np.int64)
    label = pc.struct_field(flat, "label_id").to_numpy().astype(np.int64)
    score = pc.struct_field(flat, "score").to_numpy().astype(np.float64)
    pair_image, pair_label, pair_count, pair_best = _label_pairs(image, label, score)
    top, has_top = np.zeros(n, np.int64), np.zeros(n, bool)
    if pair_image.size:
        best = np.lexsort((pair_label, -pair_best, -pair_count, pair_image))
        first = best[np.r_[True, pair_image[best][1:] != pair_image[best][:-1]]]
        top[pair_image[first]], has_top[pair_image[first]] = pair_label[first], True
    offsets = np.r_[0, np.cumsum(np.bincount(pair_image, minlength=n))]
    return LabelSummary(top, has_top, offsets, pair_label)


def _label_pairs(
    image: np.ndarray, label: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (image, label) pairs sorted by image then label, with count and best score."""
    if image.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0)
    order = np.lexsort((label, image))
    image, label, score = image[order], label[order], score[order]
    starts = np.flatnonzero(np.r_[True, (image[1:] != image[:-1]) | (label[1:] != label[:-1])])
    counts = np.diff(np.r_[starts, image.size])
    return image[starts], label[starts], counts, np.maximum.reduceat(score, starts)


def _candidates(
    image_scores: pa.Table, predictions: pa.Table, summary: LabelSummary,
    order: Sequence[int] | None = None,
) -> _Candidates:
    scores = image_scores.sort_by([("rank", "ascending"), ("image_id", "ascending")])
    if order is not None:
        position = {int(i): k for k, i in enumerate(scores["image_id"].to_pylist())}
        if sorted(position) != sorted(int(i) for i in order):
            raise ValueError("order must list exactly the image ids of image_scores")
        scores = scores.take(pa.array([position[int(i)] for i in order], pa.int64()))
    ids = scores.column("image_id").to_numpy().astype(np.int64)
    rows = _prediction_rows(predictions, ids)
    _check_detection_counts(scores, predictions, rows, ids)
    has_top, top = summary.has_top[rows], summary.top[rows]
    classes = [int(t) if h else None for t, h in zip(top.tolist(), has_top.tolist())]
    return _Candidates(scores, ids.tolist(), classes, rows)


def _prediction_rows(predictions: pa.Table, ids: np.ndarray) -> np.ndarray:
    """Row in ``predictions`` of each scored image id; every one must be there exactly once."""
    _check_unique(ids, "image_scores", "one ranking lists each image once")
    predicted = predictions.column("image_id").to_numpy().astype(np.int64)
    _check_unique(predicted, "predictions", "pass the predictions of one model version")
    sorter = np.argsort(predicted, kind="stable")
    found = np.minimum(np.searchsorted(predicted, ids, sorter=sorter), max(predicted.size - 1, 0))
    missing = ~(predicted[sorter[found]] == ids) if predicted.size else np.ones(ids.size, bool)
    if missing.any():
        raise ValueError(
            f"image_scores ranks image_id {ids[np.argmax(missing)]}, which has no row in "
            "predictions; pass the predictions the scores were computed from"
        )
    return sorter[found] if ids.size else np.zeros(0, np.int64)


def _check_unique(ids: np.ndarray, what: str, hint: str) -> None:
    ordered = np.sort(ids)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.size:
        raise ValueError(f"{what} lists image_id {repeated[0]} more than once; {hint}")


def _check_detection_counts(
    scores: pa.Table, predictions: pa.Table, rows: np.ndarray, ids: np.ndarray
) -> None:
    """Scores and predictions of different model versions would silently mislabel the queue."""
    lengths = pc.list_value_length(predictions.column("detections")).to_numpy(
        zero_copy_only=False
    )
    expected = scores.column("n_detections").to_numpy().astype(np.int64)
    differ = lengths[rows].astype(np.int64) != expected if rows.size else np.zeros(0, bool)
    if differ.any():
        i = int(np.argmax(differ))
        raise ValueError(
            f"image_id {ids[i]} has {expected[i]} detections in image_scores but "
            f"{lengths[rows[i]]} in predictions; pass tables of the same model version, with "
            "detections below the scores' min_score removed (confident_detections)"
        )


def _greedy(
    candidates: _Candidates,
    size: int,
    max_per_class: int | None,
    excluded: set[int],
    duplicates: Mapping[int, int] | None,
    blocked_clusters: set[int],
    max_boxes: int | None = None,
    first: list[int] | None = None,
) -> list[int]:
    """Positions (in candidate order) of the picked images; stops as soon as ``size`` are.
    ``first``: positions already picked (kept, counted, and their clusters taken)."""
    picks: list[int] = list(first or [])
    per_class: Counter[int | None] = Counter()
    seen_clusters = set(blocked_clusters)
    boxes = candidates.scores["n_detections"].to_pylist() if max_boxes is not None else None
    spent = sum(boxes[p] for p in picks) if boxes is not None else 0
    for p in picks:
        cluster = duplicates.get(candidates.image_ids[p]) if duplicates else None
        if cluster is not None:
            seen_clusters.add(cluster)
    taken = set(picks)
    for position, image_id in enumerate(candidates.image_ids):
        if len(picks) >= size:
            break
        if image_id in excluded or position in taken:
            continue
        if boxes is not None and spent + boxes[position] > max_boxes:
            continue
        cluster = duplicates.get(image_id) if duplicates else None
        if cluster is not None:
            if cluster in seen_clusters:
                continue
            seen_clusters.add(cluster)  # its first member decides for the whole cluster
        label = candidates.classes[position]
        if max_per_class is not None and per_class[label] >= max_per_class:
            continue
        per_class[label] += 1
        spent += boxes[position] if boxes is not None else 0
        picks.append(position)
    return picks


def _queue_table(
    candidates: _Candidates,
    picks: list[int],
    summary: LabelSummary,
    duplicates: Mapping[int, int] | None,
) -> pa.Table:
    chosen = candidates.scores.take(pa.array(picks, pa.int64()))
    rows = candidates.prediction_rows[picks] if picks else np.zeros(0, np.int64)
    labels = [summary.labels[summary.offsets[r]:summary.offsets[r + 1]].tolist() for r in rows]
    top = [candidates.classes[p] for p in picks]
    return pa.Table.from_arrays(
        [
            pa.array(np.arange(1, len(picks) + 1, dtype=np.int64)),
            chosen.column("image_id").cast(pa.int64()),
            chosen.column("uri").cast(pa.string()),
            chosen.column("measure").cast(pa.string()),
            chosen.column("agg").cast(pa.string()),
            chosen.column("uncertainty").cast(pa.float64()),
            chosen.column("n_detections").cast(pa.int32()),
            pa.array(top, pa.int32()),
            pa.array(labels, pa.list_(pa.int32())),
            chosen.column("rank").cast(pa.int64()),
            pa.array(_reasons(chosen, duplicates), pa.string()),
        ],
        schema=LABELING_QUEUE,
    )


def _reasons(chosen: pa.Table, duplicates: Mapping[int, int] | None) -> list[str]:
    duplicates = duplicates or {}
    cluster_sizes = Counter(duplicates.values())
    has_top_k = "top_k" in chosen.column_names
    reasons = []
    for row in chosen.to_pylist():
        cluster = duplicates.get(row["image_id"])
        reasons.append(reason_text(
            row["measure"], row["agg"], row["uncertainty"], row["n_detections"],
            top_k=row["top_k"] if has_top_k else None,
            n_duplicates=cluster_sizes[cluster] - 1 if cluster is not None else 0,
        ))
    return reasons


UNRANKED = ("random", "typical")
"""Strategies whose order is not the uncertainty's (a shuffle, k-means clusters)."""


def reason_text(
    measure: str, agg: str, uncertainty: float | None, n_detections: int, *,
    top_k: int | None = None, n_duplicates: int = 0,
) -> str:
    """Why an image is in the queue, for the person labeling it: "entropy max 0.93 over 4 boxes"."""
    if uncertainty is None or n_detections == 0:
        text = "no detections (placed by the empty-image policy)"
    else:
        how = f"top-{top_k} mean" if agg == "topk_mean" and top_k else agg
        boxes = "box" if n_detections == 1 else "boxes"
        text = f"{measure} {how} {uncertainty:.2f} over {n_detections} {boxes}"
        if measure in UNRANKED:  # picked by order or cluster: the value is only a description
            text = (f"{measure} pick; uncertainty {how} {uncertainty:.2f} over {n_detections} "
                    f"{boxes}")
    if n_duplicates > 0:
        copies = "near-duplicate" if n_duplicates == 1 else "near-duplicates"
        text += f"; stands for {n_duplicates} {copies}"
    return text
