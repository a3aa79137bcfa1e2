"""The views' automation, evaluated by Dagster's own evaluator on a real instance and real runs.

Each step puts the instance in the state the daemon would see (a batch just ingested, a
prediction run created and not finished, a view run in progress while a parent updates) and
asks ``evaluate_automation_conditions``, the evaluation the automation sensor runs, what it
would request. The daemon itself runs in ``test_automation_daemon.py`` (slow).
"""

from __future__ import annotations

import time

import dagster as dg
import pytest

from al_assets.core.demo.generator import add_demo_batch
from al_assets.orchestration.automation import pending_batches
from al_assets.orchestration.jobs import VIEW_KEYS
from al_assets.orchestration.partitions import prediction_key
from al_assets.orchestration.runs import (
    discover_batches,
    ingest,
    predict,
    refresh_views,
    register,
)
from tests.orchestration.conftest import FAST, Pipeline, make_pipeline

VIEWS = set(VIEW_KEYS) - {dg.AssetKey("splits")}  # splits reads no predictions: it may go first


def evaluate(p: Pipeline, cursor):
    """One automation tick: the asset keys it requests, and the cursor for the next."""
    result = dg.evaluate_automation_conditions(defs=p.defs, instance=p.instance, cursor=cursor)
    requested = {subset.key for subset in result._requested_subsets if not subset.is_empty}
    return requested, result.cursor


def in_flight(p: Pipeline, job: str, partition_key=None, assets=None) -> dg.DagsterRun:
    """A run created (its materializations planned) and not finished yet; ``assets``: the
    subset of the job's assets it plans, as automation's runs name theirs."""
    job_def = p.defs.resolve_job_def(job)
    tags = job_def.partitions_def.get_tags_for_partition_key(partition_key) if partition_key else {}
    selection = frozenset(dg.AssetKey(a) for a in assets) if assets else None
    return p.instance.create_run_for_job(job_def=job_def, tags=tags, asset_selection=selection,
                                         status=dg.DagsterRunStatus.STARTED)


@pytest.fixture
def pool(instance, demo_copy, tmp_path, checkpoints) -> tuple[Pipeline, str]:
    """The demo pool predicted by a champion, every view materialized."""
    p = make_pipeline(instance, demo_copy, tmp_path)
    ingest(p.defs, instance, discover_batches(p.source, instance), {"verify_images": "exists"})
    version = register(p.defs, instance, {"weights": str(checkpoints[0])})
    predict(p.defs, instance, version, config=FAST)
    refresh_views(p.defs, instance)
    return p, version


def test_views_wait_for_a_new_batchs_predictions_then_refresh_once(pool, demo_copy) -> None:
    p, version = pool
    requested, cursor = evaluate(p, None)
    assert not requested & VIEWS  # first evaluation: everything is up to date

    add_demo_batch(demo_copy, 6)
    ingest(p.defs, p.instance, discover_batches(p.source, p.instance), {"verify_images": "exists"})
    new_shard = "batch-002.s000"
    assert pending_batches(p.instance) == ["batch-002"]
    requested, cursor = evaluate(p, cursor)
    assert not requested & VIEWS, "views refreshed before the new batch was even predicted"

    run = in_flight(p, "predict_job", prediction_key(version, new_shard))  # the sensor's run
    assert pending_batches(p.instance) == []
    requested, cursor = evaluate(p, cursor)
    assert not requested & VIEWS, "views refreshed while the new shard's prediction was queued"

    p.instance.report_run_canceled(run)  # the queued run is replaced by a real one
    predict(p.defs, p.instance, version, [new_shard], config=FAST)
    requested, cursor = evaluate(p, cursor)
    assert requested >= VIEWS, "views left stale after the prediction"
    requested, cursor = evaluate(p, cursor)
    assert not requested & VIEWS  # requested once, not on every tick


