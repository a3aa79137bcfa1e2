"""Evidence a reviewer accepts: paired tests over seeds, labels saved per seed, rare-class AP.

Every strategy of a seed starts from the same base model and labels, so seed s of a strategy and
seed s of random form a pair; the paired difference removes the seed-to-seed spread that the
curves' bands show. With 3 seeds a paired t-test has 2 degrees of freedom: it is reported with
the number of seeds where the strategy won, and small p-values need consistent gaps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa

from al_assets.core.simulation.report import BASELINE, labels_to_reach

PAIRED_TESTS = pa.schema([
    pa.field("strategy", pa.string(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),
    pa.field("labeled_images", pa.float64()),  # mean over seeds
    pa.field("seeds", pa.int32(), nullable=False),
    pa.field("mean_diff", pa.float64()),  # strategy mAP - random mAP, mean over seeds
    pa.field("std_diff", pa.float64()),
    pa.field("t", pa.float64()),
    pa.field("p_value", pa.float64()),  # two-sided paired t-test; null with one seed
    pa.field("wins", pa.int32(), nullable=False),  # seeds where the strategy is above random
])


def _curves(table: pa.Table) -> dict[tuple[str, int], list[dict]]:
    """(strategy, seed) -> rows sorted by round."""
    out: dict[tuple[str, int], list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault((row["strategy"], row["seed"]), []).append(row)
    return {k: sorted(v, key=lambda r: r["round"]) for k, v in out.items()}


def paired_tests(table: pa.Table, baseline: str = BASELINE) -> pa.Table:
    """Per strategy and round: paired mAP differences against ``baseline`` over seeds."""
    from scipy import stats

    curves = _curves(table)
    seeds = sorted({s for (_, s) in curves})
    rows = []
    for strategy in sorted({k for (k, _) in curves} - {baseline}):
        rounds = sorted({r["round"] for (k, _), v in curves.items() if k == strategy for r in v})
        for rnd in rounds:
            pairs = [(_at(curves, strategy, s, rnd), _at(curves, baseline, s, rnd)) for s in seeds]
            pairs = [(a, b) for a, b in pairs if a and b and a["map"] is not None
                     and b["map"] is not None]
            if not pairs:
                continue
            diffs = np.array([a["map"] - b["map"] for a, b in pairs])
            t = p = None
            std = float(diffs.std(ddof=1)) if diffs.size > 1 else None
            if diffs.size > 1 and std and std > 0:
                result = stats.ttest_1samp(diffs, 0.0)
                t, p = float(result.statistic), float(result.pvalue)
            rows.append({
                "strategy": strategy, "round": rnd, "seeds": int(diffs.size),
                "labeled_images": float(np.mean([a["labeled_images"] for a, _ in pairs])),
                "mean_diff": float(diffs.mean()), "std_diff": std, "t": t, "p_value": p,
                "wins": int((diffs > 0).sum()),
            })
    return pa.Table.from_pylist(rows, schema=PAIRED_TESTS)


def _at(curves: Mapping[tuple[str, int], list[dict]], strategy: str, seed: int,
        rnd: int) -> dict | None:
    return next((r for r in curves.get((strategy, seed), []) if r["round"] == rnd), None)


def seed_labels_saved(table: pa.Table, baseline: str = BASELINE) -> list[dict]:
    """Per strategy and seed: labels to reach that seed's random final mAP, in images and boxes.

    ``saved_images`` = 1 - needed / random's final images (None: never reached in the run, so
    the saving is below 0 or unknown); the same along the boxes axis.
    """
    curves = _curves(table)
    out = []
    for (strategy, seed), rows in sorted(curves.items()):
        base = curves.get((baseline, seed))
        if strategy == baseline or not base or base[-1]["map"] is None:
            continue
        target = base[-1]["map"]
        entry = {"strategy": strategy, "seed": seed, "target_map": target}
        for unit in ("images", "boxes"):
            x = [float(r[f"labeled_{unit}"]) for r in rows]
            y = [math.nan if r["map"] is None else r["map"] for r in rows]
            needed = labels_to_reach(x, y, target)
            final = float(base[-1][f"labeled_{unit}"])
            entry[f"needed_{unit}"] = needed
            entry[f"random_{unit}"] = final
            entry[f"saved_{unit}"] = None if needed is None or not final else 1 - needed / final
        out.append(entry)
    return out


def summarize_savings(entries: Iterable[Mapping]) -> dict[str, dict]:
    """strategy -> mean/std of saved fractions over seeds (a seed that never reached: 0 saved
    is not assumed; it is counted in ``not_reached`` and left out of the mean)."""
    by: dict[str, list[Mapping]] = {}
    for e in entries:
        by.setdefault(e["strategy"], []).append(e)
    out = {}
    for strategy, rows in by.items():
        summary: dict[str, object] = {"seeds": len(rows)}
        for unit in ("images", "boxes"):
            values = [r[f"saved_{unit}"] for r in rows if r[f"saved_{unit}"] is not None]
            summary[f"saved_{unit}_mean"] = float(np.mean(values)) if values else None
            summary[f"saved_{unit}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            summary[f"not_reached_{unit}"] = len(rows) - len(values)
        out[strategy] = summary
    return out


def final_per_class(table: pa.Table, names: Mapping[int, str], column: str = "class_ap",
                    absent: float | None = None) -> dict[str, dict[str, float]]:
    """strategy -> {class name: mean over seeds at the last round} of a per-class JSON column
    (``class_ap``: held-out AP; ``class_boxes``: labeled pool boxes). ``absent``: the value of
    a class a seed's row does not list (0 for counts; None: that seed is left out)."""
    curves = _curves(table)
    last = {key: json.loads(rows[-1][column]) for key, rows in curves.items()
            if rows[-1].get(column)}
    classes = {k for values in last.values() for k in values}
    collected: dict[str, dict[str, list[float]]] = {}
    for (strategy, _), values in last.items():
        for key in sorted(classes):
            value = values.get(key, absent)
            if value is not None:
                collected.setdefault(strategy, {}).setdefault(names.get(int(key), key),
                                                              []).append(value)
    return {s: {c: float(np.mean(v)) for c, v in per.items()} for s, per in collected.items()}


