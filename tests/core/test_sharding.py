"""Shard assignment: the promise that old shards never change (their predictions stay valid)."""

from __future__ import annotations

import numpy as np
import pytest

from al_assets.core.sharding import (
    assign_shards,
    batch_of_shard,
    shard_count,
    shard_key,
    stable_hash,
)


def test_the_hash_is_splitmix64_so_it_never_changes_across_versions_or_machines() -> None:
    # 0xE220A8397B1DCDAF is splitmix64's published first output for state 0
    assert int(stable_hash(np.array([0]))[0]) == 0xE220A8397B1DCDAF
    assert [int(x) for x in stable_hash(np.array([1, 12345, 2**40]))] == [
        10451216379200822465, 2454886589211414944, 2296115805719413641]


def test_an_images_shard_depends_only_on_its_batch_and_its_id() -> None:
    ids = np.arange(1, 5001) * 7
    first = dict(zip(ids.tolist(), assign_shards(ids, "batch-000", 1000), strict=True))
    shuffled = np.random.default_rng(0).permutation(ids)
    again = dict(zip(shuffled.tolist(), assign_shards(shuffled, "batch-000", 1000), strict=True))
    assert again == first  # order of the records in the file does not matter
    later = assign_shards(np.arange(10**6, 10**6 + 3000), "batch-001", 1000)
    assert {batch_of_shard(s) for s in later} == {"batch-001"}  # a new batch: new shards only
    assert dict(zip(ids.tolist(), assign_shards(ids, "batch-000", 1000), strict=True)) == first


def test_shards_are_about_shard_size_and_named_in_order() -> None:
    shards = assign_shards(np.arange(10_000), "b", 2000)
    counts = {s: shards.count(s) for s in set(shards)}
    assert sorted(counts) == [shard_key("b", i) for i in range(5)] == [f"b.s00{i}" for i in range(5)]
    assert all(1700 <= n <= 2300 for n in counts.values()), counts
    assert shard_count(0) == 1 and shard_count(2001, 2000) == 2
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        shard_count(10, 0)


def test_batch_of_shard_inverts_shard_key_and_names_a_bad_key() -> None:
    assert batch_of_shard(shard_key("cam.a.s1", 12)) == "cam.a.s1"  # dots in batch names are fine
    for bad in ("batch-000", "batch-000.sx", "batch-000.s"):
        with pytest.raises(ValueError, match="is not a shard key"):
            batch_of_shard(bad)
