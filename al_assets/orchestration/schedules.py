"""Schedules: a daily refresh of the queue and report, and a catch-up run of the whole chain."""

import os
from collections.abc import Iterator

import dagster as dg

from al_assets.orchestration.jobs import ingest_job, predict_job, refresh_views_job, run_request
from al_assets.orchestration.partitions import BATCH, MODEL_VERSION, SHARD, prediction_key

DEFAULT_REFRESH_CRON = "0 6 * * *"  # daily refresh of the views, before a team's working day
DEFAULT_CATCH_UP_CRON = "0 2 * * *"  # nightly catch-up of never-ingested / never-predicted parts


def _tick(context: dg.ScheduleEvaluationContext) -> str:
    return context.scheduled_execution_time.strftime("%Y%m%dT%H%M")


def daily_refresh(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return run_request(refresh_views_job, run_key=f"daily:{_tick(context)}")


def catch_up_ingestion(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
    done = context.instance.get_materialized_partitions(dg.AssetKey("images"))
    for batch in context.instance.get_dynamic_partitions(BATCH):
        if batch not in done:
            yield run_request(ingest_job, run_key=f"catch-up:{_tick(context)}:{batch}",
                              partition_key=batch)


def catch_up_predictions(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
    done = context.instance.get_materialized_partitions(dg.AssetKey("image_scores"))
    for version in context.instance.get_dynamic_partitions(MODEL_VERSION):
        for shard in context.instance.get_dynamic_partitions(SHARD):
            key = prediction_key(version, shard)
            if key not in done:
                yield run_request(predict_job, run_key=f"catch-up:{_tick(context)}:{key}",
                                  partition_key=key)


def build_schedules(refresh_cron: str | None = None, catch_up_cron: str | None = None,
                    ) -> list[dg.ScheduleDefinition]:
    """The three schedules, stopped until turned on. Crons from the arguments, else from
    AL_ASSETS_REFRESH_CRON / AL_ASSETS_CATCH_UP_CRON, read when the definitions are built."""
    refresh = refresh_cron or os.environ.get("AL_ASSETS_REFRESH_CRON", DEFAULT_REFRESH_CRON)
    catch_up = catch_up_cron or os.environ.get("AL_ASSETS_CATCH_UP_CRON", DEFAULT_CATCH_UP_CRON)
    stopped = dg.DefaultScheduleStatus.STOPPED
    return [
        dg.ScheduleDefinition(
            name="daily_refresh", cron_schedule=refresh, job=refresh_views_job,
            execution_fn=daily_refresh, default_status=stopped,
            description="Recompute rankings, labeling queue, analysis and report (cron: "
            "AL_ASSETS_REFRESH_CRON)."),
        dg.ScheduleDefinition(
            name="catch_up_ingestion", cron_schedule=catch_up, job=ingest_job,
            execution_fn=catch_up_ingestion, default_status=stopped,
            description="Ingest every batch partition that was never ingested (cron: "
            "AL_ASSETS_CATCH_UP_CRON); the sensor-free way to run the chain's first step."),
        dg.ScheduleDefinition(
            name="catch_up_predictions", cron_schedule=catch_up, job=predict_job,
            execution_fn=catch_up_predictions, default_status=stopped,
            description="Predict and score every model version x shard never predicted (cron: "
            "AL_ASSETS_CATCH_UP_CRON); the views follow by automation or the daily refresh."),
    ]
