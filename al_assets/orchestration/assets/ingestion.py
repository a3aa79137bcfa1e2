"""Ingestion assets: one COCO annotation file (a batch) -> categories, images, annotations, rejects."""


from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pyarrow as pa

from al_assets.core import schemas
from al_assets.core.coco.categories import merge_categories
from al_assets.core.coco.ingest import IngestOptions, ingest_batch
from al_assets.core.coco.parse import RecordWarning
from al_assets.core.coco.verify import VerifyMode
from al_assets.core.images import DEFAULT_MAX_PIXELS
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
    max_json_mb: int = 2048
    """Refuse annotation files larger than this (parsing needs ~10x the size in memory)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Reject images whose header declares more pixels (decompression-bomb guard); raise it for
    real gigapixel images (Pillow's own lower limit is raised with it)."""


def _spec(name: str, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        name, description=description, group_name=INGESTION, kinds={"parquet", "python"},
        owners=OWNERS, partitions_def=batch_partitions,
    )


@dg.multi_asset(
    specs=[
        _spec("categories", "Categories (id, name, supercategory) of each batch."),
        _spec("images", "Images by reference (uri, size, batch, shard); pixels are not copied."),
        _spec("annotations", "Boxes (xyxy + COCO xywh), labels, crowd flags, RLE masks."),
        _spec("ingestion_rejects", "Records left out of the batch, with the reason."),
    ],
    partitions_def=batch_partitions,
    description="Read one COCO instances file with pycocotools into Parquet tables.",
)
def coco_batch(
    context: dg.AssetExecutionContext,
    config: IngestionConfig,
    storage: StorageResource,
    coco_source: CocoSourceResource,
) -> Iterator[dg.MaterializeResult]:
    batch = context.partition_key
    store = storage.tables()
    tables = ingest_batch(
        coco_source.annotation_uri(batch),
        coco_source.image_root(),
        batch,
        coco_source.objects(),
        IngestOptions(
            limit=config.limit, shard_size=config.shard_size, verify=config.verify_images,
            max_json_bytes=config.max_json_mb * 1024**2, max_pixels=config.max_pixels,
        ),
        known_image_ids=_image_ids_of_other_batches(store, batch),
    )
    merge_categories(_categories_of_other_batches(store, batch), tables.categories)
    for reject in tables.rejects.slice(0, 20).to_pylist():
        context.log.warning(
            f"rejected {reject['record_type']} {reject['record_id']}: {reject['reason']}")
    for warning in tables.warnings[:20]:
        context.log.warning(
            f"kept {warning.record_type} {warning.record_id}, but: {warning.message}")
    shards = sorted(set(tables.images["shard"].to_pylist()))
    yield _write(store, "ingestion_rejects", tables.rejects, batch, reasons=True)
    yield _write(store, "annotations", tables.annotations, batch, counts="label",
                 warnings=tables.warnings)
    yield _write(store, "categories", tables.categories, batch)
    yield _write(store, "images", tables.images, batch, counts="shard")
    new_shards = add_partitions(context.instance, SHARD, shards)
    context.log.info(f"batch {batch}: {tables.images.num_rows} images in shards {shards} "
                     f"({len(new_shards)} new)")


def _write(
    store: TableStore, name: str, table: pa.Table, batch: str, *, counts: str | None = None,
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
    return dg.MaterializeResult(asset_key=name, metadata=metadata)


def _warning_summary(warnings: list[RecordWarning], first: int = 10) -> dict[str, Any]:
    """``{kind: {count, first_ids}}``: kept records that deserve a look (e.g. area > box)."""
    ids: dict[str, list[int]] = defaultdict(list)
    for warning in warnings:
        ids[warning.kind].append(warning.record_id)
    return {kind: {"count": len(of_kind), "first_ids": of_kind[:first]}
            for kind, of_kind in sorted(ids.items())}


def _image_ids_of_other_batches(store: TableStore, batch: str) -> set[int]:
    others = [p for p in store.partitions("images") if p != batch]
    ids = store.read_many("images", others, ["image_id"], schema=schemas.IMAGES)
    return set(ids["image_id"].to_pylist())


def _categories_of_other_batches(store: TableStore, batch: str) -> pa.Table:
    others = [p for p in store.partitions("categories") if p != batch]
    return store.read_many("categories", others, schema=schemas.CATEGORIES)
