"""Prediction partitions (model version x shard) on a real instance and a real registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from al_assets.core import schemas
from al_assets.orchestration.partitions import prediction_key
from al_assets.orchestration.runs import predict, register, run_job
from tests.orchestration.conftest import FAST, Pipeline, make_pipeline

def _files(store, table: str, under: str) -> dict[str, bytes]:
    root = Path(store.uri(table, f"{under}/x")[len("file://"):]).parent
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.parquet"))}


def test_two_shards_by_two_versions(ingested: Pipeline, checkpoints) -> None:
    p = ingested
    shards = p.instance.get_dynamic_partitions("shard")[:2]
    versions = [register(p.defs, p.instance, {"weights": str(c)}) for c in checkpoints]
    for version in versions:
        predict(p.defs, p.instance, version, shards, FAST)

    images = p.store.read_many("images", p.store.partitions("images"))
    for version in versions:
        assert p.store.partitions("detections", under=version) == [f"{version}/{s}" for s in shards]
        for shard in shards:
            table = p.store.read("detections", f"{version}/{shard}")
            assert table.schema.equals(schemas.DETECTIONS)
            expected = images.filter(pc.equal(images["shard"], shard))
            assert sorted(table["image_id"].to_pylist()) == sorted(expected["image_id"].to_pylist())
            assert set(table["model_version"].to_pylist()) == {int(version.rsplit("v", 1)[1])}
            assert set(table["shard"].to_pylist()) == {shard}
            flat = pc.list_flatten(table["detections"])
            assert len(flat) > 0
            assert all(abs(sum(d) - 1) < 1e-4 for d in pc.struct_field(flat, "distribution").to_pylist())
            assert p.store.read("prediction_errors", f"{version}/{shard}").num_rows == 0

    one = p.store.read("detections", f"{versions[0]}/{shards[0]}")
    two = p.store.read("detections", f"{versions[1]}/{shards[0]}")
    assert one["detections"].to_pylist() != two["detections"].to_pylist()

    # re-running one partition replaces it and touches nothing else; its checks pass
    before = {v: _files(p.store, "detections", v) for v in versions}
    rerun = run_job(p.defs, "predict_job", p.instance,
                    partition_key=prediction_key(versions[0], shards[0]),
                    run_config={"ops": {"detections": {"config": FAST}}})
    checks = {e.check_name: e.passed for e in rerun.get_asset_check_evaluations()}
    assert checks == {"schema_matches": True, "distributions_sum_to_one": True,
                      "no_duplicate_detections": True, "every_image_accounted_for": True}
    described = {e.materialization.asset_key.to_user_string(): [
        c.description for c in e.materialization.metadata["dagster/column_schema"].schema.columns]
        for e in rerun.get_asset_materialization_events()}
    assert len(described["detections"]) == len(schemas.DETECTIONS) and all(
        all(described[key]) for key in ("detections", "prediction_errors"))  # UI column docs
    logged = "\n".join(r.user_message for r in p.instance.all_logs(rerun.run_id))
    n = images.filter(pc.equal(images["shard"], shards[0])).num_rows
    assert f"predicting {versions[0]}/{shards[0]} on cpu: {n}/{n} images (100 %" \
        in logged  # the progress line a long shard shows in Dagster's log
    after = {v: _files(p.store, "detections", v) for v in versions}
    assert after[versions[1]] == before[versions[1]]
    assert after[versions[0]][f"{shards[1]}.parquet"] == before[versions[0]][f"{shards[1]}.parquet"]
    assert p.store.read("detections", f"{versions[0]}/{shards[0]}").equals(one)


def test_prediction_uses_the_pinned_version_not_the_alias(ingested: Pipeline, checkpoints) -> None:
    p = ingested
    shard = p.instance.get_dynamic_partitions("shard")[:1]
    first = register(p.defs, p.instance, {"weights": str(checkpoints[0])})
    predict(p.defs, p.instance, first, shard, FAST)
    reference = p.store.read("detections", f"{first}/{shard[0]}")
    register(p.defs, p.instance, {"weights": str(checkpoints[1])})  # alias moves to v2
    predict(p.defs, p.instance, first, shard, FAST)
    assert p.store.read("detections", f"{first}/{shard[0]}")["detections"].equals(
        reference["detections"])


def test_corrupt_and_missing_images_become_error_rows(instance, demo_copy, tmp_path, checkpoints):
    p = make_pipeline(instance, demo_copy, tmp_path)
    from al_assets.orchestration.runs import discover_batches, ingest

    ingest(p.defs, p.instance, discover_batches(p.source, p.instance),
           {"shard_size": 100, "verify_images": "none"})
    images = p.store.read("images", "batch-000")
    corrupt, missing = images.slice(0, 2).to_pylist()
    Path(corrupt["uri"][len("file://"):]).write_bytes(b"\xff\xd8\xff garbage")
    Path(missing["uri"][len("file://"):]).unlink()
    version = register(p.defs, p.instance, {"weights": str(checkpoints[0])})
    predict(p.defs, p.instance, version, ["batch-000.s000"], FAST)
    errors = p.store.read("prediction_errors", f"{version}/batch-000.s000")
    by_id = {r["image_id"]: r for r in errors.to_pylist()}
    assert set(by_id) == {corrupt["image_id"], missing["image_id"]}
    assert by_id[corrupt["image_id"]]["stage"] == "decode"
    assert by_id[missing["image_id"]]["stage"] == "read"
    predicted = p.store.read("detections", f"{version}/batch-000.s000")
    assert predicted.num_rows == images.num_rows - 2


def _declare_dead_runs_failed(instance) -> None:
    """What run monitoring does for a run whose worker died: fail it, free its pool slots."""
    from dagster import DagsterRunStatus, RunsFilter

    for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        instance.report_run_failed(record.dagster_run)
        instance.event_log_storage.free_concurrency_slots_for_run(record.dagster_run.run_id)


KILL_SCRIPT = """
import sys, time, dagster as dg
sys.path.insert(0, {repo!r})
from al_assets.core.detection.extractor import ClassScoreExtractor
forward = ClassScoreExtractor.forward
def slow_forward(self, *args, **kwargs):  # a wide window for the kill, whatever the load
    time.sleep(0.5)
    return forward(self, *args, **kwargs)
