"""Sensors: new annotation files -> ingestion; new shards or model versions -> prediction.

Each one is idempotent twice over: a cursor remembers what was seen, and every RunRequest has a
``run_key`` naming exactly what it computes, so a repeated tick never launches duplicates.
"""

import json
import time

import dagster as dg
from dagster._core.events import DagsterEventType

from al_assets.core.coco.discovery import batch_pages
from al_assets.core.defaults import sensor_interval_s
from al_assets.core.sharding import batch_of_shard
from al_assets.core.splits import LABEL_BATCH_PREFIX
from al_assets.orchestration.jobs import (
    ingest_job,
    label_import_job,
    predict_job,
    refresh_views_job,
    run_request,
    train_job,
)
from al_assets.orchestration.partitions import (
    BATCH,
    LABEL_BATCH,
    SHARD,
    batch_partitions,
    label_batch_partitions,
    model_version_key,
    model_version_partitions,
    new_keys,
    prediction_key,
)
from al_assets.orchestration.resources import CocoSourceResource, MlflowResource

PAGE_SIZE = 1000
TICK_BUDGET_S = 20.0  # Dagster cancels a tick after 60 s; stay well below
INTERVAL_S = sensor_interval_s()  # 30 s unless AL_ASSETS_SENSOR_INTERVAL_S says otherwise
LISTING_INTERVAL_S = 2 * INTERVAL_S  # the sensors that list storage or poll the registry


