"""What the prediction step stores of each detector output (a floor, a cap, a top-k length),
and how a lookup reads it back (``predictions_of``).

A torchvision detector keeps up to 300 boxes per image down to score 0.001-0.01, ~98 % of them
background below the ranking's noise floor (``DEFAULT_MIN_SCORE``); with a 91-class
distribution per box that is 100+ KB per image and version, read again by every view. The
policy drops them when writing, column-wise (no Python loop over boxes), and leaves every kept
box as the detector gave it, so each measure of a kept box is unchanged (bit for bit).
Defaults: ``al_assets.core.scoring.views`` (``STORE_*``); sizes: README, "Storage".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.defaults import (
    STORE_DISTRIBUTION,
    STORE_MAX_DETECTIONS,
    STORE_MIN_SCORE,
    STORE_TOP_K,
)
from al_assets.core.storage import TableStore


@dataclass(frozen=True)
class StoragePolicy:
    """Which detections, and how much of each, a DETECTIONS row keeps."""

    min_score: float = STORE_MIN_SCORE  # boxes below are not stored; 0 keeps all
    max_detections: int | None = STORE_MAX_DETECTIONS  # per image, best first; None: no cap
    top_k: int | None = STORE_TOP_K  # label_ids/scores entries kept; None: as given
    distribution: bool = STORE_DISTRIBUTION  # False: null (measures then come from the top-k)

    def __post_init__(self) -> None:
        if self.max_detections is not None and self.max_detections < 0:
            raise ValueError(f"max_detections={self.max_detections}: use >= 0 or None")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: a box needs at least its top class")


KEEP_ALL = StoragePolicy(min_score=0.0, max_detections=None, top_k=None, distribution=True)
"""Everything the detector returned: what evaluation and the simulation predict with."""


def apply_policy(batch: pa.RecordBatch, policy: StoragePolicy) -> pa.RecordBatch:
    """A DETECTIONS batch with ``policy`` applied to its ``detections`` (every row kept)."""
    if policy == KEEP_ALL or batch.num_rows == 0:
        return batch
    index = batch.schema.get_field_index("detections")
    lists = stored_detections(batch.column(index), policy)
    return batch.set_column(index, batch.schema.field(index), lists)


def stored_detections(lists: pa.ListArray, policy: StoragePolicy) -> pa.ListArray:
    """``list<DETECTION>`` per image, filtered (floor, cap) and trimmed (top-k, distribution)."""
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = _kept(parents, pc.struct_field(flat, "score").to_numpy(zero_copy_only=False), policy)
    counts = np.bincount(parents[keep], minlength=len(lists))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    kept = _trimmed(flat.filter(pa.array(keep)), policy)
    return pa.ListArray.from_arrays(offsets, kept, type=pa.list_(schemas.DETECTION))


def _kept(parents: np.ndarray, scores: np.ndarray, policy: StoragePolicy) -> np.ndarray:
    """Mask of the detections at or above the floor and within each image's best N."""
    keep = scores >= np.float32(policy.min_score) if policy.min_score > 0 else \
        np.ones(scores.size, bool)
    if policy.max_detections is None:
        return keep
    order = np.lexsort((-scores, parents))  # by image, best score first (stable on ties)
    starts = np.searchsorted(parents[order], parents[order], side="left")
    rank = np.empty(scores.size, np.int64)
    rank[order] = np.arange(scores.size) - starts
    return keep & (rank < policy.max_detections)


def _trimmed(flat: pa.StructArray, policy: StoragePolicy) -> pa.StructArray:
    """The kept detections with top-k lists cut to ``top_k`` and the distribution kept or not."""
    fields = {f.name: pc.struct_field(flat, f.name) for f in schemas.DETECTION}
    if policy.top_k is not None:
        for name in ("label_ids", "scores"):
            fields[name] = _head(fields[name], policy.top_k)
    if not policy.distribution:
        fields["distribution"] = pa.nulls(len(flat), schemas.DETECTION.field("distribution").type)
    return pa.StructArray.from_arrays(list(fields.values()), fields=list(schemas.DETECTION))


def _head(lists: pa.ListArray, k: int) -> pa.ListArray:
    """The first ``k`` entries of every list (already in descending order)."""
    lengths = np.diff(lists.offsets.to_numpy())
    if not lengths.size or lengths.max() <= k:
        return lists
    starts = lists.offsets.to_numpy()[:-1]
    take = np.minimum(lengths, k)
    index = np.repeat(starts, take) + _ranges(take)
    values = pc.take(lists.values, pa.array(index, pa.int64()))
    offsets = pa.array(np.concatenate([[0], np.cumsum(take)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values, type=lists.type)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for every n of ``lengths``, concatenated."""
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if ends.size else 0) - np.repeat(ends - lengths, lengths)


def predictions_of(store: TableStore, model_version: str, image_ids: pa.Array,
                   columns: Sequence[str] | None = None) -> pa.Table:
    """The DETECTIONS rows of ``image_ids`` under ``model_version``, reading only their rows.

    Ids are spread over every shard by the hash, so one id predicate over all shards would
    match every row group's id range; the images table says which shard holds each id, and
    each shard is read with its own few ids (row groups sorted by id, STORE_ROW_GROUP_IMAGES
    each): a few hundred candidates decode a few hundred row groups, not the pool."""
    wanted = pa.array(image_ids.to_pylist(), pa.int64())
    located = store.read_where("images", store.partitions("images"),
                               pc.field("image_id").isin(wanted), ["image_id", "shard"],
                               schema=schemas.IMAGES)
    predicted = set(store.partitions("detections", under=model_version))
    parts = []
    for shard in sorted(set(located["shard"].to_pylist())):
        partition = f"{model_version}/{shard}"
        if partition in predicted:
            ids = located.filter(pc.equal(located["shard"], shard))["image_id"]
            parts.append(store.read("detections", partition, columns,
                                    where=pc.field("image_id").isin(ids.combine_chunks())))
    if not parts:
        empty = schemas.DETECTIONS.empty_table()
        return empty.select(list(columns)) if columns else empty
    return pa.concat_tables(parts)
