"""One selection path: a ranking of the pool -> the images to label next (LABELING_QUEUE).

The labeling queue asset (through :func:`select_from_store`) and the simulation both call
:func:`select_batch`; the ranking they
pass comes from :func:`rank_images` (per shard in the pipeline, over the unlabeled pool in the
simulation), which is the pipeline's own scoring: ``box_scores`` -> noise floor ->
``aggregate_images``. ``random`` is a strategy like the others (a seeded random ranking through
the same class cap, de-duplication and exclusions), so the baseline differs only by its order.

A strategy (``STRATEGIES``) composes four ideas, each one function used by the queue and the
simulation alike:

* a box uncertainty measure aggregated per image (``MEASURES``; ``ScoringSettings.agg``);
* class weights on box uncertainty (``class_weights``): *calibrated* by the champion's per-class
  difficulty, 1 - AP on the held-out split (PPAL's difficulty-calibrated sampling), and/or
  *rare*: toward classes with few labeled boxes (class balancing). Weights re-score a wide head
  of the plain ranking (``WEIGHTED_FACTOR`` x size), because shard rankings are written before
  the labels and evaluation they depend on exist. *soft* weights take each box's weight as
  the expectation over its two most likely classes rather than its top class's, so that a
  rare class the detector has not learned to predict still draws boxes where it is runner-up;
* *diverse*: greedy k-center over the detector's image embeddings among the top candidates
  (``queue.diversity.farthest_first``; linear memory);
* *typical*: one image per k-means cluster of the embeddings, its densest member, over a
  uniform sample of the pool (``queue.typicality``, TypiClust): no uncertainty at all, for the
  cold start, when the class head has seen too few labels for its uncertainty to mean much;
* a class cap: at most ``CLASS_CAP`` of a batch per predicted top class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.defaults import DEFAULT_AGG
from al_assets.core.options import option
from al_assets.core.prediction.arrow import confident_detections
from al_assets.core.queue.diversity import farthest_first
from al_assets.core.queue.selection import select_queue
from al_assets.core.queue.typicality import typical_order
from al_assets.core.scoring.aggregation import aggregate_images
from al_assets.core.scoring.box_scores import box_scores
from al_assets.core.defaults import DEFAULT_MIN_SCORE
from al_assets.core.scoring.views import confident, rerank

MEASURES = ("least_confidence", "margin", "ratio", "entropy")
"""Ranking measures of image_rankings (a BOX_SCORES measure each, aggregated per image)."""
RANDOM = "random"
CANDIDATE_FACTOR = 5
"""Eligible candidates per queue slot before class caps, de-duplication and diversity thin them."""
WEIGHTED_FACTOR = 20
"""Eligible images per slot re-scored with class weights (a wide head of the plain ranking)."""
TYPICAL_FACTOR = 20
"""Eligible images per slot in the uniform sample ``typical`` clusters (bounds its memory)."""
CLASS_CAP = 0.4
"""A capped strategy takes at most this share of a batch (rounded up) per predicted top class."""
WEIGHT_RANGE = (0.25, 4.0)
"""Class weights are clipped here: one class's AP of 0 or a class never labeled must not let a
single class take the whole batch (the cap and diversity still act after the weights)."""


@dataclass(frozen=True)
class Strategy:
    """How a strategy ranks and picks; see the module docstring."""

    measure: str = "entropy"  # a MEASURES name
    random: bool = False  # a seeded random order instead of the measure's
    calibrated: bool = False  # weight boxes by their class's difficulty (1 - champion AP)
    rare: bool = False  # weight boxes toward classes with few labeled boxes
    soft: bool = False  # a box's weight: expected over its top-2 classes, not its top class's
    diverse: bool = False  # k-center over image embeddings among the top candidates
    capped: bool = False  # at most CLASS_CAP of the batch per predicted top class
    typical: bool = False  # k-means typicality over a uniform sample of the pool (with random)


STRATEGIES: dict[str, Strategy] = {
    **{m: Strategy(m) for m in MEASURES},
    RANDOM: Strategy(random=True),
    "calibrated": Strategy(calibrated=True),
    "balanced": Strategy(rare=True, capped=True),
    "diverse": Strategy(diverse=True),
    "typical": Strategy(random=True, typical=True),
    "default": Strategy(calibrated=True, rare=True, diverse=True, capped=True),
    "soft": Strategy(calibrated=True, rare=True, soft=True, diverse=True, capped=True),
}
"""Named strategies; ``default`` is the queue's (docs/active-learning.md measured why)."""
DEFAULT_STRATEGY = "default"


