"""Schedules evaluated with build_schedule_context on a real instance, as the daemon runs them."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from al_assets.orchestration.partitions import MODEL_VERSION, SHARD, prediction_key
from al_assets.orchestration.runs import discover_batches, ingest
from al_assets.orchestration.schedules import (
    DEFAULT_CATCH_UP_CRON,
    DEFAULT_REFRESH_CRON,
    build_schedules,
)
from tests.orchestration.conftest import make_pipeline

WHEN = dt.datetime(2026, 12, 3, 2, 0, tzinfo=dt.timezone.utc)


def evaluate(schedule: dg.ScheduleDefinition, instance) -> list[dg.RunRequest]:
    """One tick, as the daemon evaluates it (partition keys checked against the repository)."""
    from al_assets.orchestration.definitions import defs

    with dg.build_schedule_context(instance=instance, scheduled_execution_time=WHEN,
                                   repository_def=defs.get_repository_def()) as context:
        return list(schedule.evaluate_tick(context).run_requests or [])


def by_name(name: str) -> dg.ScheduleDefinition:
    return {s.name: s for s in build_schedules()}[name]


def test_crons_come_from_the_environment_when_definitions_are_built(monkeypatch) -> None:
    crons = {s.name: s.cron_schedule for s in build_schedules()}
    assert crons == {"daily_refresh": DEFAULT_REFRESH_CRON, "catch_up_ingestion":
                     DEFAULT_CATCH_UP_CRON, "catch_up_predictions": DEFAULT_CATCH_UP_CRON}
    monkeypatch.setenv("AL_ASSETS_REFRESH_CRON", "*/15 * * * *")
    monkeypatch.setenv("AL_ASSETS_CATCH_UP_CRON", "30 1 * * 0")
    crons = {s.name: s.cron_schedule for s in build_schedules()}
    assert crons["daily_refresh"] == "*/15 * * * *"
    assert crons["catch_up_ingestion"] == crons["catch_up_predictions"] == "30 1 * * 0"
    assert build_schedules(refresh_cron="0 7 * * *")[0].cron_schedule == "0 7 * * *"
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in build_schedules())


def test_a_typo_in_a_cron_fails_when_the_definitions_load() -> None:
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="cron"):
        build_schedules(refresh_cron="every morning")


def test_the_daily_refresh_requests_one_run_per_tick_with_its_assets(instance) -> None:
    [request] = evaluate(by_name("daily_refresh"), instance)
    assert request.run_key == "daily:20261203T0200"
    assert request.asset_selection  # automation knows the run's assets (jobs.run_request)


def test_catch_up_ingests_only_the_batches_never_ingested(instance, demo_copy, tmp_path) -> None:
    p = make_pipeline(instance, demo_copy, tmp_path)
    batches = discover_batches(p.source, instance)
    assert batches == ["batch-000", "batch-001"]
    first = evaluate(by_name("catch_up_ingestion"), instance)
    assert [r.partition_key for r in first] == batches
    assert first[0].run_key == "catch-up:20261203T0200:batch-000"
    ingest(p.defs, instance, ["batch-000"], {"verify_images": "exists"})
    assert [r.partition_key for r in evaluate(by_name("catch_up_ingestion"), instance)] == [
        "batch-001"]


def test_catch_up_predicts_every_version_x_shard_without_scores(instance) -> None:
    instance.add_dynamic_partitions(MODEL_VERSION, ["al-class-scores-v1", "al-class-scores-v2"])
    instance.add_dynamic_partitions(SHARD, ["batch-000.s000", "batch-001.s000"])
    done = prediction_key("al-class-scores-v1", "batch-000.s000")
    instance.report_runless_asset_event(dg.AssetMaterialization("image_scores", partition=done))
    keys = [r.partition_key for r in evaluate(by_name("catch_up_predictions"), instance)]
    assert done not in keys
    assert sorted(keys) == sorted(
        prediction_key(v, s) for v in ("al-class-scores-v1", "al-class-scores-v2")
        for s in ("batch-000.s000", "batch-001.s000") if prediction_key(v, s) != done)