def test_a_parent_updated_during_a_view_run_is_not_forgotten(pool) -> None:
    p, version = pool
    _, cursor = evaluate(p, None)
    shard = p.instance.get_dynamic_partitions("shard")[0]
    predict(p.defs, p.instance, version, [shard], config=FAST)
    requested, cursor = evaluate(p, cursor)
    assert dg.AssetKey("class_frequency") in requested

    view_run = in_flight(p, "refresh_views_job")  # the requested view run has started...
    predict(p.defs, p.instance, version, [shard], config=FAST)  # ...when a parent updates
    requested, cursor = evaluate(p, cursor)
    assert not requested & VIEWS, "a second view run started while one was in progress"

    _materialize_in(p, view_run, "class_frequency")  # ...and it finishes, on the old scores
    requested, cursor = evaluate(p, cursor)
    assert dg.AssetKey("class_frequency") in requested, "the update made mid-run was forgotten"


def test_updates_before_a_view_run_started_need_no_second_refresh(pool) -> None:
    p, version = pool
    _, cursor = evaluate(p, None)
    predict(p.defs, p.instance, version, p.instance.get_dynamic_partitions("shard")[:1], FAST)
    requested, cursor = evaluate(p, cursor)
    assert dg.AssetKey("class_frequency") in requested
    refresh_views(p.defs, p.instance)  # the requested run, started after the update
    requested, cursor = evaluate(p, cursor)
    assert not requested & VIEWS


def test_the_evaluation_waits_for_a_splits_run_in_progress(pool, demo_copy) -> None:
    """model_evaluation and confusion_matrix are one step (one pass over the shards), so either
    one's request runs both. In CI (2026-12-03) confusion_matrix, which did not name splits as a
    parent although it reads the held-out split, was requested while a splits run was in
    progress, and model_evaluation refreshed with it 12 s before splits updated."""
    p, version = pool
    _, cursor = evaluate(p, None)
    add_demo_batch(demo_copy, 6)
    ingest(p.defs, p.instance, discover_batches(p.source, p.instance), {"verify_images": "exists"})
    new_shard = "batch-002.s000"
    run = in_flight(p, "predict_job", prediction_key(version, new_shard))
    requested, cursor = evaluate(p, cursor)
    assert dg.AssetKey("splits") in requested  # it reads no predictions: it goes first
    assert not requested & VIEWS

    split_run = in_flight(p, "refresh_views_job", assets=["splits"])  # the requested run
    p.instance.report_run_canceled(run)
    predict(p.defs, p.instance, version, [new_shard], config=FAST)
    requested, cursor = evaluate(p, cursor)
    evaluation = {dg.AssetKey("model_evaluation"), dg.AssetKey("confusion_matrix")}
    assert not requested & evaluation, "evaluated while splits was being refreshed"
    assert dg.AssetKey("uncertainty_report") not in requested  # it reads model_evaluation

    _materialize_in(p, split_run, "splits")
    requested, cursor = evaluate(p, cursor)
    assert evaluation | {dg.AssetKey("uncertainty_report")} <= requested


def _materialize_in(p: Pipeline, run: dg.DagsterRun, asset: str) -> None:
    """What the run's step would log: the asset's materialization, then the run's success."""
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData

    for event_type, data in ((DagsterEventType.ASSET_MATERIALIZATION,
                              StepMaterializationData(dg.AssetMaterialization(asset))),
                             (DagsterEventType.RUN_SUCCESS, None)):
        p.instance.report_dagster_event(DagsterEvent(
            event_type_value=event_type.value, job_name=run.job_name, event_specific_data=data),
            run_id=run.run_id)


def test_a_batch_without_a_champion_holds_the_views_for_the_grace_period_only(pool, demo_copy):
    p, _ = pool
    add_demo_batch(demo_copy, 6)
    ingest(p.defs, p.instance, discover_batches(p.source, p.instance), {"verify_images": "exists"})
    assert pending_batches(p.instance) == ["batch-002"]
    assert pending_batches(p.instance, now=time.time() + 3600) == []
