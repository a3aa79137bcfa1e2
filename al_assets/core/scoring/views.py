"""Pool-wide views over per-shard score tables, computed shard by shard in bounded memory.

The notebook's least-confidence / least-margin / entropy tables are "all detections, ordered,
limited": a running top-N over shards gives the same rows while holding only N + one shard.
Image rankings are exact per shard (an image lives in one shard), so the pool ranking is the
shard rankings merged and re-ranked.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.schemas import IMAGE_SCORES
from al_assets.core.scoring.aggregation import rank_order


DEFAULT_MIN_SCORE = 0.2
"""Detector score below which a box is background noise, not a detection to rank.

torchvision detectors keep up to 300 boxes per image down to score 0.001-0.01; most are
background whose foreground distribution is near uniform, so they top every uncertainty
measure and would fill the views, the queue and the confused pairs with noise."""


def confident(table: pa.Table, min_score: float) -> pa.Table:
    """The rows (detections) whose detector ``score`` is at least ``min_score``."""
    if min_score <= 0:
        return table
    return table.filter(pc.greater_equal(table["score"], pa.scalar(min_score, pa.float32())))


def top_rows(
    tables: Iterable[pa.Table], column: str, *, limit: int, descending: bool,
    tie_breakers: tuple[str, ...] = ("image_id", "det_index"),
) -> pa.Table | None:
    """The ``limit`` rows with the highest/lowest ``column`` across ``tables``, in order."""
    order = "descending" if descending else "ascending"
    keys = [(column, order)] + [(c, "ascending") for c in tie_breakers]
    best: pa.Table | None = None
    for table in tables:
        merged = table if best is None else pa.concat_tables([best, table])
        best = merged.take(pc.sort_indices(merged, sort_keys=keys)[:limit])
    return best


def rerank(image_scores: pa.Table, *, empty_images: str = "lowest") -> pa.Table:
    """Global ranks for shard rankings of one measure/agg (IMAGE_SCORES, sorted by rank)."""
    if image_scores.num_rows == 0:
        return image_scores.cast(IMAGE_SCORES)
    order = rank_order(
        image_scores["image_id"].to_numpy(),
        image_scores["uncertainty"].fill_null(0.0).to_numpy(),
        image_scores["n_detections"].to_numpy(),
        empty_images,
    )
    ranked = image_scores.take(pa.array(order))
    ranks = pa.array(np.arange(1, len(order) + 1, dtype=np.int64))
    return ranked.set_column(ranked.schema.get_field_index("rank"), "rank", ranks).cast(IMAGE_SCORES)
