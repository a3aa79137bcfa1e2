"""Sensors evaluated with build_sensor_context on a real instance and a real MLflow registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from al_assets.core.demo.generator import add_demo_batch
from al_assets.core.registry import RegistryError
from al_assets.orchestration.partitions import BATCH, MODEL_VERSION, SHARD
from al_assets.orchestration.resources import MlflowResource, StorageResource
from al_assets.orchestration.runs import discover_batches, ingest, predict, refresh_views, register
from al_assets.orchestration.sensors import (
    new_data_sensor,
    new_model_version_sensor,
    new_shards_sensor,
)
from tests.conftest import free_port
from tests.orchestration.conftest import FAST, make_pipeline, tick


def test_new_data_sensor_requests_only_new_batches(instance, demo_copy, tmp_path) -> None:
    p = make_pipeline(instance, demo_copy, tmp_path)
    first = tick(new_data_sensor, instance, None, coco_source=p.source)
    assert sorted(r.partition_key for r in first.run_requests) == ["batch-000", "batch-001"]
    assert instance.get_dynamic_partitions(BATCH) == ["batch-000", "batch-001"]
    assert all(r.run_key.startswith("ingest:batch-00") for r in first.run_requests)

    running = tick(new_data_sensor, instance, first.cursor, coco_source=p.source)
    assert {r.run_key for r in running.run_requests} <= {r.run_key for r in first.run_requests}
    ingest(p.defs, instance, ["batch-000", "batch-001"], {"verify_images": "exists"})
    again = tick(new_data_sensor, instance, running.cursor, coco_source=p.source)
    assert again.run_requests == []

    add_demo_batch(demo_copy, 6)
    third = tick(new_data_sensor, instance, again.cursor, coco_source=p.source)
    assert [r.partition_key for r in third.run_requests] == ["batch-002"]
    assert instance.get_dynamic_partitions(BATCH)[-1] == "batch-002"


def test_a_failed_file_is_retried_when_it_changes_and_blocks_nothing(
    instance, demo_copy, tmp_path
) -> None:
    import os

    bad = demo_copy / "annotations" / "a_zero.json"
    bad.write_bytes(b"")
    p = make_pipeline(instance, demo_copy, tmp_path)
    first = tick(new_data_sensor, instance, None, coco_source=p.source)
    assert sorted(r.partition_key for r in first.run_requests) == [
        "a_zero", "batch-000", "batch-001"]
    outcome = ingest(p.defs, instance, ["a_zero", "batch-000", "batch-001"],
                     {"verify_images": "exists"})
    assert "a_zero.json" in outcome["a_zero"] and outcome["batch-000"] == "ingested"
    unchanged = tick(new_data_sensor, instance, first.cursor, coco_source=p.source)
    keys = {r.run_key for r in unchanged.run_requests}
    assert keys == {r.run_key for r in first.run_requests if r.partition_key == "a_zero"}
    bad.write_text("{}")  # changed (still bad): a new run key, so the daemon runs it again
    os.utime(bad, ns=(bad.stat().st_atime_ns, bad.stat().st_mtime_ns + 10**9))
    changed = tick(new_data_sensor, instance, unchanged.cursor, coco_source=p.source)
    assert [r.partition_key for r in changed.run_requests] == ["a_zero"]
    assert changed.run_requests[0].run_key not in keys


def test_new_data_sensor_pages_through_a_large_prefix(instance, demo_copy, tmp_path, monkeypatch):
    """Many annotation files: every one is found although each listing call returns a page."""
    import al_assets.orchestration.sensors as sensors

    for index in range(25):
        (demo_copy / "annotations" / f"extra-{index:03d}.json").write_text("{}")
    monkeypatch.setattr(sensors, "PAGE_SIZE", 4)  # a constant, not a function: real listing
    p = make_pipeline(instance, demo_copy, tmp_path)
    data = tick(new_data_sensor, instance, None, coco_source=p.source)
    assert len(data.run_requests) == 27


def test_model_version_sensor_predicts_every_shard_of_a_new_champion(
    ingested, checkpoints
) -> None:
    p = ingested
    mlflow = p.mlflow
    shards = p.instance.get_dynamic_partitions("shard")
    empty = tick(new_model_version_sensor, p.instance, None, mlflow=mlflow)
    assert empty.run_requests == []

    register(p.defs, p.instance, {"weights": str(checkpoints[0])})
    first = tick(new_model_version_sensor, p.instance, empty.cursor, mlflow=mlflow)
    assert sorted(r.partition_key for r in first.run_requests) == sorted(
        f"al-class-scores-v1|{s}" for s in shards)

    v2 = register(p.defs, p.instance, {"weights": str(checkpoints[1])})
    predict(p.defs, p.instance, v2, shards[:1], FAST)  # by hand, before a tick
    second = tick(new_model_version_sensor, p.instance, first.cursor, mlflow=mlflow)
    keys = [r.partition_key for r in second.run_requests]
    assert sorted(keys) == sorted(f"al-class-scores-v2|{s}" for s in shards[1:])  # not again
    assert not any("v1" in k for k in keys)
    assert "al-class-scores-v2" in p.instance.get_dynamic_partitions(MODEL_VERSION)
    assert tick(new_model_version_sensor, p.instance, second.cursor, mlflow=mlflow).run_requests == []

    # an alias moved back to v1, already predicted: no new predictions, one refresh of the views
    predict(p.defs, p.instance, "al-class-scores-v1", None, FAST)
    mlflow.registry().client.set_registered_model_alias("al-class-scores", "champion", "1")
    moved = tick(new_model_version_sensor, p.instance, second.cursor, mlflow=mlflow)
    assert [(r.job_name, r.run_key) for r in moved.run_requests] == [
        ("refresh_views_job", "views:champion:1")]

    refresh_views(p.defs, p.instance)  # the views describe v1: the daemon's first tick (no
    fresh = tick(new_model_version_sensor, p.instance, None, mlflow=mlflow)  # cursor) leaves them
    assert [r.job_name for r in fresh.run_requests] == []


def test_model_version_sensor_fails_clearly_when_the_registry_is_down_then_recovers(
    ingested, checkpoints
) -> None:
    p = ingested
    register(p.defs, p.instance, {"weights": str(checkpoints[0])})
    down = MlflowResource(storage=StorageResource(root=p.storage.root),
                          tracking_uri=f"http://127.0.0.1:{free_port()}", http_max_retries=0)
    with pytest.raises(Exception, match="unreachable") as info:
        tick(new_model_version_sensor, p.instance, None, mlflow=down)
    assert isinstance(info.value, RegistryError) or "RegistryError" in repr(info.value)
    recovered = tick(new_model_version_sensor, p.instance, None, mlflow=p.mlflow)
    keys = [r.run_key for r in recovered.run_requests]
    assert len(keys) == len(p.instance.get_dynamic_partitions("shard")), keys


def test_new_shards_sensor_predicts_an_ingested_batch_with_the_champion(
    instance, demo_copy, tmp_path, checkpoints
) -> None:
    p = make_pipeline(instance, demo_copy, tmp_path)
    ingest(p.defs, instance, discover_batches(p.source, instance), {"verify_images": "exists"})
    register(p.defs, instance, {"weights": str(checkpoints[0])})
    first = tick(new_shards_sensor, instance, None, mlflow=p.mlflow)
    assert first.run_requests == [] or all("v1|" in r.partition_key for r in first.run_requests)

    add_demo_batch(demo_copy, 6)
    ingest(p.defs, instance, discover_batches(p.source, instance), {"verify_images": "exists"})
    data = tick(new_shards_sensor, instance, first.cursor, mlflow=p.mlflow)
    assert [r.partition_key for r in data.run_requests] == ["al-class-scores-v1|batch-002.s000"]
    assert not tick(new_shards_sensor, instance, data.cursor, mlflow=p.mlflow).run_requests
    # a forced re-ingestion of the same file: a new event, the same data version, so the same
    # run key, which the daemon does not launch twice
    ingest(p.defs, instance, ["batch-002"], {"verify_images": "exists", "force": True})
    forced = tick(new_shards_sensor, instance, data.cursor, mlflow=p.mlflow)
    assert [r.run_key for r in forced.run_requests] == [r.run_key for r in data.run_requests]

    add_demo_batch(demo_copy, 6)  # two batches land between two ticks: both are predicted
    add_demo_batch(demo_copy, 6)
    ingest(p.defs, instance, discover_batches(p.source, instance), {"verify_images": "exists"})
    both = tick(new_shards_sensor, instance, forced.cursor, mlflow=p.mlflow)
    assert sorted(r.partition_key for r in both.run_requests) == [
        "al-class-scores-v1|batch-003.s000", "al-class-scores-v1|batch-004.s000"]


def _statements(run) -> tuple[int, int, object]:
    """SQL statements while ``run()`` runs (Dagster's storage and MLflow's store): (the
    lookups of dynamic_partitions, all others, run's result)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        result = run()
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    partitions = sum("dynamic_partitions" in statement for statement in seen)
    return partitions, len(seen) - partitions, result


def test_sensor_ticks_cost_the_same_queries_for_100x_the_shards(ingested, checkpoints) -> None:
    """Issue 15: a tick's own queries do not grow with the pool (it was one per shard). What
    grows is Dagster's check of each run request's partition key (a SELECT on
    dynamic_partitions and a PRAGMA per request), the price of launching that many runs."""
    p = ingested
    register(p.defs, p.instance, {"weights": str(checkpoints[0])})

    def ticks() -> list[tuple[int, int, int]]:
        out = []
        for sensor in (new_model_version_sensor, new_shards_sensor):
            lookups, others, result = _statements(
                lambda s=sensor: tick(s, p.instance, None, mlflow=p.mlflow))
            out.append((lookups, others, len(result.run_requests)))
        return out

    few = ticks()
    known = len(p.instance.get_dynamic_partitions(SHARD))
    extra = [f"batch-000.s{n:04d}" for n in range(100, 100 + 100 * known)]
    p.instance.add_dynamic_partitions(SHARD, extra)
    many = ticks()
    for (lookups, others, requests), (more_lookups, more_others, more_requests) in zip(
            few, many, strict=True):
        assert more_requests - requests == len(extra)  # 100x the shards to predict
        assert more_others <= others + 2, (few, many)  # the sensor's own: constant (was +1/shard)
        assert more_lookups - lookups <= 2 * len(extra)  # Dagster's, per run request


@pytest.mark.parametrize("raw", ["0", "5s", "-3", "1.5", "²"])
def test_a_bad_sensor_interval_names_the_variable(monkeypatch, raw: str) -> None:
    from al_assets.core.defaults import sensor_interval_s

    monkeypatch.setenv("AL_ASSETS_SENSOR_INTERVAL_S", raw)
    with pytest.raises(ValueError, match=r"AL_ASSETS_SENSOR_INTERVAL_S=.*whole seconds"):
        sensor_interval_s()


def test_the_sensor_interval_sets_every_sensors_tick_when_the_code_loads() -> None:
    """In a fresh interpreter, as the daemon loads the code location: the instance-reading
    sensors tick at the interval, the storage- and registry-polling ones at twice it; a bad
    value stops the CLI with one line naming the variable, no traceback."""
    import json
    import os
    import subprocess
    import sys

    from al_assets.orchestration.definitions import defs  # loaded here without the variable

    from al_assets.orchestration.automation import PREDICTION_GRACE_S

    script = ("import json; from al_assets.orchestration.definitions import defs; "
              "from al_assets.orchestration.automation import PREDICTION_GRACE_S as g; "
              "print(json.dumps([g, {s.name: s.minimum_interval_seconds for s in defs.sensors}]))")
    env = {**os.environ, "AL_ASSETS_SENSOR_INTERVAL_S": "200"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    grace, slow = json.loads(out.strip().splitlines()[-1])
    assert (PREDICTION_GRACE_S, grace) == (300, 600)  # 5 min, or three ticks when longer
    ticks = {"": {s.name: s.minimum_interval_seconds for s in defs.sensors}, "200": slow}
    listing = {"new_data_sensor", "new_model_version_sensor"}
    for raw, base in (("", 30), ("200", 200)):
        assert {name: s for name, s in ticks[raw].items() if name in listing} == {
            name: 2 * base for name in listing}, ticks[raw]
        assert {s for name, s in ticks[raw].items() if name not in listing} == {base}, ticks[raw]

    bad = subprocess.run([str(Path(sys.executable).parent / "al-assets"), "models"],
                         env={**os.environ, "AL_ASSETS_SENSOR_INTERVAL_S": "5s"},
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert [line for line in bad.stderr.splitlines() if line.strip()] == [
        "error: AL_ASSETS_SENSOR_INTERVAL_S='5s': give whole seconds, at least 1 (unset: 30)"]
