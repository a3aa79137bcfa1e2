"""How a simulated round picks the images to label next: at random, by uncertainty, or by
uncertainty spread out over image content.

Uncertainty strategies rank images with the production scoring path (``box_scores`` then
``aggregate_images``), so the simulation measures the ranking the labeling queue would really
produce, not a re-implementation of it. The diversity variant answers a known failure of pure
uncertainty sampling on real pools: the top of the ranking is often a burst of near-identical
frames, and labeling all of them buys one image's worth of information. It takes the top
``candidates_factor * budget`` uncertain images and picks ``budget`` of them greedily farthest
(k-center) in dHash Hamming distance from each other and from the already-labeled images.

Strategy names: ``random`` or ``<measure>[_diverse][:<agg>]`` with a measure of
``MEASURES`` and an aggregation of ``aggregate_images`` (default ``max``), e.g. ``entropy``,
``margin:sum``, ``entropy_diverse``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from al_assets.core.scoring.aggregation import AGGREGATIONS, aggregate_images
from al_assets.core.scoring.box_scores import box_scores

MEASURES = ("least_confidence", "margin", "ratio", "entropy")
"""Strategy measure -> the ``aggregate_images`` measure of the same name."""
RANDOM = "random"
DIVERSE_SUFFIX = "_diverse"
DEFAULT_AGG = "max"
HASH_BITS = 64  # dhash(hash_size=8), the dedup module's default


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy name; ``measure`` is None for random sampling."""

    name: str
    measure: str | None = None
    agg: str = DEFAULT_AGG
    diverse: bool = False

    @property
    def needs_predictions(self) -> bool:
        """Random sampling never looks at the model, so it skips the pool prediction."""
        return self.measure is not None


def parse_strategy(spec: str) -> Strategy:
    """``random`` or ``<measure>[_diverse][:<agg>]``; a ValueError lists the valid choices."""
    text = spec.strip()
    if text == RANDOM:
        return Strategy(RANDOM)
    base, _, agg = text.partition(":")
    agg = agg or DEFAULT_AGG
    diverse = base.endswith(DIVERSE_SUFFIX)
    measure = base[: -len(DIVERSE_SUFFIX)] if diverse else base
    if measure not in MEASURES or agg not in AGGREGATIONS:
        raise ValueError(
            f"unknown strategy {spec!r}: use 'random' or '<measure>[_diverse][:<agg>]' with a "
            f"measure of {list(MEASURES)} and an agg of {list(AGGREGATIONS)} "
            f"(default {DEFAULT_AGG})"
        )
    return Strategy(text, measure, agg, diverse)


def select_random(unlabeled_ids: Sequence[int], budget: int, rng: np.random.Generator) -> list[int]:
    """``budget`` ids drawn without replacement; the same rng state gives the same picks."""
    ids = np.sort(np.asarray(unlabeled_ids, dtype=np.int64))
    _check_budget(budget, len(ids))
    return [int(i) for i in rng.choice(ids, size=budget, replace=False)]


def uncertainty_ranking(predictions: pa.Table, measure: str, agg: str = DEFAULT_AGG) -> list[int]:
    """Image ids of ``predictions`` (PREDICTIONS rows), most uncertain first.

    Images without detections come last (``aggregate_images``' default): a detector that finds
    nothing gives no class uncertainty to rank by.
    """
    scores = box_scores(predictions)
    images = predictions.select(["image_id", "uri"])
    return aggregate_images(scores, images, measure=measure, agg=agg)["image_id"].to_pylist()


def select_uncertain(
    predictions: pa.Table, budget: int, measure: str, agg: str = DEFAULT_AGG
) -> list[int]:
    """The ``budget`` most uncertain images of ``predictions``."""
    _check_budget(budget, predictions.num_rows)
    return uncertainty_ranking(predictions, measure, agg)[:budget]