def _rare_class_table(table: pa.Table, names: Mapping[int, str], rare: list[str], column: str,
                      title: str, fmt: str, absent: float | None = None) -> list[str]:
    """Markdown rows of ``column`` for the rare classes, random first; ``absent`` as in
    :func:`final_per_class` (0 for box counts; None shows "-")."""
    per_class = final_per_class(table, names, column, absent)
    if not per_class or not rare:
        return []
    strategies = sorted(per_class, key=lambda s: (s != BASELINE, s))
    lines = ["", title, "", "| class | " + " | ".join(strategies) + " |",
             "|---|" + "---|" * len(strategies)]
    for name in rare:
        cells = [per_class[s].get(name, absent) for s in strategies]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else format(c, fmt)
                                                   for c in cells) + " |")
    return lines


def random_gain(table: pa.Table, baseline: str = BASELINE) -> tuple[float, float, int] | None:
    """Random's mean mAP gain from round 0 to its last round, the std of its final mAP over
    seeds (0 with one seed) and the number of seeds; None without a baseline curve."""
    firsts, finals = [], []
    for (strategy, _), rows in _curves(table).items():
        if strategy == baseline and rows[0]["map"] is not None and rows[-1]["map"] is not None:
            firsts.append(rows[0]["map"])
            finals.append(rows[-1]["map"])
    if not finals:
        return None
    spread = float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0
    return float(np.mean(finals) - np.mean(firsts)), spread, len(finals)


def _flatness_warning(table: pa.Table) -> list[str]:
    """A flat baseline makes "labels saved" meaningless: any curve touches random's final mAP
    early. Say so when random does not rise, or (with >= 2 seeds) when its whole gain is within
    twice the seed spread of its final mAP."""
    found = random_gain(table)
    if found is None:
        return []
    gain, spread, seeds = found
    if gain <= 0:
        text = f"Random's mAP does not rise over the run ({gain:+.3f})"
    elif seeds > 1 and gain <= 2 * spread:
        text = (f"Random gains {gain:+.3f} mAP over the whole run, within twice the spread of "
                f"its final mAP over seeds (std {spread:.3f})")
    else:
        return []
    return [text + ": the curves are flat, so these savings measure flatness, not selection.", ""]


def evidence_markdown(table: pa.Table, names: Mapping[int, str],
                      rare: Iterable[str] = ()) -> str:
    """The paired tests, the per-seed savings and the rare classes' AP, as Markdown."""
    lines = ["Paired difference in mAP against random (same seed), per round:", "",
             "| strategy | round | labeled images | mean diff | std | p (paired t) | wins |",
             "|---|---|---|---|---|---|---|"]
    for r in paired_tests(table).to_pylist():
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3f}"
        std = "-" if r["std_diff"] is None else f"{r['std_diff']:.3f}"
        lines.append(f"| {r['strategy']} | {r['round']} | {r['labeled_images']:.0f} | "
                     f"{r['mean_diff']:+.3f} | {std} | {p} | {r['wins']}/{r['seeds']} |")
    entries = seed_labels_saved(table)
    lines += ["", "Labels to reach the same seed's random final mAP (saved share of random's "
              "labels; mean ± std over seeds):", ""]
    lines += _flatness_warning(table)
    for strategy, s in sorted(summarize_savings(entries).items()):
        parts = []
        for unit in ("images", "boxes"):
            mean, std = s[f"saved_{unit}_mean"], s[f"saved_{unit}_std"]
            text = "not reached" if mean is None else f"{mean:+.0%}" + (
                "" if std is None else f" ± {std:.0%}")
            missed = s[f"not_reached_{unit}"]
            parts.append(f"{unit} {text}" + (f" ({missed} seed(s) never reached it)" if missed
                                             and mean is not None else ""))
        lines.append(f"- {strategy}: " + "; ".join(parts))
    rare = list(rare)
    lines += _rare_class_table(table, names, rare, "class_ap", "Held-out AP of the rare classes "
                               "at the last round (mean over seeds):", ".3f")
    lines += _rare_class_table(table, names, rare, "class_boxes", "Rare-class boxes labeled "
                               "from the pool by the last round (mean over seeds):", ".1f", 0.0)
    return "\n".join(lines) + "\n"
