"""Exceptions users see. Each message names the file or record and says what to do."""

from __future__ import annotations


class AlAssetsError(Exception):
    """Base class of every error al_assets raises on purpose."""


class StorageError(AlAssetsError):
    """A table, object or image could not be read or written."""


class CocoFormatError(AlAssetsError):
    """An annotation file is missing, not JSON, or not COCO instances format."""


class ImageDecodeError(AlAssetsError):
    """An image is missing, truncated, not an image, or too large to decode safely."""
