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


def confident(table: pa.Table, min_score: float) -> pa.Table:
    """The rows (detections) whose detector ``score`` is at least ``min_score``."""
    if min_score <= 0:
        return table
    return table.filter(pc.greater_equal(table["score"], pa.scalar(min_score, pa.float32())))


def score_at_least(min_score: float) -> pc.Expression | None:
    """``confident`` as a predicate for ``TableStore.read(where=...)``: the noise floor applied
    while reading, so the boxes below it are never all decoded into one table (None: keep all)."""
    if min_score <= 0:
        return None
    return pc.field("score") >= pa.scalar(min_score, pa.float32())


def score_bands(boxes: pa.Table, min_score: float) -> list[pa.Table]:
    """BOX_SCORES split into the rows at or above ``min_score`` and the rest (each in its own
    order): written as separate row groups, a read with ``score_at_least(min_score)`` skips
    every group of the second band by its statistics, without decoding it."""
    if min_score <= 0:
        return [boxes]
    above = pc.greater_equal(boxes["score"], pa.scalar(min_score, pa.float32()))
    bands = [boxes.filter(above), boxes.filter(pc.invert(above))]
    return [band for band in bands if band.num_rows]


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
