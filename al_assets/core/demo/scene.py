"""Geometry of one demo image: where each object and crowd goes, before any pixel colour is chosen.

Layout is kept apart from rendering so a batch's annotations can be computed (and compared with
an existing file) without drawing or holding any image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from al_assets.core.demo.shapes import CLASS_NAMES, CLASS_PROBABILITIES, shape_outline

MIN_OBJECT_SIZE = 12.0
MAX_OBJECT_SIZE = 120.0
MAX_IOU = 0.5  # reject a placement overlapping an existing object more than this
MIN_VISIBLE = 0.5  # ... or hiding more than half of one: no near-total occlusion
PLACEMENT_TRIES = 25
CROWD_CLASSES = ("triangle", "circle", "square")
EDGE_MARGIN = 1.0  # polygons stay this far inside the image so boxes never touch the border


@dataclass(frozen=True)
class LayoutStyle:
    """What a scene's geometry draws from; the defaults are the demo's, presets change them."""

    class_probabilities: tuple[float, ...] = tuple(CLASS_PROBABILITIES)  # CLASS_NAMES order
    min_size: float = MIN_OBJECT_SIZE  # object extent in pixels, drawn log-uniformly
    max_size: float = MAX_OBJECT_SIZE


DEFAULT_LAYOUT = LayoutStyle()


@dataclass(frozen=True)
class ObjectLayout:
    """One annotated object: its class and exact polygon in COCO pixel coordinates."""

    category: str
    polygon: np.ndarray  # (N, 2) x, y rounded to 0.01 px


@dataclass(frozen=True)
class CrowdLayout:
    """A cluster of tiny same-class objects annotated as one `iscrowd=1` region."""

    category: str
    polygons: tuple[np.ndarray, ...]
    rle: dict  # uncompressed COCO RLE of exactly the pixels the renderer fills


@dataclass(frozen=True)
class ImageLayout:
    """Everything about an image that the annotations depend on."""

    width: int
    height: int
    objects: tuple[ObjectLayout, ...]
    crowd: CrowdLayout | None


def polygon_mask(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rasterise `polygon` with the same PIL call the renderer uses, so masks match the pixels."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in polygon], fill=1)
    return np.asarray(canvas).astype(bool)


class _Occupancy:
    """Tracks which object is on top of each pixel so occlusion can be bounded."""

    def __init__(self, width: int, height: int) -> None:
        self.top = np.full((height, width), -1, dtype=np.int32)
        self.masks: list[np.ndarray] = []
        self.areas: list[int] = []
        self.visible: list[int] = []

    def fits(self, mask: np.ndarray) -> bool:
        area = int(mask.sum())
        if area == 0:
            return False
        hidden = np.bincount(self.top[mask] + 1, minlength=len(self.masks) + 1)[1:]
        for j, (other, other_area) in enumerate(zip(self.masks, self.areas)):
            if self.visible[j] - hidden[j] < MIN_VISIBLE * other_area:
                return False
            inter = int(np.logical_and(mask, other).sum())
            if inter / (area + other_area - inter) > MAX_IOU:
                return False
        return True

    def add(self, mask: np.ndarray) -> None:
        hidden = np.bincount(self.top[mask] + 1, minlength=len(self.masks) + 1)[1:]
        self.visible = [v - int(h) for v, h in zip(self.visible, hidden)]
        self.top[mask] = len(self.masks)
        self.masks.append(mask)
        self.areas.append(int(mask.sum()))
        self.visible.append(self.areas[-1])


def _place(
    outline: np.ndarray, center_lo: np.ndarray, center_hi: np.ndarray, rng: np.random.Generator
) -> np.ndarray | None:
    """Translate `outline` to a random centre that keeps it inside the image, or None if too big."""
    lo = center_lo - outline.min(axis=0)
    hi = center_hi - outline.max(axis=0)
    if np.any(hi < lo):
        return None
    return np.round(outline + rng.uniform(lo, hi), 2)


def _sample_size(rng: np.random.Generator, width: int, height: int, style: LayoutStyle) -> float:
    # Log-uniform sizes: many small objects, a few large ones, as in real photos.
    high = min(style.max_size, 0.6 * min(width, height))
    return float(np.exp(rng.uniform(np.log(style.min_size), np.log(high))))


def _plan_object(
    rng: np.random.Generator, width: int, height: int, occupancy: _Occupancy, style: LayoutStyle
) -> ObjectLayout | None:
    image_lo = np.array([EDGE_MARGIN, EDGE_MARGIN])
    image_hi = np.array([width - EDGE_MARGIN, height - EDGE_MARGIN])
    for _ in range(PLACEMENT_TRIES):
        name = CLASS_NAMES[rng.choice(len(CLASS_NAMES), p=np.asarray(style.class_probabilities))]
        outline = shape_outline(name, rng, _sample_size(rng, width, height, style))
        polygon = _place(outline, image_lo, image_hi, rng)
        if polygon is None:
            continue
        mask = polygon_mask(polygon, width, height)
        if occupancy.fits(mask):
            occupancy.add(mask)
            return ObjectLayout(name, polygon)
    return None


def _plan_crowd(
    rng: np.random.Generator, width: int, height: int, occupancy: _Occupancy
) -> CrowdLayout:
    """Cluster 6-14 tiny (6-11 px) objects of one class inside a disc, like a COCO crowd."""
    name = CROWD_CLASSES[rng.integers(len(CROWD_CLASSES))]
    radius = rng.uniform(16.0, min(40.0, 0.25 * min(width, height)))
    reach = radius + 6.0 + EDGE_MARGIN
    center = rng.uniform([reach, reach], [width - reach, height - reach])
    polygons = []
    for _ in range(int(rng.integers(6, 15))):
        angle, dist = rng.uniform(0.0, 2.0 * np.pi), radius * np.sqrt(rng.uniform())
        offset = center + dist * np.array([np.cos(angle), np.sin(angle)])
        outline = shape_outline(name, rng, rng.uniform(6.0, 11.0))
        polygons.append(np.round(outline + offset, 2))
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        mask |= polygon_mask(polygon, width, height)
    occupancy.add(mask)
    return CrowdLayout(name, tuple(polygons), uncompressed_rle(mask))


def plan_image(
    rng: np.random.Generator, width: int, height: int, n_objects: int, with_crowd: bool,
    style: LayoutStyle = DEFAULT_LAYOUT,
) -> ImageLayout:
    """Lay out a crowd (optional) then up to `n_objects` objects with bounded mutual occlusion.

    Later objects are drawn on top of earlier ones; annotations keep the full drawn polygon, as
    COCO does, so occlusion is limited instead of subtracted.
    """
    occupancy = _Occupancy(width, height)
    crowd = _plan_crowd(rng, width, height, occupancy) if with_crowd else None
    objects = []
    for _ in range(n_objects):
        placed = _plan_object(rng, width, height, occupancy, style)
        if placed is not None:
            objects.append(placed)
    return ImageLayout(width, height, tuple(objects), crowd)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: column-major run lengths starting with a run of zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    counts = ([0] if flat[0] else []) + [int(r) for r in runs]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}
