"""Learning curves of a simulation: the tidy table, mean and std per round, labels saved, PNG.

"Does uncertainty sampling beat random" is answered two ways: the mAP curves against the
number of labeled images and boxes (an image budget flatters strategies that pick crowded
images, a box budget does not), and the labels a strategy needs to reach a target mAP compared
with random, interpolated linearly between rounds on the mean curve over seeds.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from al_assets.core.report.charts import Curve, learning_curves_chart
from al_assets.core.storage.files import write_bytes_atomic

SIMULATION_CURVES = pa.schema(
    [
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("seed", pa.int32(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),  # 0 = the random seed set
        pa.field("labeled_images", pa.int32(), nullable=False),
        pa.field("labeled_boxes", pa.int32(), nullable=False),  # non-crowd boxes trained on
        pa.field("map", pa.float64()),  # COCO AP@[.5:.95] on the held-out split
        pa.field("ap50", pa.float64()),
        pa.field("map_low", pa.float64()),  # bootstrap interval over held-out images
        pa.field("map_high", pa.float64()),
        pa.field("champion_map", pa.float64()),  # the champion after this round's gate
        pa.field("promoted", pa.bool_(), nullable=False),  # the gate moved the champion
        pa.field("train_seconds", pa.float64(), nullable=False),
        pa.field("selected_ids", pa.list_(pa.int64()), nullable=False),  # labeled this round
        # Fraction of the unlabeled pool that had a box >= min_score when this round's
        # images were selected (what uncertainty could rank by); null for random and round 0.
        pa.field("pool_with_boxes", pa.float64()),
        # The challenger's held-out AP per class: JSON {category_id: AP or null}.
        pa.field("class_ap", pa.string()),
        # Labeled pool boxes per class so far (non-crowd; the base split not counted): JSON
        # {category_id: boxes}. Shows whether a strategy found the rare classes at all.
        pa.field("class_boxes", pa.string()),
    ]
)
"""One row per strategy x seed x round. Round 0 is shared by every strategy of a seed (same
seed set, same model), so its row is repeated under each strategy."""

BASELINE = "random"
TARGET_FRACTIONS = (0.9, 1.0)
"""Default targets: these fractions of random's final mean mAP."""


@dataclass(frozen=True)
class LabelsSaved:
    """Labels (images or boxes) to reach ``target_map``; None = not reached in the run."""

    strategy: str
    unit: str  # "images" | "boxes"
    target_map: float
    needed: float | None
    baseline_needed: float | None

    @property
    def saved(self) -> float | None:
        """Labels saved against the baseline; None when either curve never reached the target."""
        if self.needed is None or self.baseline_needed is None:
            return None
        return self.baseline_needed - self.needed

    @property
    def saved_fraction(self) -> float | None:
        saved = self.saved
        return None if saved is None or not self.baseline_needed else saved / self.baseline_needed

    def describe(self) -> str:
        if self.needed is None:
            return "not reached"
        text = f"{self.needed:.0f} {self.unit}"
        if self.baseline_needed is None:
            return f"{text} ({BASELINE} did not reach it)"
        saved, fraction = self.saved, self.saved_fraction
        share = "" if fraction is None else f" ({fraction:+.0%})"
        return f"{text} vs {self.baseline_needed:.0f}: saved {saved:+.0f}{share}"


def curves_table(rows: Iterable[Mapping[str, object]]) -> pa.Table:
    """Rows (dicts with the SIMULATION_CURVES fields) as the schema'd table."""
    return pa.Table.from_pylist(list(rows), schema=SIMULATION_CURVES)


