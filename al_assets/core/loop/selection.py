"""One selection path: a ranking of the pool -> the images to label next (LABELING_QUEUE).

The labeling queue asset and the simulation both call :func:`select_batch`; the ranking they
pass comes from :func:`rank_images` (per shard in the pipeline, over the unlabeled pool in the
simulation), which is the pipeline's own scoring: ``box_scores`` -> noise floor ->
``aggregate_images``. ``random`` is a strategy like the others (a seeded random ranking through
the same class cap, de-duplication and exclusions), so the baseline differs only by its order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.queue.selection import select_queue
from al_assets.core.scoring.aggregation import aggregate_images
from al_assets.core.scoring.box_scores import box_scores
from al_assets.core.scoring.views import DEFAULT_MIN_SCORE, confident, rerank

MEASURES = ("least_confidence", "margin", "ratio", "entropy")
"""Ranking measures of image_rankings (a BOX_SCORES measure each, aggregated per image)."""
RANDOM = "random"
STRATEGIES = (*MEASURES, RANDOM)
CANDIDATE_FACTOR = 5
"""Eligible candidates per queue slot before class caps and de-duplication thin them out."""


@dataclass(frozen=True)
class SelectionConfig:
    """How the next batch is picked; the queue asset's config and the simulation share it."""

    strategy: str = "entropy"  # a MEASURES name, or "random"
    size: int = 50  # images per labeling batch
    max_per_class: int | None = None  # class balancing: at most this many per top class
    deduplicate: bool = True  # of a near-duplicate cluster only its best member competes
    dedup_distance: int = 4  # dHash bits within which two images are near-duplicates
    exclude_labeled: bool = True  # never offer an image that already has labels
    seed: int = 0  # the random strategy's ranking

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {list(STRATEGIES)}")
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")

    @property
    def measure(self) -> str:
        """The ranking a random strategy reshuffles is any measure's: entropy's by convention."""
        return "entropy" if self.strategy == RANDOM else self.strategy


@dataclass(frozen=True)
class ScoringSettings:
    """Per-image aggregation, shared by shard scoring and the simulation."""

    agg: str = "max"  # max | mean | sum | topk_mean
    top_k: int = 3  # k of topk_mean
    empty_images: str = "lowest"  # images without detections: lowest | highest | exclude
    min_score: float = DEFAULT_MIN_SCORE  # noise floor: boxes below it are not aggregated


def rank_images(
    predictions: pa.Table, settings: ScoringSettings = ScoringSettings(),
    measures: Iterable[str] = MEASURES,
) -> tuple[pa.Table, pa.Table]:
    """(BOX_SCORES of every box, IMAGE_SCORES ranked per measure) of PREDICTIONS rows."""
    boxes = box_scores(predictions)
    images = predictions.select(["image_id", "uri"])
    kept = confident(boxes, settings.min_score)
    ranked = pa.concat_tables([
        aggregate_images(kept, images, measure=m, agg=settings.agg, top_k=settings.top_k,
                         empty_images=settings.empty_images)
        for m in measures
    ])
    return boxes, ranked


def select_batch(
    rankings: pa.Table,
    predictions_of: Callable[[pa.Array], pa.Table],
    config: SelectionConfig,
    *,
    excluded: Iterable[int] = (),
    hashes_of: Callable[[pa.Table], Mapping[int, int]] | None = None,
) -> pa.Table:
    """The next labeling batch (LABELING_QUEUE) from pool rankings (IMAGE_SCORES).

    ``predictions_of(image_ids)`` returns those images' PREDICTIONS with detections under the
    noise floor removed (the ones the scores were computed from); ``excluded`` are ids never to
    offer (held-out images, and labeled ones when ``exclude_labeled``); ``hashes_of(candidates)``
    gives image_id -> dHash for de-duplication. Candidates are read down the ranking until
    ``size x CANDIDATE_FACTOR`` eligible images are in, excluded ones included, so that a
    near-duplicate of an excluded image is recognised as such.
    """
    ranking = _ranking(rankings, config)
    blocked = {int(i) for i in excluded}
    candidates = _candidate_window(ranking, blocked, config.size * CANDIDATE_FACTOR)
    predictions = predictions_of(candidates["image_id"].combine_chunks())
    duplicates = None
    if config.deduplicate and hashes_of is not None and candidates.num_rows:
        from al_assets.core.queue.dedup import duplicate_clusters

        duplicates = duplicate_clusters(dict(hashes_of(candidates)),
                                        max_distance=config.dedup_distance)
    return select_queue(candidates, predictions, size=config.size,
                        max_per_class=config.max_per_class, exclude_image_ids=blocked,
                        duplicates=duplicates)


def exclusions(splits: pa.Table, exclude_labeled: bool) -> set[int]:
    """Held-out images always; labeled images too when asked (SPLITS rows)."""
    mask = pc.equal(splits["split"], "heldout")
    if exclude_labeled:
        mask = pc.or_(mask, splits["labeled"])
    return set(splits.filter(mask)["image_id"].to_pylist())


def _ranking(rankings: pa.Table, config: SelectionConfig) -> pa.Table:
    ranked = rankings.filter(pc.equal(rankings["measure"], config.measure))
    if config.strategy != RANDOM or ranked.num_rows == 0:
        return ranked
    rng = np.random.default_rng(config.seed)
    ids = ranked["image_id"].to_numpy().astype(np.int64)
    order = np.argsort(ids, kind="stable")[rng.permutation(ids.size)]
    shuffled = ranked.take(pa.array(order))
    shuffled = shuffled.set_column(shuffled.schema.get_field_index("measure"), "measure",
                                   pa.array([RANDOM] * ids.size, pa.string()))
    ranks = pa.array(np.arange(1, ids.size + 1, dtype=np.int64))
    return shuffled.set_column(shuffled.schema.get_field_index("rank"), "rank", ranks)


def _candidate_window(ranking: pa.Table, blocked: set[int], wanted: int) -> pa.Table:
    """The ranking's head that holds ``wanted`` eligible images (or all of it)."""
    ranking = ranking.sort_by([("rank", "ascending"), ("image_id", "ascending")])
    ids = ranking["image_id"].to_numpy().astype(np.int64)
    eligible = ~np.isin(ids, np.fromiter(blocked, np.int64, len(blocked)))
    reached = np.flatnonzero(np.cumsum(eligible) >= wanted)
    end = int(reached[0]) + 1 if reached.size else ids.size
    return ranking.slice(0, end)


def pool_ranking(shard_rankings: Iterable[pa.Table], empty_images: str = "lowest") -> pa.Table:
    """Shard rankings merged and re-ranked per measure (exact: an image lives in one shard)."""
    merged = pa.concat_tables(list(shard_rankings))
    return pa.concat_tables([
        rerank(merged.filter(pc.equal(merged["measure"], m)), empty_images=empty_images)
        for m in MEASURES
    ])
