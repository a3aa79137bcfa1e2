"""Ingest one COCO annotation file (one batch) from a local folder or S3 into Arrow tables."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from al_assets.core.coco.parse import drop_images, load_json, parse_coco
from al_assets.core.coco.tables import CocoTables, build_tables
from al_assets.core.coco.verify import VerifyMode, image_problems
from al_assets.core.errors import CocoFormatError
from al_assets.core.images import DEFAULT_MAX_PIXELS
from al_assets.core.sharding import DEFAULT_SHARD_SIZE
from al_assets.core.storage.objects import ObjectInfo, ObjectStore

DEFAULT_MAX_JSON_BYTES = 2 * 1024**3
INGEST_VERSION = "2"
"""Bump when the same file and options would give different tables (a new rule, a new column):
every batch is then re-read once."""


@dataclass(frozen=True)
class IngestOptions:
    limit: int | None = None  # keep the first N images (the notebook's coco_1k)
    shard_size: int = DEFAULT_SHARD_SIZE
    verify: VerifyMode = "decode"
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES  # json.loads needs ~10x the file size in RAM
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 8


def ingest_batch(
    annotation_uri: str,
    image_root: str,
    batch: str,
    objects: ObjectStore,
    options: IngestOptions = IngestOptions(),
    known_image_ids: Iterable[int] = (),
) -> CocoTables:
    """Read, validate and tabulate one batch; bad records become rejects, not failures."""
    document = load_json(_read_annotation_file(annotation_uri, objects, options), annotation_uri)
    parsed = parse_coco(
        document, annotation_uri, limit=options.limit, known_image_ids=known_image_ids
    )
    images = [parsed.coco.imgs[i] for i in parsed.image_order]
    drop_images(
        parsed,
        image_problems(
            images, image_root, objects, mode=options.verify, max_pixels=options.max_pixels,
            workers=options.workers,
        ),
    )
    if not parsed.image_order:
        reasons = "; ".join(r.reason for r in parsed.rejects[:3])
        raise CocoFormatError(
            f"{annotation_uri}: nothing usable, all {len(document['images'])} images rejected "
            f"(first reasons: {reasons or 'the file lists no images'})"
        )
    return build_tables(parsed, batch, image_root, options.shard_size)


def batch_fingerprint(file: ObjectInfo, options: IngestOptions) -> str:
    """What an ingestion's result depends on: the file's version (S3 ETag, or local mtime and
    size), the options that change the tables, and the ingestion code's version.

    It is the ``images`` data version: an unchanged batch ingested again has the same one, so
    nothing is rewritten and nothing downstream (predictions, views) recomputes.
    """
    settings = {k: v for k, v in asdict(options).items() if k != "workers"}  # speed only
    text = json.dumps([INGEST_VERSION, file.etag, file.size, settings], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def annotation_file_info(uri: str, objects: ObjectStore) -> ObjectInfo:
    """The file's version (for ``batch_fingerprint``), without reading it."""
    try:
        return objects.info(uri)
    except FileNotFoundError:
        raise _missing(uri) from None


def _read_annotation_file(uri: str, objects: ObjectStore, options: IngestOptions) -> bytes:
    try:
        return objects.read_bytes(uri, max_bytes=options.max_json_bytes)
    except FileNotFoundError:
        raise _missing(uri) from None


def _missing(uri: str) -> CocoFormatError:
    return CocoFormatError(f"annotation file {uri} not found (it does not exist): check the "
                           "source root (bucket) and its annotations folder")
