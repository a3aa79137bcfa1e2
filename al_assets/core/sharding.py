"""Stable assignment of images to prediction shards.

A shard is the unit of prediction work (one partition, one GPU slot). Shards are named
``<batch>.s<NNN>`` and an image's shard depends only on its ingest batch and a fixed hash of
its id, so ingesting a new batch creates new shards and never moves an image between old ones
(their predictions stay valid). Batches are immutable: a changed annotation file is a new batch.
"""

from __future__ import annotations

import math

import numpy as np

from al_assets.core.defaults import DEFAULT_SHARD_SIZE  # noqa: F401  (callers import it here)


def stable_hash(image_ids: np.ndarray) -> np.ndarray:
    """splitmix64 of the ids: fixed across runs, Python versions and machines (unlike hash())."""
    z = np.asarray(image_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shard_count(n_images: int, shard_size: int = DEFAULT_SHARD_SIZE) -> int:
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return max(1, math.ceil(n_images / shard_size))


def shard_key(batch: str, index: int) -> str:
    return f"{batch}.s{index:03d}"


def assign_shards(
    image_ids: np.ndarray, batch: str, shard_size: int = DEFAULT_SHARD_SIZE
) -> list[str]:
    """Shard key of every image of one batch (about ``shard_size`` images per shard)."""
    n = shard_count(len(image_ids), shard_size)
    buckets = (stable_hash(image_ids) % np.uint64(n)).astype(np.int64)
    names = [shard_key(batch, i) for i in range(n)]
    return [names[b] for b in buckets]


def batch_of_shard(shard: str) -> str:
    """Inverse of :func:`shard_key`: the batch a shard belongs to."""
    batch, sep, index = shard.rpartition(".s")
    if not sep or not index.isdigit():
        raise ValueError(f"{shard!r} is not a shard key like '<batch>.s000'")
    return batch
