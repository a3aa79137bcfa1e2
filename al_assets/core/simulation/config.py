"""What a simulation replays: ``SimulationConfig``, one field per setting with its help.

A light module (no torch): the CLI builds ``al-assets simulate``'s flags and the simulation
asset its run config from these fields (``core.options``), so neither copies them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from al_assets.core.defaults import DEFAULT_AGG, DEFAULT_ARCH, DEFAULT_MIN_SCORE
from al_assets.core.errors import AlAssetsError
from al_assets.core.options import option

DEFAULT_STRATEGIES = ("random", "entropy", "margin")
_POSITIVE_FIELDS = ("budget", "rounds", "initial_steps", "round_steps", "batch_size")


class SimulationError(AlAssetsError, ValueError):
    """A simulation that cannot run as configured (pool too small, bad split, bad image)."""


@dataclass(frozen=True)
class SimulationConfig:
    """What to replay; selection and scoring fields mean what they mean for the queue.

    The defaults are sized for the demo data on 2 CPU cores (about 7 training and 30 inference
    images/s): 2 x (250 + 3 strategies x 3 rounds x 50) steps of 8 images is about 25 min.
    """

    strategies: tuple[str, ...] = option(
        DEFAULT_STRATEGIES, "random | least_confidence | margin | ratio | entropy | calibrated | "
        "typical | balanced | diverse | default | soft (the queue's strategies)")
    seeds: tuple[int, ...] = option((0, 1), "one replay per seed and strategy")
    initial_size: int = option(20, "random seed set of round 0 (0 with a base split)")
    budget: int = option(20, "images labeled per round (the queue's size)")
    rounds: int = option(3, "selection rounds after round 0")
    initial_steps: int = option(250, "training steps of round 0 (from scratch, or from "
                                "start_checkpoint)")
    round_steps: int = option(50, "training steps of each later round, from the champion")
    batch_size: int = option(8, "training batch size")
    lr: float | None = option(None, "learning rate (none: train_detector's default)")
    arch: str = option(DEFAULT_ARCH, "torchvision detector trained from scratch in round 0")
    agg: str = option(DEFAULT_AGG, "per-image aggregation of box uncertainty: max | "
                      "mean | sum | topk_mean")
    min_score: float = option(DEFAULT_MIN_SCORE, "noise floor of the ranking (not of evaluation)")
    max_per_class: int | None = option(None, "the queue's class cap")
    deduplicate: bool = option(True, "the queue's near-duplicate (dHash) filter")
    min_improvement: float = option(0.0, "the gate's margin (0: promote whenever not worse)")
    n_boot: int = option(100, "bootstrap resamples of the held-out images per round")
    device: str = option("auto", "prediction, evaluation and training: auto | cpu | cuda | cuda:N")
    start_checkpoint: str | None = option(None, "round 0 fine-tunes this detector (none: from "
                                          "scratch)")
    cached_features: bool = option(False, "freeze start_checkpoint's backbone: head-only rounds "
                                   "on cached features")
    backbone_tail: bool = option(False, "with cached_features: also fine-tune the backbone "
                                 "after its first block (cache at stride 16)")
    fresh_classifier: bool = option(False, "round 0 gives start_checkpoint a new, untrained "
                                    "class head (backbone and box regressor kept), as teams "
                                    "do for their own classes: class scores come from the "
                                    "labels alone")

    def __post_init__(self) -> None:
        if self.initial_size < 0:
            raise SimulationError(f"initial_size must be >= 0, got {self.initial_size}")
        if self.cached_features and self.start_checkpoint is None:
            raise SimulationError("cached_features freezes a pretrained backbone: give "
                                  "start_checkpoint too")
        for name in _POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise SimulationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.strategies or not self.seeds:
            raise SimulationError("give at least one strategy and one seed")
        for name, values in (("strategies", self.strategies), ("seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise SimulationError(f"{name} {values} must not repeat")
        from al_assets.core.loop.selection import STRATEGIES  # torch: only when validating

        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise SimulationError(f"unknown strategies {unknown}; use {list(STRATEGIES)}")
        from al_assets.core.scoring.aggregation import AGGREGATIONS

        if self.agg not in AGGREGATIONS:  # before round 0 trains, not after it
            raise SimulationError(f"unknown agg {self.agg!r}; use one of {list(AGGREGATIONS)}")
        if not 0.0 <= self.min_score < 1.0:
            raise SimulationError(f"min_score must be in [0, 1), got {self.min_score}")

    @property
    def final_size(self) -> int:
        return self.initial_size + self.rounds * self.budget

    def params(self, strategy: str, seed: int) -> dict[str, str]:
        """MLflow params of one run: this config with the run's own strategy and seed."""
        values = {k: v for k, v in asdict(self).items() if k not in ("strategies", "seeds")}
        return {"strategy": strategy, "seed": str(seed), **{k: str(v) for k, v in values.items()}}
