"""Check that every listed image exists and decodes, before anything downstream relies on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from al_assets.core.errors import AlAssetsError
from al_assets.core.images import DEFAULT_MAX_PIXELS, decode_rgb
from al_assets.core.storage.objects import ObjectStore, join_uri

VerifyMode = Literal["none", "exists", "decode"]


def image_problems(
    images: Sequence[dict[str, Any]],
    image_root: str,
    objects: ObjectStore,
    *,
    mode: VerifyMode = "decode",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, str]:
    """``{image_id: reason}`` for images that are missing, truncated, not images or too big.

    ``decode`` reads and decodes every file (catches truncation; costs one read of the pool),
    ``exists`` only stats/HEADs it (for very large pools), ``none`` trusts the JSON. Threads
    overlap I/O and decoding (both release the GIL). ``progress(done, total)`` is called per
    image (a large file's verification is the long part of its ingestion).
    """
    if mode == "none":
        return {}

    def check(image: dict[str, Any]) -> tuple[int, str | None]:
        uri = join_uri(image_root, image["file_name"].replace("\\", "/"))
        try:
            if mode == "exists":
                objects.info(uri)
            else:
                decode_rgb(
                    objects.read_bytes(uri), uri,
                    expected_size=(image["width"], image["height"]), max_pixels=max_pixels,
                )
        except FileNotFoundError:
            return image["id"], f"image file {uri} not found; fix file_name or add the file"
        except AlAssetsError as exc:
            return image["id"], str(exc)
        return image["id"], None

    problems: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, (image_id, reason) in enumerate(pool.map(check, images), 1):
            if reason:
                problems[image_id] = reason
            if progress is not None:
                progress(done, len(images))
    return problems
