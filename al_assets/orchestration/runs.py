"""Launch the jobs in-process on the real instance: what the CLI and the demo run."""

from collections.abc import Sequence

import dagster as dg

from al_assets.core.coco.discovery import list_batch_files
from al_assets.core.errors import AlAssetsError
from al_assets.orchestration.partitions import (
    BATCH,
    MODEL_VERSION,
    SHARD,
    add_partitions,
    prediction_key,
)
from al_assets.orchestration.resources import CocoSourceResource


class RunFailedError(AlAssetsError):
    """A job run failed; the message carries the step errors."""


def run_job(
    defs: dg.Definitions, name: str, instance: dg.DagsterInstance, *,
    partition_key: str | dg.MultiPartitionKey | None = None, run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def(name).execute_in_process(
        instance=instance, partition_key=partition_key, run_config=run_config or {},
        raise_on_error=False,
    )
    if not result.success:
        raise RunFailedError(f"{name} [{partition_key or '-'}] failed: {_errors(result)}")
    return result


def discover_batches(source: CocoSourceResource, instance: dg.DagsterInstance) -> list[str]:
    """Add a ``batch`` partition for every annotation file; returns the new batch names."""
    names: list[str] = []
    start_after = None
    while True:
        batches, _, start_after, more = list_batch_files(
            source.objects(), source.annotations_uri(), start_after=start_after
        )
        names += [b.batch for b in batches]
        if not more:
            return add_partitions(instance, BATCH, names)


def ingest(defs: dg.Definitions, instance: dg.DagsterInstance, batches: Sequence[str],
           config: dict | None = None) -> None:
    for batch in batches:
        run_job(defs, "ingest_job", instance, partition_key=batch,
                run_config={"ops": {"coco_batch": {"config": config or {}}}})


def register(defs: dg.Definitions, instance: dg.DagsterInstance, config: dict | None = None) -> str:
    """Register a model version; returns its model_version partition key."""
    result = run_job(defs, "register_job", instance,
                     run_config={"ops": {"registered_model": {"config": config or {}}}})
    event = result.asset_materializations_for_node("registered_model")[0]
    return str(event.metadata["model_version_partition"].value)


def predict(
    defs: dg.Definitions, instance: dg.DagsterInstance, model_version: str,
    shards: Sequence[str] | None = None, config: dict | None = None,
) -> list[str]:
    """Predict and score the given shards (default: all) under one model version."""
    add_partitions(instance, MODEL_VERSION, [model_version])
    todo = list(shards) if shards is not None else instance.get_dynamic_partitions(SHARD)
    for shard in todo:
        run_job(defs, "predict_job", instance, partition_key=prediction_key(model_version, shard),
                run_config={"ops": {"predictions": {"config": config or {}}}})
    return todo


def refresh_views(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return run_job(defs, "refresh_views_job", instance)


def _errors(result: dg.ExecuteInProcessResult) -> str:
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None and (error.cls_name or "").startswith(
                "Dagster"):
            error = error.cause  # Dagster's wrapper -> the error the asset raised
        messages.append(f"{event.step_key}: {error.message.strip() if error else 'unknown'}")
    for event in result.all_events:
        if event.event_type_value == "RUN_FAILURE" and not messages:
            messages.append(event.message or "run failed")
    return "; ".join(messages) or "see the run's logs"