@dataclass(frozen=True)
class SelectionConfig:
    """How the next batch is picked; the queue asset's config and the simulation share it."""

    strategy: str = option(DEFAULT_STRATEGY, "a STRATEGIES name: least_confidence | margin | "
                           "ratio | entropy | random | calibrated | balanced | diverse | typical "
                           "| default (calibrated + rare-class weights, then k-center diversity, "
                           "with a class cap; docs/active-learning.md) | soft (default with "
                           "each box weighted over its top-2 classes)")
    size: int = option(50, "images per labeling batch")
    max_boxes: int | None = option(None, "a budget in boxes as well: at most this many "
                                   "predicted boxes in the batch")
    max_per_class: int | None = option(None, "class balancing: at most this many images per "
                                       "(most frequent) predicted class")
    deduplicate: bool = option(True, "skip near-identical images: of a near-duplicate cluster "
                               "(difference hash) only its best member competes")
    dedup_distance: int = option(4, "dHash bits within which two images are near-duplicates")
    exclude_labeled: bool = option(True, "skip images that already have labels (ingested or "
                                   "imported); held-out ones always are")
    seed: int = option(0, "seed of the random strategy's order (and typical's sample and "
                       "k-means)")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {list(STRATEGIES)}")
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")

    @property
    def plan(self) -> Strategy:
        return STRATEGIES[self.strategy]

    @property
    def measure(self) -> str:
        """The ranking a random strategy reshuffles is any measure's: entropy's by convention."""
        return self.plan.measure

    def class_cap(self) -> int | None:
        """The explicit ``max_per_class``, else the strategy's cap (None: no cap)."""
        if self.max_per_class is not None or not self.plan.capped:
            return self.max_per_class
        return max(1, math.ceil(CLASS_CAP * self.size))


@dataclass(frozen=True)
class ScoringSettings:
    """Per-image aggregation, shared by shard scoring and the simulation."""

    agg: str = option(DEFAULT_AGG, "per-image aggregation of box uncertainties: max | mean | "
                      "sum | topk_mean")
    top_k: int = option(3, "k of topk_mean")
    empty_images: str = option("lowest", "images without detections: lowest (certain) | "
                               "highest (worth a look) | exclude")
    min_score: float = option(DEFAULT_MIN_SCORE, "boxes below this detector score are noise, not "
                              "aggregated (box_scores keeps them all)")


