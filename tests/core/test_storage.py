"""Storage root: atomic writes, partitions, local and S3 (moto server), clear errors."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pytest

from al_assets.core.errors import StorageError
from al_assets.core.storage import S3Settings, TableStore
from al_assets.core.storage import objects as objects_module

SCHEMA = pa.schema([("a", pa.int64())])


def table(*values: int) -> pa.Table:
    return pa.table({"a": list(values)}, schema=SCHEMA)


def test_failed_write_keeps_the_previous_version(tmp_path) -> None:
    store = TableStore(tmp_path)
    store.write("t", table(1, 2), "p1")
    with pytest.raises(RuntimeError):
        with store.writer("t", SCHEMA, "p1") as writer:
            writer.write_table(table(9))
            raise RuntimeError("crash mid-write")
    assert store.read("t", "p1")["a"].to_pylist() == [1, 2]
    assert os.listdir(tmp_path / "tables" / "t") == ["p1.parquet"]


def test_partitions_ignore_temporaries_and_stale_ones_are_swept(tmp_path) -> None:
    store = TableStore(tmp_path)
    store.write("t", table(1), "mv/s1")
    folder = tmp_path / "tables" / "t" / "mv"
    stale = folder / ".s1.parquet.dead.tmp"
    fresh = folder / ".s1.parquet.live.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half a file")
    old = time.time() - objects_module.STALE_AFTER_S - 10
    os.utime(stale, (old, old))
    assert store.partitions("t", under="mv") == ["mv/s1"]
    store.write("t", table(2), "mv/s1")
    assert not stale.exists() and fresh.exists()
    assert store.read("t", "mv/s1")["a"].to_pylist() == [2]


def test_missing_partition_names_the_table(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="table 'images' partition 'b9' not found"):
        TableStore(tmp_path).read("images", "b9")


def test_unsafe_names_are_refused(tmp_path) -> None:
    store = TableStore(tmp_path)
    for bad in ("../x", "a/../../b", "with space"):
        with pytest.raises(StorageError, match="invalid partition name"):
            store.uri("t", bad)


def _s3_store(s3_server, bucket: str, **keys: str) -> TableStore:
    return TableStore(f"s3://{bucket}/root", S3Settings(
        endpoint_url=s3_server.endpoint_url, region="us-east-1",
        access_key_id=keys.get("key", s3_server.access_key_id),
        secret_access_key=keys.get("secret", s3_server.secret_access_key)))


def test_s3_round_trip_listing_and_files(s3_server, s3_bucket, monkeypatch) -> None:
    store = _s3_store(s3_server, s3_bucket)
    for index in range(5):
        store.write("t", table(index), f"mv/s{index}")
    store.write("t", table(7))
    monkeypatch.setattr(store.objects, "list", _paged(store.objects.list, 2))
    assert store.partitions("t", under="mv") == [f"mv/s{i}" for i in range(5)]
    assert store.read("t", "mv/s3")["a"].to_pylist() == [3]
    assert store.read("t")["a"].to_pylist() == [7]
    uri = store.write_file(b"<html>", "report", "index.html")
    assert uri == f"s3://{s3_bucket}/root/files/report/index.html"
    assert store.read_file("report", "index.html") == b"<html>"


def _paged(list_fn, page):
    """Force small listing pages so the paging loop is exercised against the real server."""
    def listing(prefix, *, suffix="", start_after=None, max_keys=1000):
        return list_fn(prefix, suffix=suffix, start_after=start_after, max_keys=page)
    return listing


def test_s3_failed_upload_keeps_the_previous_object(s3_server, s3_bucket) -> None:
    store = _s3_store(s3_server, s3_bucket)
    store.write("t", table(1), "p")
    with pytest.raises(RuntimeError):
        with store.writer("t", SCHEMA, "p") as writer:
            writer.write_table(table(5))
            raise RuntimeError("crash before upload")
    assert store.read("t", "p")["a"].to_pylist() == [1]


def test_s3_wrong_credentials_and_missing_bucket(s3_server, s3_bucket) -> None:
    bad = _s3_store(s3_server, s3_bucket, key="AKIAWRONG", secret="nope")
    with pytest.raises(StorageError, match="rejected the credentials"):
        bad.write("t", table(1), "p")
    with pytest.raises(StorageError, match="rejected the credentials"):
        bad.read("t", "p")
    missing = _s3_store(s3_server, "no-such-bucket-at-all")
    with pytest.raises(StorageError, match="bucket does not exist"):
        missing.write("t", table(1), "p")


def test_read_only_location_fails_clearly() -> None:
    store = TableStore("/proc/al_assets_read_only")  # read-only even for root
    with pytest.raises(StorageError, match="cannot create folder /proc/al_assets_read_only"):
        store.write("t", table(1), "p")


FULL_DISK = """
import resource, signal, sys
import pyarrow as pa
from al_assets.core.errors import StorageError
from al_assets.core.storage import TableStore
store = TableStore(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the disk is "full" past 4 KiB
try:
    store.write("t", pa.table({"a": list(range(200_000))}), "p")
except StorageError as exc:
    print("STORAGE ERROR:", exc)
"""


def test_full_disk_fails_clearly_and_keeps_the_previous_version(tmp_path) -> None:
    import subprocess
    import sys

    store = TableStore(tmp_path)
    store.write("t", table(1, 2, 3), "p")
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert "STORAGE ERROR:" in out.stdout, out.stderr[-2000:]
    assert "the previous version is intact" in out.stdout
    assert store.read("t", "p")["a"].to_pylist() == [1, 2, 3]
    assert os.listdir(tmp_path / "tables" / "t") == ["p.parquet"]


def test_reads_with_a_predicate_match_reading_everything_then_filtering(tmp_path) -> None:
    import pyarrow.compute as pc

    store = TableStore(tmp_path)
    schema = pa.schema([("image_id", pa.int64()), ("score", pa.float32())])
    for shard, ids in (("mv/s0", range(0, 500, 2)), ("mv/s1", range(1, 500, 2))):
        data = pa.table({"image_id": list(ids), "score": [i / 500 for i in ids]}, schema=schema)
        with store.writer("t", schema, shard) as writer:
            writer.write_table(data, row_group_size=16)  # many groups: most skipped by stats
    wanted = pa.array([3, 4, 250, 499, 9999], pa.int64())
    got = store.read_where("t", ["mv/s0", "mv/s1"], pc.field("image_id").isin(wanted),
                           ["image_id"])
    assert sorted(got["image_id"].to_pylist()) == [3, 4, 250, 499]
    assert got.column_names == ["image_id"]
    floor = store.read("t", "mv/s1", where=pc.field("score") >= pa.scalar(0.9, pa.float32()))
    everything = store.read("t", "mv/s1")
    expected = everything.filter(pc.greater_equal(everything["score"], pa.scalar(0.9, pa.float32())))
    assert floor.equals(expected) and 0 < floor.num_rows < everything.num_rows
    empty = store.read_where("t", [], pc.field("image_id").isin(wanted), ["score"], schema=schema)
    assert empty.num_rows == 0 and empty.column_names == ["score"]
    with pytest.raises(FileNotFoundError, match="'t'"):
        store.read_where("t", ["mv/s0", "mv/nope"], None)


def test_float_columns_are_written_without_a_dictionary(tmp_path) -> None:
    import pyarrow.parquet as pq

    store = TableStore(tmp_path)
    data = pa.table({"id": pa.array([1, 1, 2], pa.int64()),
                     "v": pa.array([[0.5, 0.25]] * 3, pa.list_(pa.float32()))})
    uri = store.write("t", data)
    meta = pq.ParquetFile(uri[len("file://"):]).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(2)}
    assert "RLE_DICTIONARY" in encodings["id"]
    assert "RLE_DICTIONARY" not in encodings["v.list.element"]
    assert store.read("t").equals(data)
