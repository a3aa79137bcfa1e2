"""Report charts rendered to PNG bytes with matplotlib's Agg canvas.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``: nothing is
registered in pyplot's global figure list, so nothing needs closing, no display is touched and
charts can be rendered from several threads (Dagster runs assets concurrently).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
MAX_ANNOTATED_CLASSES = 30
"""Above this many classes the heatmap cells are too small to carry numbers."""

Curve = tuple[Sequence[float], Sequence[float], Sequence[float]]
"""``(x, mean, std)`` of one learning curve, e.g. mAP per labeling round over seeds."""


def confusion_heatmap(
    matrix: np.ndarray,
    class_names: Sequence[str],
    *,
    title: str,
    normalize: bool = False,
    row_label: str = "true class",
    col_label: str = "predicted class",
) -> bytes:
    """PNG heatmap of a square class-by-class count matrix, counts written in the cells.

    ``normalize`` divides each row by its total, so rare classes are as visible as frequent
    ones; a row with no counts stays zero.
    """
    counts = _square_counts(matrix, class_names)
    values = _row_normalized(counts) if normalize else counts
    side = min(24.0, 3.0 + 0.35 * len(class_names))
    figure = _figure((side + 1.5, side))
    axes = figure.add_subplot()
    shown = axes.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=_plain(class_names), rotation=90)
    axes.set_yticks(ticks, labels=_plain(class_names))
    axes.set(title=_text(title), xlabel=_text(col_label), ylabel=_text(row_label))
    if len(class_names) <= MAX_ANNOTATED_CLASSES:
        _annotate_cells(axes, values, "{:.2f}" if normalize else _count_format(counts))
    return _png(figure)


def class_frequency_chart(
    names: Sequence[str],
    predicted_counts: Sequence[float],
    ground_truth_counts: Sequence[float] | None = None,
    *,
    title: str,
    log_scale: bool = False,
) -> bytes:
    """PNG of grouped bars, predicted next to ground truth per class.

    ``log_scale`` keeps rare classes visible when a few classes dominate (COCO's ``person``).
    """
    series = {"predicted": predicted_counts}
    if ground_truth_counts is not None:
        series["ground truth"] = ground_truth_counts
    arrays = {label: _counts(values, len(names), label) for label, values in series.items()}
    figure = _figure((min(24.0, 3.0 + 0.3 * len(names) * len(arrays)), 5.0))
    axes = figure.add_subplot()
    width = 0.8 / len(arrays)
    positions = np.arange(len(names))
    for offset, (label, values) in enumerate(arrays.items()):
        axes.bar(positions + (offset - (len(arrays) - 1) / 2) * width, values, width, label=label)
    axes.set_xticks(positions, labels=_plain(names), rotation=90)
    if log_scale:
        axes.set_yscale("log")
    axes.set(title=_text(title), ylabel="count (log scale)" if log_scale else "count")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def learning_curves_chart(
    curves: Mapping[str, Curve],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> bytes:
    """PNG of one line per strategy (mean) with a shaded band of plus/minus one std."""
    if not curves:
        raise ValueError("learning_curves_chart needs at least one curve")
    figure = _figure((8.0, 5.0))
    axes = figure.add_subplot()
    for name, curve in curves.items():
        x, mean, std = _curve_arrays(name, curve)
        (line,) = axes.plot(x, mean, marker="o", markersize=3, label=_text(name))
        axes.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axes.set(title=_text(title), xlabel=_text(xlabel), ylabel=_text(ylabel))
    axes.legend()
    axes.grid(alpha=0.3)
    return _png(figure)


def _text(text: str) -> str:
    """User text shown literally: ``$`` would otherwise start matplotlib math mode."""
    return str(text).replace("$", r"\$")


def _plain(texts: Sequence[str]) -> list[str]:
    """:func:`_text` for every tick label."""
    return [_text(text) for text in texts]


def _figure(size: tuple[float, float]) -> Figure:
    """A figure bound to an Agg canvas, outside pyplot's global state."""
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    """Render and release the figure (it is referenced nowhere else)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    figure.clear()
    return buffer.getvalue()


def _square_counts(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The matrix as floats, checked to be square, non-negative and named row by row."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    if counts.shape[0] != len(class_names):
        raise ValueError(
            f"confusion matrix has {counts.shape[0]} rows but {len(class_names)} class names"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("confusion matrix must hold finite, non-negative counts")
    return counts


def _row_normalized(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum; empty rows stay zero instead of becoming NaN."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _count_format(counts: np.ndarray) -> str:
    """Whole numbers without decimals, weighted counts with three significant digits."""
    return "{:.0f}" if np.all(counts == np.round(counts)) else "{:.3g}"


def _annotate_cells(axes: Axes, values: np.ndarray, template: str) -> None:
    """Write each cell's value, white on dark cells so it stays readable."""
    threshold = values.max() / 2 if values.size else 0
    for (row, col), value in np.ndenumerate(values):
        color = "white" if value > threshold else "black"
        text = template.format(value)
        axes.text(col, row, text, ha="center", va="center", color=color, fontsize=8)


def _counts(values: Sequence[float], expected: int, label: str) -> np.ndarray:
    """Counts as floats, one per class name."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (expected,):
        raise ValueError(
            f"{label} counts have shape {array.shape}, expected one per class ({expected})"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{label} counts must be finite and non-negative")
    return array


def _curve_arrays(name: str, curve: Curve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x``, ``mean`` and ``std`` as equal-length float arrays."""
    x, mean, std = (np.asarray(part, dtype=np.float64) for part in curve)
    if not (x.ndim == mean.ndim == std.ndim == 1) or not (len(x) == len(mean) == len(std)):
        raise ValueError(
            f"curve {name!r} needs x, mean and std of equal length, got "
            f"{x.shape}, {mean.shape}, {std.shape}"
        )
    return x, mean, std