def rank_images(
    predictions: pa.Table, settings: ScoringSettings = ScoringSettings(),
    measures: Iterable[str] = MEASURES,
) -> tuple[pa.Table, pa.Table]:
    """(BOX_SCORES of every box, IMAGE_SCORES ranked per measure) of DETECTIONS rows."""
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
    class_weights: Mapping[int, float] | None = None,
    labeled_embeddings: np.ndarray | None = None,
) -> pa.Table:
    """The next labeling batch (LABELING_QUEUE) from pool rankings (IMAGE_SCORES).

    ``predictions_of(image_ids)`` returns those images' DETECTIONS with detections under the
    noise floor removed (the ones the scores were computed from); ``excluded`` are ids never to
    offer (held-out images, and labeled ones when ``exclude_labeled``); ``hashes_of(candidates)``
    gives image_id -> dHash for de-duplication; ``class_weights`` (``class_weights()``) are used
    by calibrated/rare strategies, which re-score the head of the ranking with them;
    ``labeled_embeddings`` (the labeled images' DETECTIONS.embedding rows) tell ``typical``
    which regions the labels cover. Candidates
    are read down the ranking until enough eligible images are in, excluded ones included, so
    that a near-duplicate of an excluded image is recognised as such.
    """
    plan = config.plan
    ranking = _ranking(rankings, config)
    blocked = {int(i) for i in excluded}
    weighted = bool(class_weights) and (plan.calibrated or plan.rare) and not plan.random
    factor = TYPICAL_FACTOR if plan.typical else WEIGHTED_FACTOR if weighted else CANDIDATE_FACTOR
    candidates = _candidate_window(ranking, blocked, config.size * factor)
    predictions = predictions_of(candidates["image_id"].combine_chunks())
    if weighted:
        candidates = _reweighted(candidates, predictions, class_weights, soft=plan.soft)
        candidates = _candidate_window(candidates, blocked, config.size * CANDIDATE_FACTOR)
    duplicates = None
    if config.deduplicate and hashes_of is not None and candidates.num_rows:
        from al_assets.core.queue.dedup import duplicate_clusters

        duplicates = duplicate_clusters(dict(hashes_of(candidates)),
                                        max_distance=config.dedup_distance)
    order = None
    if plan.diverse or plan.typical:
        order = _embedding_order(candidates, predictions, blocked, config, labeled_embeddings)
    return select_queue(candidates, predictions, size=config.size,
                        max_per_class=config.class_cap(), exclude_image_ids=blocked,
                        duplicates=duplicates, order=order, max_boxes=config.max_boxes,
                        soft_cap=config.max_per_class is None)


@dataclass(frozen=True)
class QueueSelection:
    """What the labeling queue asset writes and reports."""

    queue: pa.Table  # LABELING_QUEUE rows
    predictions: pa.Table  # the queue's DETECTIONS rows over the noise floor (for the exports)
    eligible: int  # ranked, non-excluded images: the most the queue could hold


def select_from_store(
    rankings: pa.Table,
    read_predictions: Callable[[pa.Array], pa.Table],
    config: SelectionConfig,
    *,
    excluded: set[int],
    min_score: float,
    hashes_of: Callable[[pa.Table], Mapping[int, int]] | None = None,
    class_weights: Mapping[int, float] | None = None,
    labeled_embeddings: np.ndarray | None = None,
) -> QueueSelection:
    """``select_batch`` over stored predictions: ``read_predictions(image_ids)`` returns the
    stored DETECTIONS rows of those images; they are read once (only the candidates') and the
    noise floor applied as shard scoring applied it, so the exports use the same boxes."""
    read: dict[str, pa.Table] = {}

    def candidates(ids: pa.Array) -> pa.Table:
        read["rows"] = confident_detections(read_predictions(ids), min_score)
        return read["rows"]

    queue = select_batch(rankings, candidates, config, excluded=excluded, hashes_of=hashes_of,
                         class_weights=class_weights, labeled_embeddings=labeled_embeddings)
    rows = read["rows"]
    predictions = rows.filter(pc.is_in(rows["image_id"], queue["image_id"].combine_chunks()))
    return QueueSelection(queue, predictions, eligible_images(rankings, config, excluded))


def eligible_images(rankings: pa.Table, config: SelectionConfig, excluded: set[int]) -> int:
    """Ranked images of the strategy's measure that are not excluded."""
    ranked = rankings.filter(pc.equal(rankings["measure"], config.measure))["image_id"]
    blocked = pa.array(sorted(excluded), pa.int64())
    return int(pc.sum(pc.invert(pc.is_in(ranked, blocked))).as_py() or 0)


def class_ap_of(evaluation: pa.Table, model_version: str) -> dict[int, float | None]:
    """category_id -> AP of ``model_version`` in MODEL_EVALUATION rows (the calibrated
    strategies' difficulty); {} when that version was not evaluated."""
    rows = evaluation.filter(pc.and_(pc.equal(evaluation["model_version"], model_version),
                                     pc.is_valid(evaluation["category_id"])))
    return dict(zip(rows["category_id"].to_pylist(), rows["ap"].to_pylist(), strict=True))