def select_spread_out(
    ranked_ids: Sequence[int],
    hashes: Mapping[int, int],
    budget: int,
    *,
    labeled_ids: Sequence[int] = (),
    candidates_factor: int = 3,
) -> list[int]:
    """k-center greedy in dHash space among the top ``candidates_factor * budget`` of a ranking.

    Each pick is the candidate farthest (fewest equal hash bits) from every labeled or already
    picked image; ties go to the more uncertain one. A near-duplicate of a pick is therefore
    taken only once no farther candidate is left.
    """
    _check_budget(budget, len(ranked_ids))
    if candidates_factor < 1:
        raise ValueError(f"candidates_factor must be >= 1, got {candidates_factor}")
    candidates = [int(i) for i in ranked_ids[: budget * candidates_factor]]
    words = _hash_array(candidates, hashes)
    nearest = _distance_to_set(words, _hash_array([i for i in labeled_ids if i in hashes], hashes))
    picks: list[int] = []
    for _ in range(budget):
        best = int(np.argmax(nearest))  # first maximum = most uncertain among the farthest
        picks.append(candidates[best])
        nearest = np.minimum(nearest, np.bitwise_count(words ^ words[best]))
        nearest[best] = -1
    return picks


def select_images(
    strategy: Strategy,
    budget: int,
    *,
    unlabeled_ids: Sequence[int],
    rng: np.random.Generator,
    predictions: pa.Table | None = None,
    hashes: Mapping[int, int] | None = None,
    labeled_ids: Sequence[int] = (),
    candidates_factor: int = 3,
) -> list[int]:
    """The images ``strategy`` labels next; ``predictions`` must cover exactly the unlabeled."""
    if not strategy.needs_predictions:
        return select_random(unlabeled_ids, budget, rng)
    if predictions is None:
        raise ValueError(f"strategy {strategy.name!r} needs the pool's predictions")
    _check_covers(predictions, unlabeled_ids, strategy.name)
    if not strategy.diverse:
        return select_uncertain(predictions, budget, strategy.measure, strategy.agg)
    if hashes is None:
        raise ValueError(f"strategy {strategy.name!r} needs the pool's dHash values")
    ranking = uncertainty_ranking(predictions, strategy.measure, strategy.agg)
    return select_spread_out(
        ranking, hashes, budget, labeled_ids=labeled_ids, candidates_factor=candidates_factor
    )


def _check_budget(budget: int, available: int) -> None:
    if budget < 1:
        raise ValueError(f"budget must be >= 1 image per round, got {budget}")
    if budget > available:
        raise ValueError(
            f"budget {budget} is more than the {available} unlabeled images left; lower the "
            "budget or the number of rounds, or use a larger pool"
        )


def _check_covers(predictions: pa.Table, unlabeled_ids: Sequence[int], name: str) -> None:
    """Selection must rank the unlabeled pool: never a labeled image, never a silent gap."""
    predicted = set(predictions["image_id"].to_pylist())
    expected = {int(i) for i in unlabeled_ids}
    if predicted != expected:
        extra, missing = sorted(predicted - expected)[:5], sorted(expected - predicted)[:5]
        raise ValueError(
            f"strategy {name!r}: predictions must cover exactly the unlabeled pool; "
            f"labeled or unknown image ids {extra}, unpredicted ids {missing} (an image that "
            "failed to decode must be removed from the pool)"
        )


def _hash_array(ids: Sequence[int], hashes: Mapping[int, int]) -> np.ndarray:
    missing = [i for i in ids if i not in hashes]
    if missing:
        raise ValueError(f"no dHash for image ids {missing[:5]}; hash every pool image first")
    values = [int(hashes[i]) for i in ids]
    bad = [v for v in values if v < 0 or v >= 1 << HASH_BITS]
    if bad:
        raise ValueError(f"dHash values must be {HASH_BITS}-bit (hash_size=8), got {bad[0]}")
    return np.array(values, dtype=np.uint64)


def _distance_to_set(words: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Hamming distance of each hash to its nearest center (HASH_BITS + 1 when none)."""
    if centers.size == 0:
        return np.full(words.shape, HASH_BITS + 1, dtype=np.int64)
    distances = np.bitwise_count(words[:, None] ^ centers[None, :]).astype(np.int64)
    return distances.min(axis=1)