ClassScoreExtractor.forward = slow_forward
from tests.orchestration.conftest import make_pipeline
from al_assets.orchestration.runs import predict
from pathlib import Path
instance = dg.DagsterInstance.get()
p = make_pipeline(instance, Path({source!r}), Path({work!r}))
predict(p.defs, instance, {version!r}, [{shard!r}], {config!r})
"""


@pytest.mark.slow
def test_run_killed_mid_shard_leaves_the_previous_output(ingested: Pipeline, checkpoints, tmp_path):
    """SIGKILL while the shard is being written: readers still see the last complete version."""
    p = ingested
    shard = "batch-000.s000"
    version = register(p.defs, p.instance, {"weights": str(checkpoints[0])})
    predict(p.defs, p.instance, version, [shard], FAST)
    previous = p.store.read("detections", f"{version}/{shard}")
    slow = {**FAST, "batch_size": 1, "num_workers": 0, "score_thresh": 0.0,
            "detections_per_img": 200}
    work = Path(p.storage.root).parent
    script = KILL_SCRIPT.format(repo=str(Path(__file__).parents[2]), source=p.source.root,
                                work=str(work), version=version, shard=shard, config=slow)
    env = {**os.environ, "DAGSTER_HOME": str(p.instance.root_directory)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    folder = Path(p.store.uri("detections", f"{version}/{shard}")[len("file://"):]).parent
    deadline = time.monotonic() + 240
    while not list(folder.glob(".*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(folder.glob(".*.tmp")), "the child never started writing"
    time.sleep(0.3)  # mid-shard: 8 images at batch 1 take >= 4 s in the child
    assert child.poll() is None, "the child finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    _declare_dead_runs_failed(p.instance)
    assert p.store.read("detections", f"{version}/{shard}").equals(previous)
    assert p.store.partitions("detections", under=version) == [f"{version}/{shard}"]
    predict(p.defs, p.instance, version, [shard], FAST)  # a re-run completes and cleans up
    assert p.store.read("detections", f"{version}/{shard}").num_rows == previous.num_rows
    assert json.dumps(sorted(p.store.read("detections", f"{version}/{shard}")["image_id"].to_pylist())) \
        == json.dumps(sorted(previous["image_id"].to_pylist()))
