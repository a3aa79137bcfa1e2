"""Schedules: a daily refresh of the queue and report, and a catch-up run of the whole chain."""

import os

import dagster as dg

from al_assets.orchestration.jobs import ingest_job, predict_job, refresh_views_job, run_request
from al_assets.orchestration.partitions import BATCH, MODEL_VERSION, SHARD, prediction_key

REFRESH_CRON = os.environ.get("AL_ASSETS_REFRESH_CRON", "0 6 * * *")
CATCH_UP_CRON = os.environ.get("AL_ASSETS_CATCH_UP_CRON", "0 2 * * *")

@dg.schedule(
    name="daily_refresh", job=refresh_views_job, cron_schedule=REFRESH_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Recompute rankings, labeling queue, analysis and report (cron: "
    "AL_ASSETS_REFRESH_CRON).",
)
def daily_refresh_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    return run_request(refresh_views_job, run_key=f"daily:{tick}")


@dg.schedule(
    cron_schedule=CATCH_UP_CRON, job=ingest_job, default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Ingest every batch partition that was never ingested (cron: "
    "AL_ASSETS_CATCH_UP_CRON); the sensor-free way to run the chain's first step.",
)
def catch_up_ingestion(context: dg.ScheduleEvaluationContext):
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    done = context.instance.get_materialized_partitions(dg.AssetKey("images"))
    for batch in context.instance.get_dynamic_partitions(BATCH):
        if batch not in done:
            yield run_request(ingest_job, run_key=f"catch-up:{tick}:{batch}", partition_key=batch)


@dg.schedule(
    cron_schedule=CATCH_UP_CRON, job=predict_job, default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Predict and score every model version x shard never predicted (cron: "
    "AL_ASSETS_CATCH_UP_CRON); the views follow by automation or the daily refresh.",
)
def catch_up_predictions(context: dg.ScheduleEvaluationContext):
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    done = context.instance.get_materialized_partitions(dg.AssetKey("image_scores"))
    for version in context.instance.get_dynamic_partitions(MODEL_VERSION):
        for shard in context.instance.get_dynamic_partitions(SHARD):
            key = prediction_key(version, shard)
            if key not in done:
                yield run_request(predict_job, run_key=f"catch-up:{tick}:{key}", partition_key=key)


SCHEDULES = [daily_refresh_schedule, catch_up_ingestion, catch_up_predictions]
