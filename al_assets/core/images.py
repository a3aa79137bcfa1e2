"""Safe image decoding: size guard first, JPEG through torchvision.io, everything else via PIL.

Real pools contain CMYK and 16-bit files, palettes, EXIF-rotated phone pictures, truncated
uploads and the odd decompression bomb. Every such file either decodes to an RGB ``uint8``
tensor (3, H, W) or raises :class:`ImageDecodeError` naming the URI and the reason; nothing
here ever allocates pixels for an image whose header declares more than ``max_pixels``.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch loads at the first decode: ingestion imports this module for its
    import torch  # size guard and must not pay torch's ~4 s import (issue 15)

from al_assets.core.errors import ImageDecodeError, stable_text

DEFAULT_MAX_PIXELS = 100_000_000  # 10k x 10k; COCO's largest is 640 x 640
MAX_PIXELS_HOW = (  # where users set it: the ingestion config
    "ingest config field max_pixels, e.g. launchpad ops: {ingestion: {config: {max_pixels: N}}}"
)
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}


@dataclass(frozen=True)
class ImageHeader:
    format: str | None
    mode: str
    width: int
    height: int
    exif_orientation: int


def read_header(data: bytes, uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Parse only the header (no pixel allocation) and refuse oversized images."""
    if not data:
        raise ImageDecodeError(f"{uri}: empty file (0 bytes); re-export or remove the image")
    try:
        with warnings.catch_warnings(), _pillow_guard_at_least(max_pixels):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _check_size(img.size, uri, max_pixels)
                header = ImageHeader(img.format, img.mode, *img.size, _exif_orientation(img))
    except Image.DecompressionBombError as exc:  # Pillow's guard (>= ours) refuses > 2x its own
        raise ImageDecodeError(
            f"{uri}: declares over twice the limit of {max_pixels:,} pixels (decompression-bomb "
            f"guard); if this is a real image raise max_pixels ({MAX_PIXELS_HOW})"
        ) from exc
    except UnidentifiedImageError as exc:  # its text holds the BytesIO's address: not stable
        raise ImageDecodeError(
            f"{uri}: not a readable image (no image format recognized in its {len(data):,} "
            "bytes); replace the file or remove the image from the annotation file"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"{uri}: not a readable image ({stable_text(exc)})") from exc
    return header


def _exif_orientation(img: Image.Image) -> int:
    """Orientation from the header's EXIF, without touching pixels.

    ``PngImageFile.getexif`` decodes the whole image to look for an eXIf chunk after the pixel
    data, so the base class's reader is used: it sees the chunks before the pixels only (an
    orientation stored after them is rare and is then ignored).
    """
    return int(Image.Image.getexif(img).get(_EXIF_ORIENTATION, 1) or 1)


def _check_size(size: tuple[int, int], uri: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{uri}: image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{uri}: declares {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (decompression-bomb guard); if this is a real image raise "
            f"max_pixels to at least {width * height} ({MAX_PIXELS_HOW})"
        )


def ingested_limit(size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The pixel guard for an image ingestion already verified at ``size`` (its IMAGES row):
    at least that size, so a ``max_pixels`` raised for ingestion also holds in prediction and
    training without being set again. The decoded size must still equal ``size``."""
    return max(max_pixels, int(size[0]) * int(size[1]))


def decode_rgb(
    data: bytes,
    uri: str,
    *,
    expected_size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Decode to an RGB uint8 tensor (3, H, W) in the orientation the annotations refer to.

    EXIF orientation is applied only when it turns the stored size into ``expected_size``
    (the COCO record's width/height): annotations are drawn on the image as the labelling tool
    showed it, and that is the only evidence of which orientation it used.
    """
    header = read_header(data, uri, max_pixels)
    apply_exif = _should_apply_exif(header, expected_size)
    try:
        if header.format == "JPEG" and header.mode in {"RGB", "L"} and not apply_exif:
            import torch
            from torchvision.io import ImageReadMode, decode_jpeg

            tensor = decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
        else:
            with _pillow_guard_at_least(max_pixels):
                tensor = _decode_with_pil(data, apply_exif)
    except (OSError, RuntimeError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(
            f"{uri}: cannot decode ({stable_text(exc)}); the file is truncated or corrupt"
        ) from exc
    if expected_size is not None and (tensor.shape[2], tensor.shape[1]) != tuple(expected_size):
        raise ImageDecodeError(
            f"{uri}: decoded size {tensor.shape[2]}x{tensor.shape[1]} differs from the declared "
            f"{expected_size[0]}x{expected_size[1]}; fix width/height in the annotation file"
        )
    return tensor


_guard_lock = threading.Lock()
_guard_needs: list[int] = []  # max_pixels of the decodes running now
_guard_base: int | None = None  # Pillow's limit before the first of them started


@contextmanager
def _pillow_guard_at_least(max_pixels: int) -> Iterator[None]:
    """Raise Pillow's own bomb guard to ``max_pixels`` while this decode runs.

    Pillow refuses images over ``2 * Image.MAX_IMAGE_PIXELS`` (178,956,970 by default) in
    ``open`` and in some plugins' ``load``, so a ``max_pixels`` above it could never work. Its
    limit is a process-wide global with no per-call override, hence: raise it (never disable
    it: it stays a backstop for other threads), under a lock, to the largest ``max_pixels`` of
    the decodes running now, and restore it when the last one ends. Our exact check on the
    header (:func:`read_header`) remains the guard that decides.
    """
    global _guard_base
    with _guard_lock:
        if not _guard_needs:
            _guard_base = Image.MAX_IMAGE_PIXELS
        _guard_needs.append(max_pixels)
        _set_pillow_guard()
    try:
        yield
    finally:
        with _guard_lock:
            _guard_needs.remove(max_pixels)
            _set_pillow_guard()


def _set_pillow_guard() -> None:
    if _guard_base is None:  # someone disabled Pillow's guard; leave it so
        return
    Image.MAX_IMAGE_PIXELS = max([_guard_base, *_guard_needs])


def _should_apply_exif(header: ImageHeader, expected: tuple[int, int] | None) -> bool:
    if header.exif_orientation not in _SWAPS_AXES or expected is None:
        return False
    stored = (header.width, header.height)
    return stored != tuple(expected) and (header.height, header.width) == tuple(expected)


def _decode_with_pil(data: bytes, apply_exif: bool) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if apply_exif:
            img = ImageOps.exif_transpose(img)
        array = _to_rgb_array(img)
    import torch

    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """RGB uint8 from any PIL mode; 16/32-bit images are scaled by their range, not clipped."""
    if img.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        values = np.asarray(img, dtype=np.float64)
        top = values.max() if values.size and values.max() > 255 else 255.0
        gray = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in {"RGBA", "LA", "PA"} or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return np.asarray(background)
    return np.asarray(img.convert("RGB"))
