"""The real dagster-daemon on a new batch: each view refreshes once, after what it reads (issue 14).

The pool is ingested, predicted and viewed in-process; the daemon starts on the same instance
and settles (its first ticks may refresh the views for the champion it discovers); then a batch
arrives in the source folder and the test watches what the daemon's sensors and automation
launch, from the instance's own run and event records.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from al_assets.core.demo.generator import add_demo_batch
from al_assets.orchestration.jobs import VIEW_KEYS
from al_assets.orchestration.runs import discover_batches, ingest, predict, refresh_views, register
from tests.orchestration.conftest import FAST, make_pipeline

REPO = Path(__file__).resolve().parents[2]
POOL_VIEWS = set(VIEW_KEYS) - {dg.AssetKey("splits")}  # splits reads no predictions
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
TICK_S = 5  # the daemon's AL_ASSETS_SENSOR_INTERVAL_S (storage and registry sensors: 10 s)
QUIET_S = 40  # no new run for this long = settled: 4 ticks of the slowest sensor


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_daemon_refreshes_each_view_once_after_a_new_batchs_prediction(
    demo_copy: Path, tmp_path: Path, checkpoints
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    work = tmp_path / "work"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        p = make_pipeline(instance, demo_copy, work)
        ingest(p.defs, instance, discover_batches(p.source, instance), {"verify_images": "exists"})
        version = register(p.defs, instance, {"weights": str(checkpoints[0])})
        predict(p.defs, instance, version, config=FAST)
        refresh_views(p.defs, instance)

        daemon = _start_daemon(home, work / "store", demo_copy, tmp_path / "daemon.log")
        try:
            _settle(instance, quiet_s=QUIET_S, timeout_s=600)  # startup ticks done, nothing running
            arrived = time.time()
            add_demo_batch(demo_copy, 6)
            predicted = _wait_for(instance, arrived, "predict_job", timeout_s=600)
            _wait_for_materialization(instance, dg.AssetKey("uncertainty_report"), arrived, 900)
            _settle(instance, quiet_s=QUIET_S, timeout_s=600)  # and nothing more after it
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)

        log = (tmp_path / "daemon.log").read_text()[-3000:]
        runs = _runs_since(instance, arrived)
        assert [r.job_name for r in runs if r.job_name == "ingest_job"] == ["ingest_job"], log
        assert predicted.status == dg.DagsterRunStatus.SUCCESS, log
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [
            (r.job_name, r.status) for r in runs]
        graph = p.defs.resolve_asset_graph()
        for key in POOL_VIEWS:  # each view once, from a run created after its parents' updates
            events = _materializations(instance, key, arrived)
            assert len(events) == 1, f"{key.to_user_string()} refreshed {len(events)} times"
            created = instance.get_run_record_by_id(events[0].run_id).create_timestamp.timestamp()
            for parent in graph.get(key).parent_keys:
                for update in _materializations(instance, parent, arrived):
                    assert update.run_id == events[0].run_id or update.timestamp <= created, (
                        f"{key.to_user_string()} started before {parent.to_user_string()} updated")


def _start_daemon(home: Path, store: Path, source: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(DAGSTER_HOME=str(home), AL_ASSETS_STORAGE_ROOT=str(store),
               AL_ASSETS_SOURCE_ROOT=str(source), OMP_NUM_THREADS="1",
               AL_ASSETS_SENSOR_INTERVAL_S=str(TICK_S))
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
         str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _runs_since(instance: dg.DagsterInstance, since: float) -> list[dg.DagsterRun]:
    records = instance.get_run_records(dg.RunsFilter(created_after=_utc(since)))
    return [r.dagster_run for r in sorted(records, key=lambda r: r.create_timestamp)]


def _utc(timestamp: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _settle(instance: dg.DagsterInstance, quiet_s: float, timeout_s: float) -> None:
    """Until no run is unfinished and none was created for ``quiet_s`` (> 3 ticks of each
    sensor)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = instance.get_run_records()
        busy = any(r.dagster_run.status not in FINISHED for r in records)
        newest = max((r.create_timestamp.timestamp() for r in records), default=0.0)
        if not busy and time.time() - newest > quiet_s:
            return
        time.sleep(5)
    runs = [(r.create_timestamp.strftime("%H:%M:%S"), r.dagster_run.job_name, r.dagster_run.status.value,
             sorted(k.to_user_string() for k in r.dagster_run.asset_selection or ()))
            for r in sorted(records, key=lambda r: r.create_timestamp)]
    raise AssertionError(f"the daemon did not settle: runs kept coming or never finished: {runs}")


def _wait_for(instance, since: float, job: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = [r for r in instance.get_run_records(dg.RunsFilter(
            job_name=job, created_after=_utc(since))) if r.dagster_run.status in FINISHED]
        if records:
            return _Finished(records[0])
        time.sleep(5)
    raise AssertionError(f"no {job} run finished within {timeout_s} s of the new batch")


def _materializations(instance, key: dg.AssetKey, since: float) -> list:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100,
                                              ascending=False).records
    return [r for r in records if r.timestamp >= since]


def _wait_for_materialization(instance, key: dg.AssetKey, since: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _materializations(instance, key, since):
            return
        time.sleep(5)
    raise AssertionError(f"{key.to_user_string()} was not refreshed within {timeout_s} s")


class _Finished:
    """A finished run's id, status and times (seconds since the epoch)."""

    def __init__(self, record) -> None:
        self.run_id = record.dagster_run.run_id
        self.status = record.dagster_run.status
        self.create_timestamp = record.create_timestamp.timestamp()
        self.end_time = record.end_time or record.update_timestamp.timestamp()
