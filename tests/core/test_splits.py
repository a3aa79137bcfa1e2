"""The fixed split and the labels in force per image."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from al_assets.core import schemas
from al_assets.core.splits import (
    HELDOUT,
    TRAIN,
    effective_labels,
    ids_in,
    split_of,
    splits_table,
)


def _annotations(rows: list[tuple[int, int, str]]) -> pa.Table:
    """ANNOTATIONS rows (ann_id, image_id, batch), one 10x10 box of category 1 each."""
    n = len(rows)
    box = {"xmin": 0.0, "ymin": 0.0, "xmax": 10.0, "ymax": 10.0}
    return pa.Table.from_pylist([
        {"ann_id": a, "image_id": i, "category_id": 1, "label": "circle", "supercategory": None,
         "bbox": box, "bbox_xywh": [0.0, 0.0, 10.0, 10.0], "area": 100.0, "iscrowd": False,
         "segmentation": None, "batch": b} for a, i, b in rows], schema=schemas.ANNOTATIONS) \
        if n else schemas.ANNOTATIONS.empty_table()


def _labeled(image_ids: list[int], batch: str) -> pa.Table:
    return pa.Table.from_pylist([
        {"image_id": i, "batch": batch, "source": "f.json", "record_id": str(i), "n_boxes": 0,
         "format": "label_studio"} for i in image_ids], schema=schemas.LABELED_IMAGES)


def test_split_is_fixed_by_id_and_never_moves() -> None:
    ids = np.arange(1, 20001)
    split = split_of(ids)
    assert abs(np.mean(split == HELDOUT) - 0.2) < 0.01
    assert split_of(ids[:10]).tolist() == split[:10].tolist()  # the pool's size changes nothing
    grown = split_of(np.concatenate([ids, np.arange(50000, 60000)]))
    assert grown[: ids.size].tolist() == split.tolist()  # new images never move old ones
    # pinned values: a change of the hash would silently reshuffle every deployment's split
    assert split_of(np.arange(10)).tolist() == [
        TRAIN, HELDOUT, TRAIN, HELDOUT, TRAIN, TRAIN, TRAIN, TRAIN, HELDOUT, TRAIN]
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_of(ids, 1.0)


def test_the_later_label_batch_wins_and_nothing_is_deleted() -> None:
    ingested = _annotations([(1, 10, "batch-000"), (2, 10, "batch-000"), (3, 11, "batch-000")])
    first = (_labeled([11, 12], "labels-a"), _annotations([(100, 11, "labels-a")]))
    second = (_labeled([10], "labels-b"), _annotations([]))  # image 10 relabeled as empty
    annotations, owners = effective_labels(ingested, [first, second])
    in_force = sorted(zip(annotations["image_id"].to_pylist(), annotations["batch"].to_pylist()))
    assert in_force == [(11, "labels-a")]  # 10: emptied by labels-b; 11: replaced by labels-a
    owner = dict(zip(owners["image_id"].to_pylist(), owners["label_batch"].to_pylist()))
    assert owner == {10: "labels-b", 11: "labels-a", 12: "labels-a"}
    assert ingested.num_rows == 3  # the earlier labels stay in their own batch

    images = pa.table({"image_id": pa.array([10, 11, 12, 13], pa.int64())})
    table = splits_table(images, annotations, owners)
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert rows[10]["labeled"] and rows[10]["n_boxes"] == 0  # labeled empty is labeled
    assert rows[12]["labeled"] and not rows[13]["labeled"] and rows[13]["label_batch"] is None
    assert rows[11]["n_boxes"] == 1
    assert sorted(ids_in(table, TRAIN, labeled=False).to_pylist() +
                  ids_in(table, HELDOUT, labeled=False).to_pylist()) == [13]


def test_the_pool_as_stored_applies_complete_label_batches_and_notes_relabels(tmp_path) -> None:
    from al_assets.core.pool import pool_labels, read_splits, relabel_notes
    from al_assets.core.storage import TableStore

    store = TableStore(tmp_path)
    store.write("annotations", _annotations([(1, 10, "batch-000"), (2, 11, "batch-000")]),
                "batch-000")
    store.write("annotations", _annotations([(3, 12, "batch-001")]), "batch-001")
    store.write("labeled_images", _labeled([11], "labels-a"), "labels-a")
    store.write("label_annotations", _annotations([(100, 11, "labels-a")]), "labels-a")
    store.write("labeled_images", _labeled([10], "labels-b"), "labels-b")  # no boxes table yet
    annotations, owners = pool_labels(store)
    in_force = sorted(zip(annotations["image_id"].to_pylist(), annotations["batch"].to_pylist()))
    assert in_force == [(10, "batch-000"), (11, "labels-a"), (12, "batch-001")]  # b: incomplete
    assert dict(zip(owners["image_id"].to_pylist(), owners["label_batch"].to_pylist())) == {
        10: "batch-000", 11: "labels-a", 12: "batch-001"}
    notes = relabel_notes(store, "labels-c", _labeled([11, 12, 13], "labels-c"))
    assert [(n.record_id, n.reason.split(" (")[0]) for n in notes] == [
        (11, "relabeled: replaces the labels of batch 'labels-a'"),
        (12, "relabeled: replaces the labels of batch 'batch-001'")]  # 13: never labeled
    with pytest.raises(FileNotFoundError, match="materialize the `splits` asset"):
        read_splits(store)
