"""Declarative automation: when downstream assets refresh after upstream partitions change.

The pool-wide views must refresh once, after every partition run they read from has finished,
and never be left stale. Dagster's ``eager()`` broke that three ways here (issue 14):

* a new batch's predictions are requested by ``new_shards_sensor`` up to a sensor interval
  *after* its ingestion: in that gap nothing is in progress, so the views refreshed on the old
  predictions, then again -> ``PredictionPending`` holds them back;
* ``any_deps_in_progress`` sees direct parents only: ``class_frequency`` reads ``box_scores``,
  which waits on a running ``detections`` run -> the views wait on anything in progress up to
  ``UPSTREAM_DEPTH`` levels above them;
* its trigger (a parent updated since the view was last requested *or updated*) forgot a
  parent that updated while a view run was in progress (views STALE for good), and counted
  updates between a tick and the run's start that the run did read (a second refresh) ->
  ``Outdated`` compares times instead: a parent materialized after the view's latest run
  *started*, by another run.
"""

from __future__ import annotations

import time
import warnings

import dagster as dg
from dagster._core.events import DagsterEventType

from al_assets.core.defaults import sensor_interval_s
from al_assets.core.sharding import batch_of_shard
from al_assets.orchestration.partitions import SHARD, prediction_partitions

INTERVAL_S = sensor_interval_s()  # the automation sensor's and new_shards_sensor's tick

PREDICTION_GRACE_S = max(300.0, 3.0 * INTERVAL_S)
"""How long views wait for a new batch's prediction runs to be created: 5 min (ten ticks of
new_shards_sensor at its default 30 s), or three ticks where the interval is set longer; past
this the sensor is off or there is no champion, and the views go ahead."""

UPSTREAM_DEPTH = 4
"""Levels of parents checked for in-progress runs: report <- confused_pairs <- least_margin <-
box_scores <- detections is the longest chain from a view down to a partition run."""

PARTITION_FOLLOWS_UPSTREAM = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("partition_follows_upstream")
"""Per-partition scores follow a predictions partition updated by another run. predict_job
scores its own shard, so ``eager``'s ``newly_missing`` trigger (a new shard's scores partition)
is left out: under the daemon it re-scored a shard its prediction run had just scored."""


class PredictionPending(dg.AutomationCondition):
    """True while an ingested batch has a shard that no prediction run was created for since.

    Evaluated on the code server (the automation sensor sets ``use_user_code_server``): two
    event-log queries per tick, whatever the number of shards, cached for the tick.
    """

    @property
    def name(self) -> str:
        return "prediction_pending"

    @property
    def description(self) -> str:
        return f"a batch ingested less than {PREDICTION_GRACE_S:.0f} s ago awaits its predictions"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        now = context.evaluation_time.timestamp()
        pending = _pending_cached(context.asset_graph_view.instance, now)
        subset = context.candidate_subset if pending else context.get_empty_subset()
        return dg.AutomationResult(context=context, true_subset=subset)


class Outdated(dg.AutomationCondition):
    """True when a parent materialized after the view's latest run started, from another run.

    A failed view run counts as its latest run (no retry loop; the next parent update retries
    it); a view never run is outdated once every parent exists. 2 + parents queries per view.
    """

    @property
    def name(self) -> str:
        return "outdated"

    @property
    def description(self) -> str:
        return "a parent was updated after this asset's latest run started"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        parents = context.asset_graph.get(context.key).parent_keys
        stale = outdated(context.asset_graph_view.instance, context.key, parents)
        subset = context.candidate_subset if stale else context.get_empty_subset()
        return dg.AutomationResult(context=context, true_subset=subset)


def outdated(instance: dg.DagsterInstance, key: dg.AssetKey, parents) -> bool:
    """See ``Outdated``."""
    latest = {parent: _latest(instance, parent) for parent in parents}
    planned = instance.get_latest_planned_materialization_info(key)
    if planned is None:
        return all(latest.values())
    run = instance.get_run_record_by_id(planned.run_id)
    started = (run.start_time or run.create_timestamp.timestamp()) if run else 0.0
    return any(record is not None and record.timestamp > started
               and record.run_id != planned.run_id for record in latest.values())


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey):
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1,
                                              ascending=False).records
    return records[0] if records else None


_last: tuple[tuple[int, float], list[str]] | None = None


def _pending_cached(instance: dg.DagsterInstance, now: float) -> list[str]:
    """``pending_batches`` once per tick: every view's condition asks the same question."""
    global _last
    key = (id(instance), now)
    if _last is None or _last[0] != key:
        _last = (key, pending_batches(instance, now))
    return _last[1]


def pending_batches(instance: dg.DagsterInstance, now: float | None = None,
                    grace_s: float = PREDICTION_GRACE_S) -> list[str]:
    """Batches ingested within ``grace_s`` with a shard no ``detections`` run planned since.

    Storage ids order events across assets, so "planned after the ingestion" is one comparison.
    The ingestion adds a batch's shards before it logs ``images`` (``assets/ingestion.py``), so
    no tick sees the batch ingested with its shards missing.
    """
    now = time.time() if now is None else now
    ingested = instance.get_latest_storage_id_by_partition(
        dg.AssetKey("images"), DagsterEventType.ASSET_MATERIALIZATION)
    planned: dict[str, int] = {}
    for key, storage_id in instance.get_latest_storage_id_by_partition(
            dg.AssetKey("detections"), DagsterEventType.ASSET_MATERIALIZATION_PLANNED).items():
        shard = prediction_partitions.get_partition_key_from_str(key).keys_by_dimension[SHARD]
        planned[shard] = max(planned.get(shard, -1), storage_id)
    waiting = sorted({batch_of_shard(s) for s in instance.get_dynamic_partitions(SHARD)
                      if ingested.get(batch_of_shard(s), -1) > planned.get(s, -1)})
    return [b for b in waiting if now - _ingested_at(instance, b) < grace_s]


def _ingested_at(instance: dg.DagsterInstance, batch: str) -> float:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("images"), asset_partitions=[batch]),
        limit=1, ascending=False).records
    return records[0].timestamp if records else 0.0


def _upstream_in_progress(depth: int = UPSTREAM_DEPTH) -> dg.AutomationCondition:
    busy = dg.AutomationCondition.in_progress()
    for _ in range(depth - 1):
        busy = dg.AutomationCondition.in_progress() | dg.AutomationCondition.any_deps_match(busy)
    return dg.AutomationCondition.any_deps_match(busy).with_label("upstream_in_progress")


VIEW_REFRESH = (
    (Outdated() | dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.will_be_requested()).with_label("a parent refreshes with it"))
    & ~_upstream_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.newly_requested()  # its run may not be created yet
    & ~PredictionPending()
).with_label("view_refresh")
"""Pool-wide views: when a parent changed after the view's last run started (or is refreshed in
the same run, so a chain of views is one run), no run above it is in progress and no new batch
awaits its predictions. ``eager``'s ``any_deps_missing`` is left out: model_version x shard
always has missing partitions (old versions never run on new shards)."""

with warnings.catch_warnings():  # use_user_code_server is beta: pinned Dagster, tested here
    warnings.simplefilter("ignore", dg.BetaWarning)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "automation_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=INTERVAL_S,
        use_user_code_server=True,  # PredictionPending reads the event log: Python, not a snapshot
        description="Evaluates the assets' automation conditions (scores, views, report).",
    )
