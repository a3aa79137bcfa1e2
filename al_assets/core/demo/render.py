"""Pixels for a planned demo image: background, clutter, objects, blur and sensor noise.

Every class takes its colour from the same palette, so a detector has to learn shape, not colour.
Clutter (lines, arcs, blobs, specks) is never annotated: it supplies hard negatives.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from al_assets.core.demo.scene import ImageLayout

JPEG_QUALITY = 90  # fixed so the same layout always encodes to the same bytes
PNG_COMPRESS_LEVEL = 6

PALETTE = np.array(
    [
        (214, 52, 48),
        (236, 138, 38),
        (232, 204, 64),
        (86, 168, 72),
        (40, 158, 160),
        (52, 98, 204),
        (138, 78, 182),
        (226, 226, 220),
        (58, 58, 62),
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class RenderStyle:
    """Lighting and sensor of a scene; the defaults are the demo's, a domain shift changes them."""

    gray: tuple[float, float] = (70.0, 180.0)  # mean background level
    spread: float = 0.5  # how far the two gradient colours stray from that level (0..1)
    gain: tuple[float, float] = (0.85, 1.15)  # exposure gain
    bias: tuple[float, float] = (-15.0, 15.0)  # exposure offset
    noise: tuple[float, float] = (3.0, 12.0)  # sensor noise sigma
    blur: tuple[float, float] = (0.3, 0.8)  # box-blur radius


DEFAULT_RENDER = RenderStyle()

Color = tuple[int, int, int]
Size = tuple[int, int]
Rgb = np.ndarray  # float (3,) mean background colour


def _to_color(values: np.ndarray) -> Color:
    r, g, b = (int(v) for v in np.clip(np.round(values), 0, 255))
    return (r, g, b)


def _background(
    rng: np.random.Generator, width: int, height: int, style: RenderStyle
) -> tuple[np.ndarray, np.ndarray]:
    """Muted linear gradient between two random colours: uint8 (H, W, 3) and its mean colour."""
    gray = rng.uniform(*style.gray)
    ends = gray + (rng.uniform(60.0, 200.0, size=(2, 3)) - gray) * style.spread
    theta = rng.uniform(0.0, 2.0 * np.pi)
    xs = np.arange(width, dtype=np.float32) * np.float32(np.cos(theta))
    ys = np.arange(height, dtype=np.float32) * np.float32(np.sin(theta))
    t = ys[:, None] + xs[None, :]
    scale = np.float32(255.0 / max(float(t.max() - t.min()), 1.0))
    levels = ((t - t.min()) * scale).astype(np.uint8)
    # A 256-entry colour ramp indexed per pixel is far cheaper than blending (H, W, 3) floats.
    ramp = np.round(np.linspace(ends[0], ends[1], 256)).astype(np.uint8)
    mean = np.bincount(levels.ravel(), minlength=256) @ ramp / levels.size
    return np.take(ramp, levels, axis=0), mean


def _object_color(rng: np.random.Generator, background: np.ndarray) -> Color:
    """A palette colour that usually contrasts with the background, jittered per object."""
    base = PALETTE[rng.integers(len(PALETTE))]
    for _ in range(4):
        if np.linalg.norm(base - background) >= 60.0:
            break
        base = PALETTE[rng.integers(len(PALETTE))]
    return _to_color(base + rng.uniform(-25.0, 25.0, size=3))


def _clutter_color(rng: np.random.Generator, background: np.ndarray) -> Color:
    alpha = rng.uniform(0.35, 1.0)
    return _to_color(alpha * PALETTE[rng.integers(len(PALETTE))] + (1.0 - alpha) * background)


def _point(rng: np.random.Generator, size: Size) -> tuple[float, float]:
    return (float(rng.uniform(0, size[0])), float(rng.uniform(0, size[1])))


def _draw_lines(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size, bg: Rgb) -> None:
    for _ in range(int(rng.integers(2, 9))):
        ends = [_point(rng, size), _point(rng, size)]
        draw.line(ends, fill=_clutter_color(rng, bg), width=int(rng.integers(1, 4)))


