"""Exceptions users see. Each message names the file or record and says what to do."""

from __future__ import annotations

import re


class AlAssetsError(Exception):
    """Base class of every error al_assets raises on purpose."""


class SettingError(AlAssetsError, ValueError):
    """An environment setting has a value al_assets cannot use; the message names the variable."""


class StorageError(AlAssetsError):
    """A table, object or image could not be read or written."""


class CocoFormatError(AlAssetsError):
    """An annotation file is missing, not JSON, or not COCO instances format."""


class ImageDecodeError(AlAssetsError):
    """An image is missing, truncated, not an image, or too large to decode safely."""


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_text(exc: BaseException) -> str:
    """``str(exc)`` without memory addresses (``<_io.BytesIO object at 0x7f...>``).

    Reasons end up in tables and in reports that are compared between runs; an address would
    make the same bad file read differently every time.
    """
    return _ADDRESS.sub("", str(exc))
