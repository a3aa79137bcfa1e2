"""Ingest one COCO annotation file (one batch) from a local folder or S3 into Arrow tables."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from al_assets.core.coco.parse import Ids, drop_images, parse_coco
from al_assets.core.coco.reader import (
    DEFAULT_MAX_JSON_BYTES,
    gc_paused,
    missing_file,
    read_coco_json,
)
from al_assets.core.coco.tables import CocoTables, build_tables
from al_assets.core.coco.verify import VerifyMode, image_problems
from al_assets.core.errors import CocoFormatError
from al_assets.core.images import DEFAULT_MAX_PIXELS
from al_assets.core.sharding import DEFAULT_SHARD_SIZE
from al_assets.core.storage.files import file_digest
from al_assets.core.storage.objects import ObjectInfo, ObjectStore, is_s3, local_path

INGEST_VERSION = "2"
"""Bump when the same file and options would give different tables (a new rule, a new column):
every batch is then re-read once."""


@dataclass(frozen=True)
class IngestOptions:
    limit: int | None = None  # keep the first N images (the notebook's coco_1k)
    shard_size: int = DEFAULT_SHARD_SIZE
    verify: VerifyMode = "decode"
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES  # decoded, a file takes ~7x its size in RAM
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 8


def ingest_batch(
    annotation_uri: str,
    image_root: str,
    batch: str,
    objects: ObjectStore,
    options: IngestOptions = IngestOptions(),
    known_image_ids: Ids = (),
    progress: Callable[[int, int], None] | None = None,
) -> CocoTables:
    """Read, validate and tabulate one batch; bad records become rejects, not failures.

    ``known_image_ids``: the ids of earlier batches (best a sorted int64 array or an Arrow
    column: only this batch's ids are looked up in it). Memory peaks while the file is decoded
    (its bytes + the document); the rejected records are freed after validation and the
    polygons while they become RLE. ``progress(done, total)``: images verified so far.
    """
    with gc_paused():
        parsed = parse_coco(
            read_coco_json(annotation_uri, objects, max_bytes=options.max_json_bytes,
                           missing_hint=_MISSING_HINT),
            annotation_uri, limit=options.limit, known_image_ids=known_image_ids,
        )
        drop_images(
            parsed,
            image_problems(
                parsed.images, image_root, objects, mode=options.verify,
                max_pixels=options.max_pixels, workers=options.workers, progress=progress,
            ),
        )
        if not parsed.images:
            reasons = "; ".join(r.reason for r in parsed.rejects[:3])
            raise CocoFormatError(
                f"{annotation_uri}: nothing usable, all {parsed.listed_images} images rejected "
                f"(first reasons: {reasons or 'the file lists no images'})"
            )
        return build_tables(parsed, batch, image_root, options.shard_size)


def batch_fingerprint(file: ObjectInfo, options: IngestOptions) -> str:
    """What an ingestion's result depends on: the file's version (``annotation_file_info``: S3
    ETag or a local content hash), the options that change the tables, and the ingestion
    code's version.

    It is the ``images`` data version: an unchanged batch ingested again has the same one, so
    nothing is rewritten and nothing downstream (predictions, views) recomputes.
    """
    settings = {k: v for k, v in asdict(options).items() if k != "workers"}  # speed only
    text = json.dumps([INGEST_VERSION, file.etag, file.size, settings], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def annotation_file_info(uri: str, objects: ObjectStore) -> ObjectInfo:
    """The file's version (for ``batch_fingerprint``): on S3 its ETag (a hash of the content,
    no read); locally a SHA-256 of its bytes, because an mtime changes when an identical file
    is touched or copied again, and that must not re-ingest and re-predict (~1 s per GB)."""
    try:
        info = objects.info(uri)
    except FileNotFoundError:
        raise missing_file(uri, _MISSING_HINT) from None
    if is_s3(uri):
        return info
    return replace(info, etag=f"sha256:{file_digest(local_path(uri), 'sha256')}")


_MISSING_HINT = "check the source root (bucket) and its annotations folder"
