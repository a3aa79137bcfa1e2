"""Demo categories and the exact polygon outline of each shape class.

Shapes are returned as polygons centred on the origin so that the same vertices are used for the
annotation and for drawing; the annotation is then exact, not re-derived from pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShapeClass:
    """One demo class: COCO category fields plus how often it is drawn."""

    id: int
    name: str
    supercategory: str
    frequency: float


# Ids have gaps and supercategories group look-alikes, as in COCO. Frequencies make "triangle" very
# common and "hexagon"/"star" rare, so class imbalance shows up in the analysis.
SHAPE_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(1, "circle", "round", 0.14),
    ShapeClass(3, "ellipse", "round", 0.11),
    ShapeClass(5, "triangle", "polygon", 0.30),
    ShapeClass(7, "square", "quadrilateral", 0.14),
    ShapeClass(8, "rectangle", "quadrilateral", 0.11),
    ShapeClass(11, "pentagon", "polygon", 0.10),
    ShapeClass(13, "hexagon", "polygon", 0.07),
    ShapeClass(17, "star", "star", 0.03),
)

DEMO_CATEGORIES: list[dict] = [
    {"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in SHAPE_CLASSES
]

# Pairs that differ only by aspect ratio or vertex count; colour never tells them apart.
LOOKALIKE_PAIRS: list[tuple[str, str]] = [
    ("circle", "ellipse"),
    ("square", "rectangle"),
    ("pentagon", "hexagon"),
]

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in SHAPE_CLASSES)
CATEGORY_ID: dict[str, int] = {c.name: c.id for c in SHAPE_CLASSES}
CLASS_PROBABILITIES: np.ndarray = np.array([c.frequency for c in SHAPE_CLASSES]) / sum(
    c.frequency for c in SHAPE_CLASSES
)


def _ellipse(rx: float, ry: float, n: int) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(angles), ry * np.sin(angles)], axis=1)


def _regular(n_sides: int, radius: float) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, n_sides, endpoint=False) - np.pi / 2.0
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _round_vertices(size: float) -> int:
    """Many vertices so circles look round even at 120 px, fewer for tiny ones."""
    return int(np.clip(round(size * 0.5), 24, 48))


def _circle(rng: np.random.Generator, size: float) -> np.ndarray:
    # A slight aspect jitter keeps "circle" from being a pixel-perfect template.
    r = size / 2.0
    return _ellipse(r, r / rng.uniform(1.0, 1.06), _round_vertices(size))


def _ellipse_shape(rng: np.random.Generator, size: float) -> np.ndarray:
    r = size / 2.0
    return _ellipse(r, r / rng.uniform(1.3, 1.5), _round_vertices(size))


def _box(long_side: float, aspect: float) -> np.ndarray:
    hx, hy = long_side / 2.0, long_side / aspect / 2.0
    return np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])


def _square(rng: np.random.Generator, size: float) -> np.ndarray:
    return _box(size, rng.uniform(1.0, 1.06))


def _rectangle(rng: np.random.Generator, size: float) -> np.ndarray:
    return _box(size, rng.uniform(1.3, 1.6))


def _triangle(rng: np.random.Generator, size: float) -> np.ndarray:
    # Irregular triangles: the common class should vary more than the rare ones.
    return _regular(3, size / 2.0) * rng.uniform(0.8, 1.0, size=(3, 1))


def _pentagon(rng: np.random.Generator, size: float) -> np.ndarray:
    return _regular(5, size / 2.0) * np.array([1.0, 1.0 / rng.uniform(1.0, 1.05)])


def _hexagon(rng: np.random.Generator, size: float) -> np.ndarray:
    return _regular(6, size / 2.0) * np.array([1.0, 1.0 / rng.uniform(1.0, 1.05)])


def _star(rng: np.random.Generator, size: float) -> np.ndarray:
    outer = _regular(5, size / 2.0)
    inner = _regular(5, size / 2.0 * rng.uniform(0.4, 0.55))
    inner = inner @ _rotation(np.pi / 5.0).T
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


_OUTLINES: dict[str, Callable[[np.random.Generator, float], np.ndarray]] = {
    "circle": _circle,
    "ellipse": _ellipse_shape,
    "triangle": _triangle,
    "square": _square,
    "rectangle": _rectangle,
    "pentagon": _pentagon,
    "hexagon": _hexagon,
    "star": _star,
}


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def shape_outline(name: str, rng: np.random.Generator, size: float) -> np.ndarray:
    """(N, 2) vertices of a randomly rotated `name` shape of extent `size`, centred at 0."""
    if name not in _OUTLINES:
        raise ValueError(f"unknown demo shape {name!r}; expected one of {sorted(_OUTLINES)}")
    vertices = _OUTLINES[name](rng, size)
    return vertices @ _rotation(rng.uniform(0.0, 2.0 * np.pi)).T
