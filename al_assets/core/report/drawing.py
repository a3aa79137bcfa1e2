"""Detections drawn on images, and galleries of them, as the reference notebook shows them.

The notebook overlays each box in yellow (width 3) with ``"label | score"`` above it. Here the
text sits on a dark background so it reads on any image, is kept inside the image when the box
touches an edge, and the caller's image is never modified (it may be cached or shared).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from al_assets.core.errors import AlAssetsError, stable_text

Box = tuple[float, float, float, float]
"""``(xmin, ymin, xmax, ymax)`` in pixels of the image it is drawn on."""

BoxLike = Box | Mapping[str, float]
"""A :data:`Box` or a ``{"xmin", "ymin", "xmax", "ymax"}`` mapping (a BOX2D row from Arrow)."""

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

TEXT_COLOR = (255, 255, 255)
TEXT_BACKGROUND = (0, 0, 0)
TEXT_PADDING = 2
TILE_BACKGROUND = (40, 40, 40)
CAPTION_BACKGROUND = (250, 250, 250)
CAPTION_COLOR = (20, 20, 20)
TILE_GAP = 2
"""Pixels left free around each thumbnail so neighbouring photos do not merge."""

LOAD_ERRORS = (OSError, ValueError, AlAssetsError, Image.DecompressionBombError)
"""What loading one image may raise (missing, unreadable, undecodable, too large): such an
image becomes a placeholder, because one bad image must not lose a gallery or a report."""

ImageSource = Image.Image | Callable[[], Image.Image]


@dataclass(frozen=True)
class GalleryItem:
    """One gallery tile: an image (or a loader, so a gallery never holds the whole pool)."""

    image: ImageSource
    boxes: Sequence[BoxLike] = ()
    labels: Sequence[str] = ()
    scores: Sequence[float] = ()
    caption: str = ""
    texts: Sequence[str] | None = None
    """Per-box text overriding ``"label | score"``, e.g. :func:`margin_text` for margins."""


def detection_text(label: str, score: float) -> str:
    """The notebook's least-confidence overlay text."""
    return f"{label} | {score:.3f}"


def margin_text(first: str, second: str, margin: float) -> str:
    """The least-margin overlay text: the two competing classes and their score gap."""
    return f"{first} - {second}  {margin:.4g}"  # margins can be tiny: keep significant digits


def draw_detections(
    image: Image.Image,
    boxes: Sequence[BoxLike],
    labels: Sequence[str],
    scores: Sequence[float],
    *,
    color: str = "yellow",
    width: int = 3,
    font_size: int | None = None,
) -> Image.Image:
    """A copy of ``image`` (RGB) with each box and its ``"label | score"`` above it."""
    _require_same_length(boxes, labels=labels, scores=scores)
    texts = [detection_text(label, score) for label, score in zip(labels, scores)]
    return draw_boxes(image, boxes, texts, color=color, width=width, font_size=font_size)


def draw_margins(
    image: Image.Image,
    boxes: Sequence[BoxLike],
    label_pairs: Sequence[tuple[str, str]],
    margins: Sequence[float],
    *,
    color: str = "yellow",
    width: int = 3,
    font_size: int | None = None,
) -> Image.Image:
    """A copy of ``image`` with each box labelled ``"label1 - label2  margin"``."""
    _require_same_length(boxes, label_pairs=label_pairs, margins=margins)
    texts = [margin_text(first, second, m) for (first, second), m in zip(label_pairs, margins)]
    return draw_boxes(image, boxes, texts, color=color, width=width, font_size=font_size)


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[BoxLike],
    texts: Sequence[str],
    *,
    color: str = "yellow",
    width: int = 3,
    font_size: int | None = None,
) -> Image.Image:
    """A copy of ``image`` converted to RGB, with boxes first and their texts on top."""
    _require_same_length(boxes, texts=texts)
    canvas = image.convert("RGB")  # always a new image: grayscale, RGBA, palette all work
    draw = ImageDraw.Draw(canvas)
    font = load_font(font_size or auto_font_size(canvas.size))
    corners = [box_xyxy(box, index) for index, box in enumerate(boxes)]
    for xmin, ymin, xmax, ymax in corners:
        draw.rectangle((xmin, ymin, xmax, ymax), outline=color, width=width)
    for (xmin, ymin, _, _), text in zip(corners, texts):
        _draw_label(draw, canvas.size, (xmin, ymin), text, font)
    return canvas


