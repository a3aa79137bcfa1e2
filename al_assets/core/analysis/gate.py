"""Promotion gate: should a newly trained model version replace the current champion?

It reads a :func:`al_assets.core.analysis.evaluation.compare_predictions` result (mAP of both
versions on the same held-out labeled images, with a paired bootstrap interval of the
difference) and returns a decision with a one-sentence reason carrying the figures, so that a
report or a run log says *why* a version was or was not promoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from al_assets.core.options import option


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger replaces the champion.

    ``min_improvement`` is absolute mAP; ``require_significant`` also asks the lower end of
    the bootstrap interval of the difference to be above zero; below ``min_heldout_images``
    labeled held-out images the estimate is too noisy to promote anything.
    """

    min_improvement: float = option(0.005, "promote only when challenger mAP - champion mAP "
                                    "is at least this")
    require_significant: bool = option(False, "also require the bootstrap interval of the "
                                       "difference to lie above zero")
    min_heldout_images: int = option(20, "never promote on fewer labeled held-out images (too "
                                     "noisy to tell)")

    def __post_init__(self) -> None:
        if not self.min_improvement >= 0:  # also rejects NaN
            raise ValueError(
                f"min_improvement must be >= 0 (absolute mAP the challenger must gain), got "
                f"{self.min_improvement}; a negative margin would promote a worse model"
            )
        if self.min_heldout_images < 1:
            raise ValueError(
                f"min_heldout_images must be >= 1, got {self.min_heldout_images}"
            )


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def decide(comparison: dict, policy: GatePolicy) -> GateDecision:
    """Promote or keep, checked in order: ground truth, held-out size, champion, margin,
    significance; the first rule that fails gives the reason."""
    challenger = comparison["challenger"]["map"]
    champion = comparison.get("champion")
    count = int(comparison.get("num_images") or 0)
    if challenger is None:
        return GateDecision(False, f"no ground truth on the {count} held-out images: the "
                                   "challenger cannot be scored, champion kept")
    if count < policy.min_heldout_images:
        return GateDecision(False, (
            f"only {count} labeled held-out images (< min_heldout_images "
            f"{policy.min_heldout_images}): too noisy to promote, kept; label more held-out "
            "images or lower min_heldout_images"))
    if champion is None or champion.get("map") is None:
        return GateDecision(True, f"challenger mAP {challenger:.3f} on {count} held-out "
                                  "images, no champion to beat: promoted as the first model")
    return _against_champion(comparison, challenger, champion["map"], policy)


def per_class_deltas(comparison: dict, names: Mapping[int, str]) -> list[dict]:
    """Per-class AP of both versions, worst change first (classes without a delta last), so a
    report shows first what a promotion would cost."""
    champion = (comparison.get("champion") or {}).get("per_category") or {}
    rows = []
    for category_id, challenger_ap in comparison["challenger"]["per_category"].items():
        champion_ap = champion.get(category_id)
        delta = None if challenger_ap is None or champion_ap is None else (
            challenger_ap - champion_ap)
        rows.append({"category_id": category_id, "name": names.get(category_id, str(category_id)),
                     "champion_ap": champion_ap, "challenger_ap": challenger_ap, "delta": delta})
    return sorted(rows, key=lambda r: (r["delta"] is None, r["delta"] or 0.0, r["category_id"]))


def _against_champion(comparison: dict, challenger: float, champion: float,
                      policy: GatePolicy) -> GateDecision:
    delta = challenger - champion
    low, high = comparison.get("delta_low"), comparison.get("delta_high")
    figures = (f"challenger mAP {challenger:.3f} vs champion {champion:.3f} ({delta:+.3f}, "
               f"{_percent(comparison)} CI {_signed(low)}..{_signed(high)})")
    if delta < policy.min_improvement:
        return GateDecision(False, f"{figures} < margin {policy.min_improvement:g}: kept")
    if policy.require_significant and (low is None or low <= 0):
        return GateDecision(False, f"{figures} >= margin {policy.min_improvement:g} but not "
                                   "significant (interval not above 0): kept")
    return GateDecision(True, f"{figures} >= margin {policy.min_improvement:g}: promoted")


def _percent(comparison: dict) -> str:
    return f"{100 * float(comparison.get('confidence', 0.95)):g}%"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"
