"""Find annotation files (one per ingest batch) under a local folder or an S3 prefix."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from al_assets.core.storage.objects import ObjectInfo, ObjectStore

_BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=@+-]*$")


@dataclass(frozen=True)
class BatchFile:
    batch: str
    info: ObjectInfo


def batch_name(uri: str) -> str | None:
    """``.../annotations/batch-007.json`` -> ``batch-007``; None if unusable as a partition key."""
    stem = uri.rsplit("/", 1)[-1].removesuffix(".json")
    return stem if _BATCH_NAME.fullmatch(stem) and ".." not in stem else None


def list_batch_files(
    objects: ObjectStore, annotations_uri: str, *, start_after: str | None = None,
    page_size: int = 1000,
) -> tuple[list[BatchFile], list[str], str | None, bool]:
    """One page of annotation files after ``start_after``.

    Returns (batches, skipped uris with unusable names, last uri seen, more pages left).
    """
    page, truncated = objects.list(
        annotations_uri, suffix=".json", start_after=start_after, max_keys=page_size
    )
    batches, skipped = [], []
    for info in page:
        name = batch_name(info.uri)
        if name is None:
            skipped.append(info.uri)
        else:
            batches.append(BatchFile(name, info))
    last = page[-1].uri if page else start_after
    return batches, skipped, last, truncated


@dataclass(frozen=True)
class Page:
    batches: list[BatchFile]
    skipped: list[str]  # uris whose names are unusable as batch names
    cursor: str | None  # where the next listing resumes; None after the last page


def batch_pages(
    objects: ObjectStore, folder: str, *, start_after: str | None = None,
    page_size: int = 1000, deadline: float | None = None,
) -> Iterator[Page]:
    """Every page of annotation files after ``start_after``, until the last or ``deadline``
    (``time.monotonic()``; a sensor tick resumes from the last page's cursor next time).
    ``FileNotFoundError`` when ``folder`` does not exist."""
    while deadline is None or time.monotonic() < deadline:
        batches, skipped, start_after, more = list_batch_files(
            objects, folder, start_after=start_after, page_size=page_size)
        yield Page(batches, skipped, start_after if more else None)
        if not more:
            return