def gallery(
    items: Sequence[GalleryItem],
    *,
    columns: int = 4,
    thumb_size: int = 256,
    color: str = "yellow",
    width: int = 3,
) -> Image.Image:
    """A grid of drawn thumbnails, each with its caption underneath.

    Images are loaded, drawn and shrunk one at a time. An image that cannot be loaded becomes
    a tile saying so, because one bad image must not lose the whole gallery.
    """
    if columns < 1 or thumb_size < 32:
        raise ValueError(
            f"gallery needs columns >= 1 and thumb_size >= 32, got {columns} and {thumb_size}"
        )
    font = load_font(max(10, thumb_size // 20))
    caption_height = _line_height(font) + 2 * TEXT_PADDING + 2
    if not items:
        return _message_image("no detections", (thumb_size, thumb_size // 2), font)
    cols = min(columns, len(items))
    rows = math.ceil(len(items) / cols)
    tile = (thumb_size, thumb_size + caption_height)
    grid = Image.new("RGB", (cols * tile[0], rows * tile[1]), CAPTION_BACKGROUND)
    for index, item in enumerate(items):
        thumb = _thumbnail(item, thumb_size - 2 * TILE_GAP, color, width)
        origin = ((index % cols) * tile[0], (index // cols) * tile[1])
        offset = ((thumb_size - thumb.width) // 2, (thumb_size - thumb.height) // 2)
        grid.paste(thumb, (origin[0] + offset[0], origin[1] + offset[1]))
        _draw_caption(ImageDraw.Draw(grid), item.caption, origin, tile, caption_height, font)
    return grid


def to_png(image: Image.Image) -> bytes:
    """PNG bytes of an image, for writing next to a report or embedding in it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_jpeg(image: Image.Image, quality: int = 80) -> bytes:
    """JPEG bytes (RGB): photos and thumbnails at a fraction of their PNG size."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail_jpeg(source: ImageSource, size: int = 96) -> bytes | None:
    """A JPEG of the image shrunk to fit ``size`` pixels; None when it cannot be loaded."""
    try:
        small, _ = _shrink(source, size)
    except LOAD_ERRORS:
        return None
    return to_jpeg(small)


def box_xyxy(box: BoxLike, index: int = 0) -> Box:
    """``(xmin, ymin, xmax, ymax)`` of a box; rejects non-finite or inverted boxes."""
    if isinstance(box, Mapping):
        missing = {"xmin", "ymin", "xmax", "ymax"} - set(box)
        if missing:
            raise ValueError(f"box #{index} {box!r} lacks {sorted(missing)}")
        values = tuple(float(box[key]) for key in ("xmin", "ymin", "xmax", "ymax"))
    else:
        values = tuple(float(value) for value in box)
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"box #{index} {box!r} must be 4 finite numbers xmin, ymin, xmax, ymax")
    xmin, ymin, xmax, ymax = values
    if xmin > xmax or ymin > ymax:
        raise ValueError(f"box #{index} {box!r} has xmin > xmax or ymin > ymax")
    return xmin, ymin, xmax, ymax


def auto_font_size(size: tuple[int, int]) -> int:
    """A text size that stays legible on thumbnails and unobtrusive on large photos."""
    return int(min(32, max(10, round(min(size) / 36))))


def load_font(size: int) -> Font:
    """Pillow's bundled scalable font (no system font needed), bitmap font as last resort."""
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _draw_label(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    corner: tuple[float, float],
    text: str,
    font: Font,
) -> None:
    """Text on a dark box just above ``corner`` (the box's top-left), clamped inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    box_w, box_h = right - left + 2 * TEXT_PADDING, bottom - top + 2 * TEXT_PADDING
    x = min(max(corner[0], 0), max(size[0] - box_w, 0))
    y = min(max(corner[1] - box_h, 0), max(size[1] - box_h, 0))
    draw.rectangle((x, y, x + box_w - 1, y + box_h - 1), fill=TEXT_BACKGROUND)
    draw.text((x + TEXT_PADDING - left, y + TEXT_PADDING - top), text, fill=TEXT_COLOR, font=font)


def _thumbnail(item: GalleryItem, thumb_size: int, color: str, width: int) -> Image.Image:
    """The item's image shrunk to fit ``thumb_size`` and drawn at that scale (legible text)."""
    try:
        small, scale = _shrink(item.image, thumb_size)
    except LOAD_ERRORS as error:
        font = load_font(max(10, thumb_size // 20))
        return _message_image(f"cannot load image: {stable_text(error)}",
                              (thumb_size, thumb_size), font)
    boxes = [tuple(v * scale for v in box_xyxy(box, i)) for i, box in enumerate(item.boxes)]
    texts = item.texts
    if texts is None:
        _require_same_length(item.boxes, labels=item.labels, scores=item.scores)
        texts = [detection_text(label, score) for label, score in zip(item.labels, item.scores)]
    return draw_boxes(small, boxes, texts, color=color, width=width)


def _shrink(source: ImageSource, thumb_size: int) -> tuple[Image.Image, float]:
    """An RGB copy fitting ``thumb_size`` and its scale; a loaded image is closed after use."""
    image = source() if callable(source) else source
    try:
        scale = min(1.0, thumb_size / max(image.size))
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.convert("RGB").resize(size, Image.Resampling.BILINEAR), scale
    finally:
        if image is not source:
            image.close()


def _draw_caption(
    draw: ImageDraw.ImageDraw,
    caption: str,
    origin: tuple[int, int],
    tile: tuple[int, int],
    caption_height: int,
    font: Font,
) -> None:
    """The caption, shortened with "..." to fit the tile's width."""
    text = _fit(draw, caption, tile[0] - 2 * TEXT_PADDING, font)
    y = origin[1] + tile[1] - caption_height + TEXT_PADDING
    draw.text((origin[0] + TEXT_PADDING, y), text, fill=CAPTION_COLOR, font=font)


def _fit(draw: ImageDraw.ImageDraw, text: str, max_width: int, font: Font) -> str:
    """``text`` or its longest prefix plus "..." that is at most ``max_width`` pixels wide."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def _message_image(message: str, size: tuple[int, int], font: Font) -> Image.Image:
    """A plain tile carrying a short message instead of a picture."""
    image = Image.new("RGB", size, TILE_BACKGROUND)
    draw = ImageDraw.Draw(image)
    text = _fit(draw, message, size[0] - 4 * TEXT_PADDING, font)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    position = ((size[0] - (right - left)) // 2 - left, (size[1] - (bottom - top)) // 2 - top)
    draw.text(position, text, fill=TEXT_COLOR, font=font)
    return image


def _line_height(font: Font) -> int:
    """Pixel height of one line of text, including descenders."""
    _, top, _, bottom = font.getbbox("Ag|y")
    return bottom - min(top, 0)


def _require_same_length(boxes: Sequence[object], **others: Sequence[object]) -> None:
    """Every per-box sequence must pair up with the boxes, or texts would land on wrong boxes."""
    for name, values in others.items():
        if len(values) != len(boxes):
            raise ValueError(f"got {len(boxes)} boxes but {len(values)} {name}; give one per box")
