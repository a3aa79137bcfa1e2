"""Ingestion assets through real `dagster.materialize` runs, from a local folder and from S3."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from al_assets.core import schemas
from al_assets.core.storage import S3Settings, TableStore
from al_assets.orchestration.assets.ingestion import ingestion
from al_assets.orchestration.partitions import BATCH, SHARD
from al_assets.orchestration.resources import CocoSourceResource, S3Config, StorageResource
from tests.conftest import S3Server, failure_text

BATCHES = ["batch-000", "batch-001"]


def run_ingestion(instance, storage, source, batch, config=None):
    instance.add_dynamic_partitions(BATCH, [batch])
    return dg.materialize(
        [ingestion],
        instance=instance,
        partition_key=batch,
        resources={"storage": storage, "coco_source": source},
        run_config={"ops": {"ingestion": {"config": config or {}}}},
        raise_on_error=False,
    )


def test_local_ingestion_writes_tables_and_adds_shards(instance, demo_root, tmp_path) -> None:
    storage = StorageResource(root=str(tmp_path / "store"))
    source = CocoSourceResource(root=str(demo_root))
    for batch in BATCHES:
        result = run_ingestion(instance, storage, source, batch, {"shard_size": 8})
        assert result.success
    store = storage.tables()
    assert store.partitions("images") == BATCHES
    images = store.read_many("images", BATCHES)
    assert images.schema.equals(schemas.IMAGES)
    assert images["image_id"].unique().__len__() == images.num_rows
    shards = sorted(set(images["shard"].to_pylist()))
    assert sorted(instance.get_dynamic_partitions(SHARD)) == shards
    assert any(s.startswith("batch-001") for s in shards)

    events = result.asset_materializations_for_node("ingestion")
    by_key = {e.asset_key.to_user_string(): e.metadata for e in events}
    expected = json.loads((demo_root / "annotations" / "batch-001.json").read_text())
    assert by_key["images"]["dagster/row_count"].value == len(expected["images"])
    assert by_key["annotations"]["dagster/row_count"].value == len(expected["annotations"])
    assert "preview" in by_key["annotations"] and "count_by_label" in by_key["annotations"]
    logged = [record.user_message for record in instance.all_logs(result.run_id)]
    n = len(expected["images"])
    assert f"verifying batch-001's images: {n}/{n} images (100 %" in "\n".join(logged)


def test_a_batchs_shards_exist_when_its_images_are_logged(instance, demo_root, tmp_path,
                                                         monkeypatch) -> None:
    """new_shards_sensor and the views' PredictionPending look for the shards of an ingested
    batch: a tick between the images event and the shards' addition saw neither, and the views
    refreshed on the old predictions (the daemon test at 5 s ticks, 2026-12-08)."""
    seen: list[list[str]] = []
    handle = instance.handle_new_event

    def record(event, *args, **kwargs):
        dagster_event = event.dagster_event
        if dagster_event and dagster_event.is_step_materialization and \
                dagster_event.asset_key == dg.AssetKey("images"):
            seen.append(instance.get_dynamic_partitions(SHARD))
        return handle(event, *args, **kwargs)

    monkeypatch.setattr(instance, "handle_new_event", record)
    storage = StorageResource(root=str(tmp_path / "store"))
    result = run_ingestion(instance, storage, CocoSourceResource(root=str(demo_root)),
                           "batch-000", {"shard_size": 8})
    assert result.success
    shards = sorted(set(storage.tables().read_many("images", ["batch-000"])["shard"].to_pylist()))
    assert [sorted(s) for s in seen] == [shards]


def test_reingesting_a_batch_leaves_other_batches_untouched(instance, demo_root, tmp_path) -> None:
    storage = StorageResource(root=str(tmp_path / "store"))
    source = CocoSourceResource(root=str(demo_root))
    for batch in BATCHES:
        assert run_ingestion(instance, storage, source, batch).success
    other = Path(storage.tables().uri("images", BATCHES[0])[len("file://"):])
    before = other.stat().st_mtime_ns, other.read_bytes()
    assert run_ingestion(instance, storage, source, BATCHES[1]).success
    assert (other.stat().st_mtime_ns, other.read_bytes()) == before


def test_rejects_are_recorded_and_the_run_continues(instance, demo_copy, tmp_path) -> None:
    path = demo_copy / "annotations" / "batch-000.json"
    document = json.loads(path.read_text())
    document["annotations"][0]["category_id"] = 4242
    path.write_text(json.dumps(document))
    storage = StorageResource(root=str(tmp_path / "store"))
    result = run_ingestion(instance, storage, CocoSourceResource(root=str(demo_copy)), "batch-000")
    assert result.success
    rejects = storage.tables().read("ingestion_rejects", "batch-000")
    assert rejects.num_rows == 1 and "4242" in rejects["reason"][0].as_py()
    meta = {
        e.asset_key.to_user_string(): e.metadata
        for e in result.asset_materializations_for_node("ingestion")
    }
    assert meta["ingestion_rejects"]["dagster/row_count"].value == 1


def test_max_pixels_config_and_area_warnings(instance, demo_copy, tmp_path) -> None:
    path = demo_copy / "annotations" / "batch-000.json"
    document = json.loads(path.read_text())
    pixels = sorted(i["width"] * i["height"] for i in document["images"])
    limit = pixels[len(pixels) // 2]
    small = {i["id"] for i in document["images"] if i["width"] * i["height"] <= limit}
    ann = next(a for a in document["annotations"] if a["image_id"] in small)
    ann["area"] = 5 * ann["bbox"][2] * ann["bbox"][3] + 10
    path.write_text(json.dumps(document))
    storage = StorageResource(root=str(tmp_path / "store"))
    result = run_ingestion(instance, storage, CocoSourceResource(root=str(demo_copy)), "batch-000",
                           {"max_pixels": limit})
    assert result.success
    store = storage.tables()
    assert set(store.read("images", "batch-000")["image_id"].to_pylist()) == small
    rejects = store.read("ingestion_rejects", "batch-000").to_pylist()
    too_big = [r for r in rejects if f"over the limit of {limit:,}" in r["reason"]]
    assert len(too_big) == len(document["images"]) - len(small)
    meta = {e.asset_key.to_user_string(): e.metadata
            for e in result.asset_materializations_for_node("ingestion")}
    assert meta["annotations"]["warnings"].value == {
        "area_exceeds_bbox": {"count": 1, "first_ids": [ann["id"]]}}


def test_bad_annotation_file_fails_the_run_with_a_clear_message(instance, demo_copy, tmp_path):
    (demo_copy / "annotations" / "batch-000.json").write_text("{not json")
    storage = StorageResource(root=str(tmp_path / "store"))
    result = run_ingestion(instance, storage, CocoSourceResource(root=str(demo_copy)), "batch-000")
    assert not result.success
    assert "batch-000.json: malformed JSON at line 1" in failure_text(result)
    assert storage.tables().partitions("images") == []


def _s3_resources(s3: S3Server, bucket: str, source_prefix: str, **keys: str):
    config = S3Config(
        endpoint_url=s3.endpoint_url, region="us-east-1",
        access_key_id=keys.get("key", s3.access_key_id),
        secret_access_key=keys.get("secret", s3.secret_access_key),
    )
    storage = StorageResource(root=f"s3://{bucket}/store", s3=config)
    source = CocoSourceResource(root=f"s3://{bucket}/{source_prefix}", s3=config)
    return storage, source


def test_s3_source_and_s3_storage(instance, demo_root, s3_server, s3_bucket) -> None:
    s3_server.upload_folder(demo_root, s3_bucket, "pool")
    s3_server.client().delete_object(Bucket=s3_bucket, Key="pool/images/" + json.loads(
        (demo_root / "annotations" / "batch-000.json").read_text())["images"][0]["file_name"])
    storage, source = _s3_resources(s3_server, s3_bucket, "pool")
    result = run_ingestion(instance, storage, source, "batch-000")
    assert result.success
    store = TableStore(
        f"s3://{s3_bucket}/store",
        S3Settings(s3_server.endpoint_url, "us-east-1", s3_server.access_key_id,
                   s3_server.secret_access_key),
    )
    images = store.read("images", "batch-000")
    assert images.schema.equals(schemas.IMAGES)
    assert images["uri"][0].as_py().startswith(f"s3://{s3_bucket}/pool/images/")
    rejects = store.read("ingestion_rejects", "batch-000")
    assert rejects.num_rows >= 1 and "not found" in rejects["reason"][0].as_py()


def test_s3_wrong_credentials_fail_clearly(instance, demo_root, s3_server, s3_bucket) -> None:
    s3_server.upload_folder(demo_root, s3_bucket, "pool")
    storage, source = _s3_resources(s3_server, s3_bucket, "pool", key="AKIAWRONG", secret="nope")
    result = run_ingestion(instance, storage, source, "batch-000")
    assert not result.success
    message = failure_text(result)
    assert "rejected the credentials" in message and "AWS_ACCESS_KEY_ID" in message


@pytest.mark.parametrize("bucket", ["no-such-bucket-al"])
def test_s3_missing_bucket_fails_clearly(instance, s3_server, bucket) -> None:
    storage, source = _s3_resources(s3_server, bucket, "pool")
    result = run_ingestion(instance, storage, source, "batch-000")
    assert not result.success
    message = failure_text(result)
    assert "no-such-bucket-al" in message and "does not exist" in message


def test_an_unchanged_batch_is_not_rewritten_and_nothing_downstream_recomputes(
    instance, demo_copy, tmp_path
) -> None:
    """Issue 14 item 2: the README re-ingests batch-000; that must not re-predict its shards."""
    import os

    storage = StorageResource(root=str(tmp_path / "store"))
    source = CocoSourceResource(root=str(demo_copy))
    images = dg.AssetKey("images")

    def materializations() -> int:
        return len(instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=images, asset_partitions=["batch-000"]),
            limit=100).records)

    assert run_ingestion(instance, storage, source, "batch-000").success
    first = instance.get_latest_data_version_record(images, partition_key="batch-000")
    assert materializations() == 1
    assert run_ingestion(instance, storage, source, "batch-000").success  # same file, options
    assert materializations() == 1  # no event: new_shards_sensor and the views see nothing
    assert run_ingestion(instance, storage, source, "batch-000", {"force": True}).success
    assert materializations() == 2
    again = instance.get_latest_data_version_record(images, partition_key="batch-000")
    tag = "dagster/data_version"  # same inputs, same data version
    assert again.asset_materialization.tags[tag] == first.asset_materialization.tags[tag]
    assert run_ingestion(instance, storage, source, "batch-000", {"limit": 5}).success
    assert materializations() == 3  # other options: other tables
    path = demo_copy / "annotations" / "batch-000.json"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    path.write_bytes(path.read_bytes())  # touched and rewritten, same bytes: same version
    assert run_ingestion(instance, storage, source, "batch-000", {"limit": 5}).success
    assert materializations() == 3
    path.write_bytes(path.read_bytes() + b"\n")  # other bytes (the same JSON): a new version
    assert run_ingestion(instance, storage, source, "batch-000", {"limit": 5}).success
    assert materializations() == 4  # the file changed (its content hash; the ETag on S3)
