"""The pool as stored: every batch's tables read as one, the effective labels, the splits.

Why one module: every pool-wide step (views, queue, training, the gate, evaluation, the report)
reads the same few things from the table store (all ingest batches of a table, the labels with
later label batches applied, the fixed splits); reading them here keeps the schema, the
"both label tables written" rule and the missing-splits hint in one place.
"""

from __future__ import annotations

import pyarrow as pa

from al_assets.core import schemas
from al_assets.core.coco.categories import unique_categories
from al_assets.core.coco.parse import Reject
from al_assets.core.splits import effective_labels, label_owners
from al_assets.core.storage import TableStore


def pool_table(store: TableStore, name: str, columns: list[str] | None = None) -> pa.Table:
    """Every partition of table ``name`` (IMAGES, ANNOTATIONS, ...) as one table."""
    return store.read_many(name, store.partitions(name), columns,
                           schema=getattr(schemas, name.upper()))


def pool_categories(store: TableStore) -> pa.Table:
    """The pool's categories, one row per id, over every ingest batch."""
    return unique_categories(pool_table(store, "categories"))


def pool_labels(store: TableStore) -> tuple[pa.Table, pa.Table]:
    """(effective ANNOTATIONS, image_id -> label_batch) of the whole pool, label batches applied."""
    return effective_labels(pool_table(store, "annotations"), _imported(store))


def read_splits(store: TableStore) -> pa.Table:
    """The stored SPLITS table; an error that says what to materialize when it is missing."""
    try:
        return store.read("splits")
    except FileNotFoundError:
        raise FileNotFoundError(
            "no splits table yet: materialize the `splits` asset (group labels) first, e.g. "
            "`al-assets refresh`") from None


def relabel_notes(store: TableStore, batch: str, labeled: pa.Table) -> list[Reject]:
    """Notes for the images of label batch ``batch`` whose earlier labels (ingested, or of a
    batch named before it) it replaces; the earlier labels stay in their batch."""
    ingested = pool_table(store, "annotations", ["image_id", "batch"])
    earlier = [store.read("labeled_images", b, ["image_id", "batch"])
               for b in store.partitions("labeled_images") if b < batch]
    owner = label_owners(ingested, earlier)
    return [Reject("image", i, f"relabeled: replaces the labels of batch {owner[i]!r} "
                                "(kept there; the later export wins)")
            for i in labeled["image_id"].to_pylist() if i in owner]


def _imported(store: TableStore) -> list[tuple[pa.Table, pa.Table]]:
    """(labeled_images, label_annotations) of every label batch with both tables written."""
    complete = set(store.partitions("label_annotations"))
    return [(store.read("labeled_images", b), store.read("label_annotations", b))
            for b in store.partitions("labeled_images") if b in complete]