def class_weights(
    plan: Strategy, category_ids: Iterable[int], *,
    class_ap: Mapping[int, float | None] | None = None,
    labeled_boxes: Mapping[int, int] | None = None,
) -> dict[int, float]:
    """Per category weight on box uncertainty for a calibrated and/or rare strategy.

    calibrated: difficulty ``1 - AP`` of the champion on the held-out split, relative to the
    mean difficulty (a class without AP gets the mean); rare: ``sqrt((mean + 1) / (n_c + 1))``
    over labeled boxes per class. Both multiply, clipped to ``WEIGHT_RANGE``; {} = unweighted.
    """
    if not (plan.calibrated or plan.rare):
        return {}
    ids = [int(c) for c in category_ids]
    weights = dict.fromkeys(ids, 1.0)
    if plan.calibrated and class_ap:
        known = {c: 1.0 - float(ap) for c, ap in class_ap.items() if ap is not None and c in weights}
        mean = float(np.mean(list(known.values()))) if known else 0.0
        if mean > 0:
            for c in ids:
                weights[c] *= known.get(c, mean) / mean
    if plan.rare and labeled_boxes is not None:
        counts = np.array([labeled_boxes.get(c, 0) for c in ids], np.float64)
        rarity = np.sqrt((counts.mean() + 1.0) / (counts + 1.0))
        for c, r in zip(ids, rarity.tolist(), strict=True):
            weights[c] *= r
    low, high = WEIGHT_RANGE
    return {c: float(np.clip(w, low, high)) for c, w in weights.items()}


def labeled_box_counts(annotations: pa.Table) -> dict[int, int]:
    """category_id -> labeled non-crowd boxes (ANNOTATIONS rows): what "rare" is measured on."""
    boxes = annotations.filter(pc.invert(annotations["iscrowd"]))["category_id"]
    return {int(c["values"]): int(c["counts"]) for c in pc.value_counts(boxes).to_pylist()}


def _reweighted(candidates: pa.Table, predictions: pa.Table, weights: Mapping[int, float],
                *, soft: bool = False) -> pa.Table:
    """The window re-ranked by class-weighted uncertainty, with the measure, aggregation and
    empty-image placement the ranking itself was computed with (read from its rows)."""
    if candidates.num_rows == 0:
        return candidates
    first = candidates.slice(0, 1).to_pylist()[0]
    return aggregate_images(box_scores(predictions), predictions.select(["image_id", "uri"]),
                            measure=first["measure"], agg=first["agg"],
                            top_k=first["top_k"] or ScoringSettings.top_k,
                            empty_images=written_placement([candidates])
                            or ScoringSettings.empty_images, class_weights=weights,
                            soft_weights=soft)


def _embedding_order(candidates: pa.Table, predictions: pa.Table, blocked: set[int],
                     config: SelectionConfig, labeled: np.ndarray | None) -> list[int] | None:
    """Eligible candidates in farthest-first order from the most uncertain one (``diverse``) or
    in typicality order away from the ``labeled`` embeddings (``typical``), then the blocked
    ones. Without embeddings ``diverse`` keeps the ranking (None); ``typical``, which has no
    other order, refuses."""
    if candidates.num_rows == 0:
        return None
    if "embedding" not in predictions.column_names:
        return _no_embeddings(config)
    ranked = candidates.sort_by([("rank", "ascending"), ("image_id", "ascending")])
    ids = [int(i) for i in ranked["image_id"].to_pylist()]
    eligible = [i for i in ids if i not in blocked]
    if not eligible:
        return None
    row_of = {int(i): k for k, i in enumerate(predictions["image_id"].to_pylist())}
    rows = predictions["embedding"].take(pa.array([row_of[i] for i in eligible], pa.int64()))
    if rows.null_count:
        return _no_embeddings(config)
    vectors = embedding_matrix(pa.table({"embedding": rows}))
    finite = np.isfinite(vectors).all(axis=1)
    if config.plan.typical and not finite.all():
        bad = eligible[int(np.flatnonzero(~finite)[0])]
        raise ValueError(f"image {bad}'s embedding is not finite: re-predict its shard")
    order = (typical_order(vectors, config.size, seed=config.seed, centers=labeled)
             if config.plan.typical else farthest_first(vectors, first=0))
    return [eligible[k] for k in order] + [i for i in ids if i in blocked]


