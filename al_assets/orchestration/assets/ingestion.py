"""Ingestion assets: one COCO annotation file (a batch) -> categories, images, annotations, rejects."""


from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pyarrow as pa

from al_assets.core import schemas
from al_assets.core.coco.categories import merge_categories
from al_assets.core.coco.ingest import (
    IngestOptions,
    annotation_file_info,
    batch_fingerprint,
    ingest_batch,
)
from al_assets.core.coco.parse import RecordWarning
from al_assets.core.coco.reader import DEFAULT_MAX_JSON_BYTES
from al_assets.core.coco.verify import VerifyMode
from al_assets.core.images import DEFAULT_MAX_PIXELS
from al_assets.core.progress import throttled
from al_assets.core.sharding import DEFAULT_SHARD_SIZE
from al_assets.core.storage import TableStore
from al_assets.orchestration.metadata import counts_metadata, table_metadata
from al_assets.orchestration.partitions import SHARD, add_partitions, batch_partitions
from al_assets.orchestration.resources import CocoSourceResource, StorageResource

INGESTION = "ingestion"
OWNERS = ["team:data-platform"]


class IngestionConfig(dg.Config):
    limit: int | None = None
    """Keep only the first N images of the batch (the notebook's coco_1k subset)."""
    shard_size: int = DEFAULT_SHARD_SIZE
    """Images per prediction shard (one shard = one prediction partition = one GPU slot)."""
    verify_images: VerifyMode = "decode"
    """decode: read every image (catches truncated files); exists: only check presence."""
    max_json_mb: int = DEFAULT_MAX_JSON_BYTES // 1024**2
    """Refuse annotation files larger than this (parsing needs ~10x the size in memory)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Reject images whose header declares more pixels (decompression-bomb guard); raise it for
    real gigapixel images (Pillow's own lower limit is raised with it)."""
    force: bool = False
    """Re-read the batch even if its file and these options are unchanged since the last
    ingestion (e.g. after replacing images on disk under the same annotation file)."""

    def options(self) -> IngestOptions:
        return IngestOptions(
            limit=self.limit, shard_size=self.shard_size, verify=self.verify_images,
            max_json_bytes=self.max_json_mb * 1024**2, max_pixels=self.max_pixels,
        )


def _spec(name: str, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        name, description=description, group_name=INGESTION, kinds={"parquet", "python"},
        owners=OWNERS, partitions_def=batch_partitions, skippable=True,  # unchanged: skip
    )


@dg.multi_asset(
    specs=[
        _spec("categories", "Categories (id, name, supercategory) of each batch."),
        _spec("images", "Images by reference (uri, size, batch, shard); pixels are not copied."),
        _spec("annotations", "Boxes (xyxy + COCO xywh), labels, crowd flags, RLE masks."),
        _spec("ingestion_rejects", "Records left out of the batch, with the reason."),
    ],
    partitions_def=batch_partitions,
    description="Read one COCO instances file (pycocotools' validation rules) into Parquet "
                "tables.",
)
def ingestion(
    context: dg.AssetExecutionContext,
    config: IngestionConfig,
    storage: StorageResource,
    coco_source: CocoSourceResource,
) -> Iterator[dg.MaterializeResult]:
    batch = context.partition_key
    store = storage.tables()
    uri, options = coco_source.annotation_uri(batch), config.options()
    fingerprint = batch_fingerprint(annotation_file_info(uri, coco_source.objects()), options)
    if not config.force and _unchanged(context, store, batch, fingerprint):
        context.log.info(f"batch {batch} unchanged since its last ingestion (same file, same "
                         "options): nothing rewritten (config force: true re-reads it)")
        return
    tables = ingest_batch(
        uri, coco_source.image_root(), batch, coco_source.objects(), options,
        known_image_ids=_image_ids_of_other_batches(store, batch),
        progress=throttled(context.log.info, f"verifying {batch}'s images"),
    )
    merge_categories(_categories_of_other_batches(store, batch), tables.categories)
    for reject in tables.rejects.slice(0, 20).to_pylist():
        context.log.warning(
            f"rejected {reject['record_type']} {reject['record_id']}: {reject['reason']}")
    for warning in tables.warnings[:20]:
        context.log.warning(
            f"kept {warning.record_type} {warning.record_id}, but: {warning.message}")
    shards = sorted(set(tables.images["shard"].to_pylist()))
    version = dg.DataVersion(fingerprint)
    yield _write(store, "ingestion_rejects", tables.rejects, batch, version, reasons=True)
    yield _write(store, "annotations", tables.annotations, batch, version, counts="label",
                 warnings=tables.warnings)
    yield _write(store, "categories", tables.categories, batch, version)
    images = _write(store, "images", tables.images, batch, version, counts="shard")
    # shards before the images event: a sensor tick in between saw the batch ingested with no
    # shard awaiting prediction, and the views refreshed twice (the daemon test at 5 s ticks)
    new_shards = add_partitions(context.instance, SHARD, shards)
    yield images
    context.log.info(f"batch {batch}: {tables.images.num_rows} images in shards {shards} "
                     f"({len(new_shards)} new)")


def _unchanged(context: dg.AssetExecutionContext, store: TableStore, batch: str,
               fingerprint: str) -> bool:
    """The last ingestion of this batch had the same fingerprint and its tables are still there."""
    record = context.instance.get_latest_data_version_record(dg.AssetKey("images"),
                                                             partition_key=batch)
    previous = record.asset_materialization.tags.get("dagster/data_version") if record and \
        record.asset_materialization else None
    return previous == fingerprint and batch in store.partitions("images")


def _write(
    store: TableStore, name: str, table: pa.Table, batch: str, version: dg.DataVersion, *,
    counts: str | None = None,
    reasons: bool = False, warnings: list[RecordWarning] | None = None,
) -> dg.MaterializeResult:
    uri = store.write(name, table, batch)
    metadata = table_metadata(table, uri)
    if counts:
        metadata[f"count_by_{counts}"] = counts_metadata(table, counts)
    if reasons:
        metadata["count_by_record_type"] = counts_metadata(table, "record_type")
    if warnings is not None:
        metadata["warnings"] = dg.MetadataValue.json(_warning_summary(warnings))
    return dg.MaterializeResult(asset_key=name, metadata=metadata, data_version=version)


def _warning_summary(warnings: list[RecordWarning], first: int = 10) -> dict[str, Any]:
    """``{kind: {count, first_ids}}``: kept records that deserve a look (e.g. area > box)."""
    ids: dict[str, list[int]] = defaultdict(list)
    for warning in warnings:
        ids[warning.kind].append(warning.record_id)
    return {kind: {"count": len(of_kind), "first_ids": of_kind[:first]}
            for kind, of_kind in sorted(ids.items())}


def _image_ids_of_other_batches(store: TableStore, batch: str) -> pa.ChunkedArray:
    """As Arrow (8 bytes an id): the core looks up only this batch's ids, no set of the pool."""
    others = [p for p in store.partitions("images") if p != batch]
    return store.read_many("images", others, ["image_id"], schema=schemas.IMAGES)["image_id"]


def _categories_of_other_batches(store: TableStore, batch: str) -> pa.Table:
    others = [p for p in store.partitions("categories") if p != batch]
    return store.read_many("categories", others, schema=schemas.CATEGORIES)