def _draw_arcs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size, bg: Rgb) -> None:
    """Open arcs: circle-like edges that must not be detected as circles."""
    for _ in range(int(rng.integers(0, 4))):
        (x, y), r = _point(rng, size), rng.uniform(6.0, 40.0)
        start = rng.uniform(0.0, 360.0)
        end = start + rng.uniform(90.0, 240.0)
        fill, width = _clutter_color(rng, bg), int(rng.integers(1, 4))
        draw.arc([x - r, y - r, x + r, y + r], start, end, fill=fill, width=width)


def _draw_blobs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size, bg: Rgb) -> None:
    """Irregular filled polygons: solid, object-sized hard negatives."""
    for _ in range(int(rng.integers(1, 6))):
        x, y = _point(rng, size)
        n = int(rng.integers(6, 12))
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
        radii = rng.uniform(6.0, 30.0) * rng.uniform(0.45, 1.0, n)
        blob = [(x + r * np.cos(a), y + r * np.sin(a)) for a, r in zip(angles, radii)]
        draw.polygon(blob, fill=_clutter_color(rng, bg))


def _draw_specks(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size, bg: Rgb) -> None:
    for _ in range(int(rng.integers(0, 26))):
        (x, y), r = _point(rng, size), rng.uniform(0.5, 3.0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_clutter_color(rng, bg))


def _points(polygon: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in polygon]


def _draw_objects(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, layout: ImageLayout, bg: np.ndarray
) -> None:
    if layout.crowd is not None:
        color = np.array(_object_color(rng, bg), dtype=np.float64)
        for polygon in layout.crowd.polygons:
            draw.polygon(_points(polygon), fill=_to_color(color + rng.uniform(-20, 20, 3)))
    for obj in layout.objects:
        fill = _object_color(rng, bg)
        outline = None
        if rng.uniform() < 0.4:
            outline = _to_color(np.array(fill) * rng.uniform(0.4, 0.7))
        draw.polygon(_points(obj.polygon), fill=fill, outline=outline)


def _add_sensor_noise(
    image: Image.Image, rng: np.random.Generator, style: RenderStyle
) -> Image.Image:
    """Blur, exposure change and luminance noise, so edges are not pixel-perfect templates."""
    blurred = image.filter(ImageFilter.BoxBlur(radius=float(rng.uniform(*style.blur))))
    gain, bias = rng.uniform(*style.gain), rng.uniform(*style.bias)
    exposure = np.clip(np.round(np.arange(256) * gain + bias), 0, 255).astype(int).tolist()
    adjusted = blurred.point(exposure * 3)
    sigma = np.float32(rng.uniform(*style.noise))
    noise = rng.standard_normal((image.height, image.width), dtype=np.float32) * sigma + 128.0
    grain = Image.fromarray(np.clip(noise, 0.0, 255.0).astype(np.uint8))
    # add(a, b, offset=-128) is a + (noise + 128) - 128, clipped to 0..255 by PIL.
    return ImageChops.add(adjusted, Image.merge("RGB", (grain, grain, grain)), 1.0, -128)


def render_image(
    layout: ImageLayout, rng: np.random.Generator, style: RenderStyle = DEFAULT_RENDER
) -> Image.Image:
    """Draw `layout` as an RGB image; the object polygons are filled exactly as annotated."""
    background, mean_bg = _background(rng, layout.width, layout.height, style)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    size = (layout.width, layout.height)
    # Unannotated clutter goes under the objects so it never changes an annotated shape.
    for draw_clutter in (_draw_lines, _draw_arcs, _draw_blobs, _draw_specks):
        draw_clutter(draw, rng, size, mean_bg)
    _draw_objects(draw, rng, layout, mean_bg)
    return _add_sensor_noise(image, rng, style)


def encode_image(image: Image.Image, file_format: str, grayscale: bool) -> bytes:
    """Encode with fixed settings so identical pixels always give identical file bytes."""
    if grayscale:
        image = image.convert("L")
    buffer = io.BytesIO()
    if file_format == "PNG":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif file_format == "JPEG":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False)
    else:
        raise ValueError(f"unsupported demo image format {file_format!r}; use 'JPEG' or 'PNG'")
    return buffer.getvalue()