def mean_curves(table: pa.Table) -> pa.Table:
    """Mean and sample std over seeds per strategy and round (std 0 with one seed), sorted."""
    sample = pc.VarianceOptions(ddof=1)  # 2-3 seeds: the population std would understate
    aggregations = [("seed", "count")]
    for column in ("labeled_images", "labeled_boxes", "map", "ap50"):
        aggregations += [(column, "mean"), (column, "stddev", sample)]
    grouped = table.group_by(["strategy", "round"]).aggregate(aggregations)
    grouped = grouped.sort_by([("strategy", "ascending"), ("round", "ascending")])
    columns = {name: grouped[name] for name in ("strategy", "round")}
    columns["seeds"] = grouped["seed_count"]
    for column in ("labeled_images", "labeled_boxes", "map", "ap50"):
        columns[f"{column}_mean"] = grouped[f"{column}_mean"]
        columns[f"{column}_std"] = pc.fill_null(grouped[f"{column}_stddev"], 0.0)
    return pa.table(columns)


def labels_to_reach(x: Sequence[float], y: Sequence[float], target: float) -> float | None:
    """Smallest x where the piecewise-linear curve (x, y) first reaches ``target``; None if never.

    Interpolating between rounds (instead of taking the next round) keeps the answer from
    jumping by a whole round's budget when a curve crosses the target just after a round.
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or xs.size == 0:
        raise ValueError(
            f"x and y must be two equally long, non-empty 1-D lists: {xs.shape}, {ys.shape}"
        )
    if np.any(np.diff(xs) < 0):
        raise ValueError("x must not decrease (labels only grow from round to round)")
    reached = np.flatnonzero(ys >= target)
    if reached.size == 0:
        return None
    i = int(reached[0])
    if i == 0:
        return float(xs[0])
    fraction = (target - ys[i - 1]) / (ys[i] - ys[i - 1])
    return float(xs[i - 1] + fraction * (xs[i] - xs[i - 1]))


def labels_saved(
    table: pa.Table,
    target_map: float,
    *,
    unit: str = "images",
    baseline: str = BASELINE,
) -> list[LabelsSaved]:
    """Per strategy: labels its mean curve needs to reach ``target_map`` vs ``baseline``'s."""
    if unit not in ("images", "boxes"):
        raise ValueError(f"unit must be 'images' or 'boxes', got {unit!r}")
    curves = _mean_xy(table, f"labeled_{unit}_mean")
    if baseline not in curves:
        raise ValueError(f"no {baseline!r} curve in the table; run it as the baseline")
    base = labels_to_reach(*curves[baseline], target_map)
    return [
        LabelsSaved(strategy, unit, target_map, labels_to_reach(x, y, target_map), base)
        for strategy, (x, y) in curves.items()
        if strategy != baseline
    ]


def default_targets(table: pa.Table, baseline: str = BASELINE) -> list[float]:
    """``TARGET_FRACTIONS`` of the baseline's final mean mAP: "random's result, fewer labels"."""
    curves = _mean_xy(table, "labeled_images_mean")
    if baseline not in curves:
        raise ValueError(f"no {baseline!r} curve in the table; run it as the baseline")
    final = float(curves[baseline][1][-1])
    return [round(fraction * final, 4) for fraction in TARGET_FRACTIONS]


