"""Label assets: a labeling tool's export -> a label batch; every pool image's fixed split.

A label file dropped into ``<source>/labels/`` (Label Studio JSON export or COCO from any tool)
is one ``label_batch`` partition. Its boxes are ANNOTATIONS rows of batch ``labels-<stem>``;
earlier labels are never overwritten in place: ``splits`` (and training, the gate, the views)
read the *effective* labels, where the later label batch (by name) wins for an image it lists.
"""

from collections.abc import Iterator

import dagster as dg
import pyarrow as pa

from al_assets.core.coco.tables import rejects_table
from al_assets.core.labels import import_labels
from al_assets.core.pool import pool_categories, pool_labels, pool_table, relabel_notes
from al_assets.core.splits import splits_table
from al_assets.core.storage import TableStore
from al_assets.orchestration.automation import VIEW_REFRESH
from al_assets.orchestration.metadata import counts_metadata, table_metadata
from al_assets.orchestration.partitions import label_batch_partitions
from al_assets.orchestration.resources import CocoSourceResource, StorageResource

LABELS = "labels"
LABEL_TABLES = ("labeled_images", "label_annotations", "label_rejects")


def _spec(name: str, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(name, description=description, group_name=LABELS,
                        kinds={"parquet"}, partitions_def=label_batch_partitions,
                        deps=["images", "categories"])


@dg.multi_asset(
    name="label_import",
    specs=[
        _spec("labeled_images", "Pool images a label file labels (0 boxes = labeled empty)."),
        _spec("label_annotations", "The label file's boxes, in the ANNOTATIONS schema."),
        _spec("label_rejects", "Tasks, images and boxes of the label file left out, and why."),
    ],
    partitions_def=label_batch_partitions,
    description="Import one label file (Label Studio JSON export, or COCO from any tool) "
    "from <source>/labels/ as a new annotated batch, matched to the pool's images and classes.",
)
def label_import(
    context: dg.AssetExecutionContext, storage: StorageResource, coco_source: CocoSourceResource,
) -> Iterator[dg.MaterializeResult]:
    batch = context.partition_key
    store = storage.tables()
    uri = coco_source.label_uri(batch)
    images = pool_table(store, "images", ["image_id", "file_name", "uri", "width", "height"])
    imported = import_labels(coco_source.read_label_file(uri), uri, batch, images,
                             pool_categories(store))
    replaced = relabel_notes(store, batch, imported.labeled_images)
    rejects = pa.concat_tables([imported.rejects, rejects_table(replaced, batch, uri)])
    for row in rejects.slice(0, 20).to_pylist():
        context.log.warning(f"{row['record_type']} {row['record_id']}: {row['reason']}")
    yield _write(store, "label_rejects", rejects, batch, "record_type")
    yield _write(store, "label_annotations", imported.annotations, batch, "label")
    yield _write(store, "labeled_images", imported.labeled_images, batch, None,
                 format=imported.format, replaced_earlier_labels=len(replaced))
    context.log.info(f"{batch}: {imported.labeled_images.num_rows} images labeled, "
                     f"{imported.annotations.num_rows} boxes, {rejects.num_rows} rejects")


def _write(store: TableStore, name: str, table: pa.Table, batch: str, counts: str | None,
           **extra) -> dg.MaterializeResult:
    metadata = table_metadata(table, store.write(name, table, batch))
    if counts and table.num_rows:
        metadata[f"count_by_{counts}"] = counts_metadata(table, counts)
    return dg.MaterializeResult(asset_key=name, metadata={**metadata, **extra})


@dg.asset(
    group_name=LABELS, kinds={"parquet"},
    deps=["images", "annotations", "labeled_images", "label_annotations"],
    automation_condition=VIEW_REFRESH,
    description="Every pool image's split (train | heldout) by a stable hash of its id, never "
    "moved by new batches, with whether it is labeled and by which batch.",
)
def splits(storage: StorageResource) -> dg.MaterializeResult:
    store = storage.tables()
    images = pool_table(store, "images", ["image_id"])
    annotations, owners = pool_labels(store)
    table = splits_table(images, annotations, owners)
    metadata = table_metadata(table, store.write("splits", table))
    labeled = table.filter(table["labeled"])
    return dg.MaterializeResult(metadata={
        **metadata, "count_by_split": counts_metadata(table, "split"),
        "labeled_by_split": counts_metadata(labeled, "split") if labeled.num_rows else "none",
    })