def embedding_matrix(predictions: pa.Table) -> np.ndarray:
    """(n, d) float32 DETECTIONS.embedding of the rows that have one: the labeled images'
    embeddings ``typical`` reads to know which regions of the pool the labels cover."""
    rows = pc.drop_null(predictions["embedding"].combine_chunks())
    if len(rows) == 0:
        return np.zeros((0, 0), np.float32)
    flat = pc.list_flatten(rows).to_numpy(zero_copy_only=False)
    return flat.reshape(len(rows), -1).astype(np.float32)


def _no_embeddings(config: SelectionConfig) -> None:
    """``diverse`` keeps the ranking without embeddings; ``typical`` has no other order."""
    if config.plan.typical:
        raise ValueError("the typical strategy clusters the detector's image embeddings, but "
                         "these predictions have none: predict with a detector that gives "
                         "embeddings (SSD, Faster R-CNN) or pick another strategy")
    return None


def exclusions(splits: pa.Table, exclude_labeled: bool) -> set[int]:
    """Held-out images always; labeled images too when asked (SPLITS rows)."""
    mask = pc.equal(splits["split"], "heldout")
    if exclude_labeled:
        mask = pc.or_(mask, splits["labeled"])
    return set(splits.filter(mask)["image_id"].to_pylist())


def _ranking(rankings: pa.Table, config: SelectionConfig) -> pa.Table:
    ranked = rankings.filter(pc.equal(rankings["measure"], config.measure))
    if not config.plan.random or ranked.num_rows == 0:
        return ranked
    rng = np.random.default_rng(config.seed)
    ids = ranked["image_id"].to_numpy().astype(np.int64)
    order = np.argsort(ids, kind="stable")[rng.permutation(ids.size)]
    shuffled = ranked.take(pa.array(order))
    shuffled = shuffled.set_column(shuffled.schema.get_field_index("measure"), "measure",
                                   pa.array([config.strategy] * ids.size, pa.string()))
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


def pool_ranking(shard_rankings: Iterable[pa.Table], empty_images: str | None = None) -> pa.Table:
    """Shard rankings merged and re-ranked per measure (exact: an image lives in one shard).

    ``empty_images`` None: the policy the shards were scored with (``written_placement``), so
    that the pool-wide ranking never contradicts the shard scoring's setting."""
    shards = list(shard_rankings)
    placement = empty_images or written_placement(shards) or ScoringSettings.empty_images
    merged = pa.concat_tables(shards)
    return pa.concat_tables([
        rerank(merged.filter(pc.equal(merged["measure"], m)), empty_images=placement)
        for m in MEASURES
    ])


def written_placement(shard_rankings: Iterable[pa.Table]) -> str | None:
    """The ``empty_images`` policy shard rankings (IMAGE_SCORES) were written with, read from
    their order: ``highest`` puts images without detections first, ``lowest`` last. None when
    no shard holds both kinds (``exclude`` writes none). Shards that disagree (scored under
    different settings) are an error: ranking them together would be neither policy."""
    seen: set[str] = set()
    for shard in shard_rankings:
        if shard.num_rows == 0:
            continue
        first = shard.filter(pc.equal(shard["measure"], shard["measure"][0]))
        empty = first.sort_by("rank")["n_detections"].to_numpy() == 0
        if empty.any() and not empty.all():
            seen.add("highest" if empty[0] else "lowest")
    if len(seen) > 1:
        raise ValueError("shard rankings were scored with different empty_images settings "
                         "(highest and lowest): re-materialize box_scores and image_scores "
                         "(the scoring op) with one setting")
    return seen.pop() if seen else None