def curves_png(table: pa.Table) -> bytes:
    """mAP vs labeled images (left) and vs labeled boxes (right), mean +- std over seeds."""
    panels = [
        learning_curves_chart(
            _chart_curves(table, f"labeled_{unit}_mean"),
            xlabel=f"labeled {unit}",
            ylabel="COCO mAP (held-out)",
            title=f"mAP vs labeled {unit}",
        )
        for unit in ("images", "boxes")
    ]
    images = [Image.open(io.BytesIO(png)).convert("RGB") for png in panels]
    canvas = Image.new(
        "RGB", (sum(i.width for i in images), max(i.height for i in images)), "white"
    )
    left = 0
    for image in images:
        canvas.paste(image, (left, 0))
        left += image.width
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def markdown_summary(table: pa.Table, targets: Sequence[float] | None = None) -> str:
    """Mean +- std table per round and strategy, then the labels-saved lines, as Markdown."""
    means = mean_curves(table).to_pylist()
    strategies = sorted({row["strategy"] for row in means}, key=lambda s: (s != BASELINE, s))
    rounds = sorted({row["round"] for row in means})
    cell = {(r["strategy"], r["round"]): r for r in means}
    lines = [
        "| round | labeled images | " + " | ".join(strategies) + " |",
        "|---|---|" + "---|" * len(strategies),
    ]
    for rnd in rounds:
        first = cell[(strategies[0], rnd)]
        values = [_mean_std(cell.get((s, rnd))) for s in strategies]
        lines.append(f"| {rnd} | {first['labeled_images_mean']:.0f} | " + " | ".join(values) + " |")
    lines.append("")
    lines.append("| round | " + " | ".join(f"{s} boxes" for s in strategies) + " |")
    lines.append("|---|" + "---|" * len(strategies))
    for rnd in rounds:
        boxes = [_boxes(cell.get((s, rnd))) for s in strategies]
        lines.append(f"| {rnd} | " + " | ".join(boxes) + " |")
    for target in targets if targets is not None else default_targets(table):
        lines.append("")
        lines.append(f"Labels to reach mAP {target:.3f}:")
        for unit in ("images", "boxes"):
            for saved in labels_saved(table, target, unit=unit):
                lines.append(f"- {saved.strategy} ({unit}): {saved.describe()}")
    return "\n".join(lines) + "\n"


def write_outputs(
    table: pa.Table, out_dir: Path, targets: Sequence[float] | None = None
) -> dict[str, Path]:
    """curves.parquet, summary.parquet, labels_saved.json, curves.png and summary.md, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = write_bytes_atomic(out_dir / "curves.parquet", _parquet_bytes(table))  # mergeable
    if targets is None and BASELINE not in table["strategy"].to_pylist():
        targets = []  # labels saved need random's curve: merge this run with one that has it
    targets = list(targets) if targets is not None else default_targets(table)
    saved = [
        asdict(s) | {"saved": s.saved, "saved_fraction": s.saved_fraction}
        for t in targets
        for unit in ("images", "boxes")
        for s in labels_saved(table, t, unit=unit)
    ]
    paths = {
        "curves": curves,
        "summary": write_bytes_atomic(out_dir / "summary.parquet", _parquet_bytes(mean_curves(table))),
        "labels_saved": write_bytes_atomic(out_dir / "labels_saved.json", json.dumps(saved, indent=2).encode()),
        "png": write_bytes_atomic(out_dir / "curves.png", curves_png(table)),
        "markdown": write_bytes_atomic(out_dir / "summary.md", markdown_summary(table, targets).encode()),
    }
    return paths


def _mean_xy(table: pa.Table, x_column: str) -> dict[str, tuple[list[float], list[float]]]:
    """strategy -> (mean labels per round, mean mAP per round), rounds ascending."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in mean_curves(table).to_pylist():
        x, y = curves.setdefault(row["strategy"], ([], []))
        x.append(row[x_column])
        y.append(math.nan if row["map_mean"] is None else row["map_mean"])
    return curves


def _chart_curves(table: pa.Table, x_column: str) -> dict[str, Curve]:
    std = {}
    for row in mean_curves(table).to_pylist():
        std.setdefault(row["strategy"], []).append(row["map_std"])
    curves = _mean_xy(table, x_column)
    order = sorted(curves, key=lambda s: (s != BASELINE, s))  # random first: same colour always
    return {s: (curves[s][0], curves[s][1], std[s]) for s in order}


def _mean_std(row: Mapping[str, object] | None) -> str:
    if row is None or row["map_mean"] is None:
        return "-"
    return f"{row['map_mean']:.3f} ± {row['map_std']:.3f}"


def _boxes(row: Mapping[str, object] | None) -> str:
    return "-" if row is None else f"{row['labeled_boxes_mean']:.0f}"


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