@dg.sensor(
    jobs=[ingest_job, label_import_job], minimum_interval_seconds=LISTING_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the source's annotations/ and labels/ folders (or S3 prefixes): each "
    "new annotation file becomes a batch and one ingestion run, each new label file a label "
    "batch and one label-import run.",
)
def new_data_sensor(context: dg.SensorEvaluationContext, coco_source: CocoSourceResource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    deadline = time.monotonic() + TICK_BUDGET_S
    batches, cursor["after"] = _new_files(context, coco_source, coco_source.annotations_uri(),
                                          BATCH, "images", cursor.get("after"), deadline, "")
    labels, cursor["labels_after"] = _new_files(
        context, coco_source, coco_source.labels_uri(), LABEL_BATCH, "labeled_images",
        cursor.get("labels_after"), deadline, LABEL_BATCH_PREFIX, missing_ok=True)
    requests = [run_request(ingest_job, run_key=f"ingest:{b}:{etag}", partition_key=b)
                for b, etag in sorted(batches.items())]
    requests += [run_request(label_import_job, run_key=f"labels:{b}:{etag}", partition_key=b)
                 for b, etag in sorted(labels.items())]
    return dg.SensorResult(  # Dagster adds the partitions before it launches the runs
        run_requests=requests, cursor=json.dumps(cursor),
        dynamic_partitions_requests=_additions(context.instance, {
            batch_partitions: sorted(batches), label_batch_partitions: sorted(labels)}))


def _new_files(
    context: dg.SensorEvaluationContext, source: CocoSourceResource, folder: str, partitions: str,
    asset: str, start_after: str | None, deadline: float, prefix: str, missing_ok: bool = False,
) -> tuple[dict[str, str], str | None]:
    """Files of ``folder`` to ingest: {partition key: etag}, and the paging cursor.

    New files, and files whose partition never materialized ``asset`` (their run failed): those
    are requested again under their current etag, so the run key dedupes an unchanged bad file
    and a fixed one is retried.
    """
    done = context.instance.get_materialized_partitions(dg.AssetKey(asset))
    known = {p for p in context.instance.get_dynamic_partitions(partitions) if p in done}
    new: dict[str, str] = {}
    try:
        for page in batch_pages(source.objects(), folder, start_after=start_after,
                                page_size=PAGE_SIZE, deadline=deadline):
            for uri in page.skipped:
                context.log.warning(f"{uri}: file name unusable as a batch name; rename it")
            new.update({prefix + f.batch: f.info.etag for f in page.batches
                        if prefix + f.batch not in known})
            start_after = page.cursor  # None after a full pass: the next tick starts over
    except FileNotFoundError:
        if missing_ok:  # no labels/ folder yet: nothing came back from labeling
            return {}, None
        raise
    return new, start_after


@dg.sensor(
    job=predict_job, default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=INTERVAL_S,
    description="When batches are ingested, predicts their shards with the champion version.",
)
def new_shards_sensor(context: dg.SensorEvaluationContext, mlflow: MlflowResource):
    """Every ``images`` materialization since the cursor (several batches may land between two
    ticks), then one event-log query for all their shards' predictions."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("images"), after_storage_id=after),
        limit=PAGE_SIZE, ascending=True).records
    if not records:
        return dg.SkipReason("no batch ingested since the last tick")
    ingested = {r.partition_key: r.storage_id for r in records}  # latest ingestion per batch
    versions = {r.partition_key: _data_version(r) for r in records}
    cursor = str(records[-1].storage_id)
    version = _alias_version(mlflow)
    if version is None:  # the first champion's promotion predicts the whole pool
        return dg.SkipReason(f"no {mlflow.alias!r} version of {mlflow.model_name!r} yet; "
                             f"batches {sorted(ingested)} wait for one")
    key = model_version_key(mlflow.model_name, version)
    shards = [s for s in context.instance.get_dynamic_partitions(SHARD)
              if batch_of_shard(s) in ingested]
    requests = [run_request(predict_job, partition_key=prediction_key(key, shard),
                            run_key=f"predict:{key}:{shard}:{versions[batch_of_shard(shard)]}")
                for shard in _stale(context.instance, key, shards, ingested)]
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def _data_version(record) -> str:
    """The batch's ``images`` data version (its content fingerprint): a run key per version, so
    a forced re-ingestion of identical inputs is not predicted again (the key was used)."""
    tags = record.asset_materialization.tags or {}
    return tags.get("dagster/data_version") or str(record.storage_id)


@dg.sensor(
    jobs=[predict_job, refresh_views_job], minimum_interval_seconds=LISTING_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Polls the MLflow registry: each new version becomes a model_version "
    "partition; the champion's version is predicted on every shard not yet predicted with it "
    "(a promotion predicts the pool); an alias move to a predicted version refreshes the views.",
)
def new_model_version_sensor(context: dg.SensorEvaluationContext, mlflow: MlflowResource):
    cursor = json.loads(context.cursor) if context.cursor else {"max_version": 0, "alias": None}
    registry = mlflow.registry()  # unreachable -> RegistryError: the tick fails, cursor kept
    versions = [v for v in registry.versions(mlflow.model_name) if v > cursor["max_version"]]
    alias = _alias_version(mlflow)
    keys = [model_version_key(mlflow.model_name, v) for v in versions]
    requests = []
    if alias is not None and alias != cursor["alias"]:  # a promotion, or a first champion
        key = model_version_key(mlflow.model_name, alias)
        shards = context.instance.get_dynamic_partitions(SHARD)
        done = context.instance.get_materialized_partitions(dg.AssetKey("detections"))
        requests = [run_request(predict_job, run_key=f"predict:{key}:{shard}",
                                partition_key=prediction_key(key, shard))
                    for shard in shards if prediction_key(key, shard) not in done]
        keys.append(key)
        if not requests and not _views_describe(context.instance, key):  # only the views change
            requests.append(run_request(refresh_views_job,
                                        run_key=f"views:{mlflow.alias}:{alias}"))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=_additions(context.instance, {model_version_partitions: keys}),
        cursor=json.dumps({"max_version": max(versions, default=cursor["max_version"]),
                           "alias": alias}),
    )


@dg.asset_sensor(
    asset_key=dg.AssetKey("labeled_images"), job=train_job,
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=INTERVAL_S,
    description="When a label file is imported, trains a challenger on every labeled "
    "train-split image and runs the evaluation gate (which may promote it).",
)
def new_labels_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    batch = asset_event.dagster_event.partition
    latest = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("challenger")), limit=1, ascending=False,
    ).records
    if latest and latest[0].timestamp > asset_event.timestamp:  # e.g. `al-assets train` ran
        return dg.SkipReason(f"a challenger was trained after {batch} was imported")
    return run_request(train_job, run_key=f"train:{batch}:{asset_event.run_id}",
                         tags={"al_assets/label_batch": str(batch)})


def _stale(instance: dg.DagsterInstance, key: str, shards: list[str],
           ingested: dict[str, int]) -> list[str]:
    """Shards with no ``detections`` under ``key`` since their batch's ingestion (storage ids).

    A pipeline run by hand or by the CLI (``make demo``) has already predicted what the
    sensor sees as new on its first tick; predicting it again would only cost GPU time.
    """
    wanted = {str(prediction_key(key, shard)): shard for shard in shards}
    latest = instance.get_latest_storage_id_by_partition(
        dg.AssetKey("detections"), DagsterEventType.ASSET_MATERIALIZATION, set(wanted))
    return [shard for partition, shard in wanted.items()
            if latest.get(partition, -1) < ingested[batch_of_shard(shard)]]


def _additions(instance: dg.DagsterInstance,
               keys: dict[dg.DynamicPartitionsDefinition, list[str]]) -> list:
    """AddDynamicPartitionsRequests for the keys not there yet (none when nothing is new)."""
    return [partitions.build_add_request(new) for partitions, wanted in keys.items()
            if (new := new_keys(instance, partitions.name, wanted))]


def _views_describe(instance: dg.DagsterInstance, key: str) -> bool:
    """Whether the queue (the last view refreshed) was built for model version ``key``: then
    a newly seen alias (the daemon's first tick after ``make demo``) needs no refresh."""
    event = instance.get_latest_materialization_event(dg.AssetKey("labeling_queue"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return getattr(metadata.get("model_version"), "value", None) == key


def _alias_version(mlflow: MlflowResource) -> int | None:
    """The version the deployment's champion alias points to (the mlflow resource's model)."""
    from al_assets.core.registry import RegistryError

    try:
        return int(mlflow.registry().resolve(mlflow.model_name, alias=mlflow.alias).version)
    except RegistryError as exc:
        if "is not set" in str(exc) or "does not exist" in str(exc):
            return None
        raise


SENSORS = [new_data_sensor, new_shards_sensor, new_model_version_sensor, new_labels_sensor]
