"""The fixed evaluation split, and which labels count for each image.

Why a hash and not a random draw: a held-out set must never move. If new batches reshuffled it,
a model could be evaluated on images it was trained on, and mAP of different rounds would be
measured on different images. ``split_of`` is a pure function of the image id (the same
splitmix64 hash as sharding, salted so that split and shard are independent), so an image is
train or held-out forever, whatever arrives later. Every pool image has a split, labeled or not:
the queue never offers a held-out image, so the labeled training set only grows on the train side.

Labels come from two places: ground truth ingested with a batch (ANNOTATIONS of ingest batches)
and label files imported later (LABELED_IMAGES + ANNOTATIONS of label batches). An image's
*effective* labels are those of the latest label batch that labels it, else its ingested ones;
nothing is deleted, so every earlier answer stays readable in its own batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.defaults import DEFAULT_HELDOUT_FRACTION
from al_assets.core.sharding import stable_hash

TRAIN, HELDOUT = "train", "heldout"
_SPLIT_SALT = 0x5EED_5B17  # keeps split independent of the shard hash of the same id


def split_of(image_ids: np.ndarray, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> np.ndarray:
    """``"train"``/``"heldout"`` per image id; fixed for a given fraction, on every machine."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    ids = np.asarray(image_ids, dtype=np.int64)
    unit = (stable_hash(ids ^ np.int64(_SPLIT_SALT)) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return np.where(unit < heldout_fraction, HELDOUT, TRAIN)


def effective_labels(
    ingested: pa.Table, label_batches: Sequence[tuple[pa.Table, pa.Table]]
) -> tuple[pa.Table, pa.Table]:
    """(ANNOTATIONS in force, image_id -> label batch) after applying label batches in order.

    ``ingested``: ANNOTATIONS of the ingest batches; ``label_batches``: (LABELED_IMAGES,
    ANNOTATIONS) per imported label file, oldest first: a later file that labels an image
    replaces that image's boxes (the later export wins); images it does not list keep theirs.
    """
    owner = label_owners(ingested, [labeled for labeled, _ in label_batches])
    parts = [ingested, *(annotations for _, annotations in label_batches)]
    everything = pa.concat_tables([p.select(schemas.ANNOTATIONS.names).cast(schemas.ANNOTATIONS)
                                   for p in parts])
    ids, batches = everything["image_id"].to_pylist(), everything["batch"].to_pylist()
    keep = [owner.get(int(i)) == b for i, b in zip(ids, batches, strict=True)]
    owners = pa.table({"image_id": pa.array(list(owner), pa.int64()),
                       "label_batch": pa.array(list(owner.values()), pa.string())})
    return everything.filter(pa.array(keep, pa.bool_())), owners


def label_owners(ingested: pa.Table, labeled: Sequence[pa.Table]) -> dict[int, str]:
    """image_id -> the batch whose labels are in force (``ingested``: image_id, batch columns)."""
    owner: dict[int, str] = dict(zip(ingested["image_id"].to_pylist(),
                                     ingested["batch"].to_pylist(), strict=True))
    for table in labeled:
        owner.update(zip(table["image_id"].to_pylist(), table["batch"].to_pylist(), strict=True))
    return owner


def splits_table(
    images: pa.Table, annotations: pa.Table, owners: pa.Table,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
) -> pa.Table:
    """SPLITS: every pool image's split, whether it is labeled, by which batch, with how many boxes.

    ``annotations`` and ``owners`` are ``effective_labels``' result. An ingested image without
    annotations counts as unlabeled (ANNOTATIONS cannot tell it from an empty image); an image
    a label file lists is labeled even with no box.
    """
    ids = np.unique(images["image_id"].to_numpy().astype(np.int64))
    owner = dict(zip(owners["image_id"].to_pylist(), owners["label_batch"].to_pylist(), strict=True))
    counted = annotations.filter(pc.invert(annotations["iscrowd"]))
    boxes = dict(zip(*np.unique(counted["image_id"].to_numpy(), return_counts=True), strict=True))
    return pa.Table.from_arrays(
        [pa.array(ids, pa.int64()), pa.array(split_of(ids, heldout_fraction), pa.string()),
         pa.array([int(i) in owner for i in ids], pa.bool_()),
         pa.array([owner.get(int(i)) for i in ids], pa.string()),
         pa.array([int(boxes.get(i, 0)) for i in ids], pa.int32())],
        schema=schemas.SPLITS,
    )


LABEL_BATCH_PREFIX = "labels-"
"""Label batches are named ``labels-<file stem>`` so they never collide with ingest batches."""


def ids_in(splits: pa.Table, split: str, *, labeled: bool | None = None) -> pa.Array:
    """Image ids of one split (optionally only labeled / unlabeled ones), ascending."""
    mask = pc.equal(splits["split"], split)
    if labeled is not None:
        mask = pc.and_(mask, pc.equal(splits["labeled"], labeled))
    return splits.filter(mask)["image_id"].combine_chunks()
