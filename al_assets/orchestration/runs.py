"""Launch the jobs in-process on the real instance: what the CLI and the demo run."""

import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pyarrow as pa

from al_assets.core.coco.discovery import batch_pages
from al_assets.core.defaults import console_log_level
from al_assets.core.errors import AlAssetsError
from al_assets.orchestration.jobs import JOB_KEYS
from al_assets.orchestration.logs import cli_console_logger
from al_assets.orchestration.partitions import (
    BATCH,
    LABEL_BATCH,
    MODEL_VERSION,
    SHARD,
    add_partitions,
    prediction_key,
)
from al_assets.core.storage.objects import join_uri, to_uri
from al_assets.orchestration.resources import CocoSourceResource


_CLASS_PREFIX = re.compile(r"^(?:[A-Za-z_][\w]*\.)+[A-Za-z_]\w*: ")  # "pkg.mod.Error: "


PID_TAG, HOST_TAG = "al_assets/pid", "al_assets/host"


def release_killed_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail this host's in-process runs whose process is gone, freeing their `gpu` slots.

    A CLI run killed mid-way (SIGKILL, out of memory) stays STARTED with its pool slot claimed:
    run monitoring does not watch in-process runs, and the next run would wait for the slot
    forever. The run's tags say which process ran it; a dead process cannot finish it.
    """
    host, released = socket.gethostname(), []
    for record in instance.get_run_records(dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED], tags={HOST_TAG: host})):
        run = record.dagster_run
        if _alive(int(run.tags.get(PID_TAG, "0"))):
            continue
        instance.report_run_failed(run)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        print(f"[al-assets] run {run.run_id} ({run.job_name}) died with its process "
              f"{run.tags.get(PID_TAG)}: marked failed, its pool slots freed", flush=True)
        released.append(run.run_id)
    return released


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFailedError(AlAssetsError):
    """A job run failed; the message carries the step errors."""


class UsageError(RunFailedError):
    """A run refused before it started: it names something that does not exist."""


def _sample(keys: Sequence[str], n: int = 4) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:n])
    return shown + (f" ... {keys[-1]} ({len(keys)} in all)" if len(keys) > n else "")


def _check_partitions(instance: dg.DagsterInstance, name: str, keys: Sequence[str],
                      hint: str) -> None:
    """Refuse unknown partition keys with the known ones, instead of Dagster's traceback."""
    known = instance.get_dynamic_partitions(name)
    unknown = [k for k in keys if k not in set(known)] if keys else []
    if unknown:
        have = f"known: {_sample(known)}" if known else f"no {name} exists yet"
        raise UsageError(f"unknown {name} {unknown[0]!r}; {have} ({hint})")


def check_shards(instance: dg.DagsterInstance, shards: Sequence[str]) -> None:
    _check_partitions(instance, SHARD, shards,
                      "`al-assets ingest` adds the shards of new annotation files")


def check_batches(instance: dg.DagsterInstance, batches: Sequence[str]) -> None:
    _check_partitions(instance, BATCH, batches,
                      "a batch is the stem of a file in the source's annotations/ folder")


def check_model_version(registry, key: str) -> None:
    """A typo'd version must fail before it becomes a ``model_version`` partition for good."""
    from al_assets.orchestration.partitions import parse_model_version_key

    try:
        name, version = parse_model_version_key(key)
    except ValueError as exc:
        raise UsageError(f"{exc} (`al-assets models` lists the registered versions)") from None
    versions = registry.versions(name)
    if version not in versions:
        have = (f"{name} has versions {', '.join(f'v{v}' for v in versions)}" if versions
                else f"no model {name!r} is registered")
        raise UsageError(f"model version {key!r} does not exist: {have} (`al-assets models` "
                         "lists them, `al-assets register` adds one)")


def run_job(
    defs: dg.Definitions, name: str, instance: dg.DagsterInstance, *,
    partition_key: str | dg.MultiPartitionKey | None = None, run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    release_killed_runs(instance)
    run_config = {"loggers": {"console": {"config": {"log_level": console_log_level()}}},
                  **(run_config or {})}
    job = defs.resolve_job_def(name).with_logger_defs({"console": cli_console_logger})
    result = job.execute_in_process(
        instance=instance, partition_key=partition_key, run_config=run_config,
        asset_selection=JOB_KEYS[name],
        raise_on_error=False, tags={PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()},
    )
    if not result.success:
        raise RunFailedError(f"{name} [{partition_key or '-'}] failed: {_errors(result)}")
    return result


def discover_batches(source: CocoSourceResource, instance: dg.DagsterInstance) -> list[str]:
    """Add a ``batch`` partition for every annotation file; returns the new batch names."""
    names: list[str] = []
    folder = source.annotations_uri()
    try:
        for page in batch_pages(source.objects(), folder):
            for uri in page.skipped:
                print(f"[al-assets] skipped {uri}: its name is unusable as a batch name; rename "
                      "it (letters, digits and . _ = @ + -)", flush=True)
            names += [b.batch for b in page.batches]
    except FileNotFoundError:
        raise UsageError(f"no annotations folder at {folder}: a source root holds "
                         "annotations/<batch>.json (COCO instances) and images/; set "
                         "AL_ASSETS_SOURCE_ROOT (or run `al-assets demo-data`)") from None
    if not names and not instance.get_dynamic_partitions(BATCH):
        raise UsageError(f"no annotation files in {folder}: put COCO instances files there as "
                         "<batch>.json (one file per batch)")
    return add_partitions(instance, BATCH, names)


def pending_batches(instance: dg.DagsterInstance) -> list[str]:
    """Batches never ingested successfully: new files, and ones whose last run failed."""
    done = instance.get_materialized_partitions(dg.AssetKey("images"))
    return [b for b in instance.get_dynamic_partitions(BATCH) if b not in done]


def discover_label_batches(source: CocoSourceResource, instance: dg.DagsterInstance) -> list[str]:
    """Add a ``label_batch`` partition for every file in ``<source>/labels/``; returns new ones."""
    from al_assets.core.splits import LABEL_BATCH_PREFIX

    try:
        names = [LABEL_BATCH_PREFIX + b.batch
                 for page in batch_pages(source.objects(), source.labels_uri())
                 for b in page.batches]
    except FileNotFoundError:
        return []  # no labels/ folder: nothing came back from labeling yet
    return add_partitions(instance, LABEL_BATCH, names)


def import_label_batches(defs: dg.Definitions, instance: dg.DagsterInstance,
                         batches: Sequence[str]) -> dict[str, str]:
    """Import each label batch in its own run; returns {label batch: error} for the failures."""
    failed: dict[str, str] = {}
    for batch in batches:
        try:
            run_job(defs, "label_import_job", instance, partition_key=batch)
        except RunFailedError as exc:
            failed[batch] = str(exc)
    return failed


INGESTED, UNCHANGED = "ingested", "unchanged"


def ingest(defs: dg.Definitions, instance: dg.DagsterInstance, batches: Sequence[str],
           config: dict | None = None) -> dict[str, str]:
    """Ingest each batch in its own run; one bad file never stops the others.

    Returns {batch: INGESTED, UNCHANGED (same file and options as last time: nothing
    rewritten) or the error}; a failed batch stays pending and is retried by the next
    ``ingest`` (the sensor retries a failed file when it changes).
    """
    check_batches(instance, batches)
    outcome: dict[str, str] = {}
    for batch in batches:
        try:
            result = run_job(defs, "ingest_job", instance, partition_key=batch,
                             run_config={"ops": {"ingestion": {"config": config or {}}}})
        except RunFailedError as exc:
            outcome[batch] = str(exc)
            continue
        written = result.asset_materializations_for_node("ingestion")
        outcome[batch] = INGESTED if written else UNCHANGED
    return outcome


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
    check_model_version(defs.resources["mlflow"].registry(), model_version)
    todo = list(shards) if shards is not None else instance.get_dynamic_partitions(SHARD)
    check_shards(instance, todo)
    add_partitions(instance, MODEL_VERSION, [model_version])
    for shard in todo:
        run_job(defs, "predict_job", instance, partition_key=prediction_key(model_version, shard),
                run_config={"ops": {"detections": {"config": config or {}}}})
    return todo


def refresh_views(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return run_job(defs, "refresh_views_job", instance)


def _errors(result: dg.ExecuteInProcessResult) -> str:
    """The errors the failed steps raised, once each: steps that failed for the same reason
    (six views without a registered model) share one message."""
    by_message: dict[str, list[str]] = {}
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None and (error.cls_name or "").startswith(
                "Dagster"):
            error = error.cause  # Dagster's wrapper -> the error the asset raised
        text = error.message.strip() if error else "unknown"
        by_message.setdefault(_CLASS_PREFIX.sub("", text, count=1), []).append(event.step_key)
    messages = [f"{', '.join(steps)}: {text}" for text, steps in by_message.items()]
    for event in result.all_events:
        if event.event_type_value == "RUN_FAILURE" and not messages:
            messages.append(event.message or "run failed")
    return "; ".join(messages) or "see the run's logs"


def import_labels(
    defs: dg.Definitions, instance: dg.DagsterInstance, file: Path, name: str | None = None,
) -> tuple[str, str]:
    """Copy a label export into ``<source>/labels/`` and import it; returns (batch, summary)."""
    from al_assets.core.coco.discovery import batch_name
    from al_assets.core.splits import LABEL_BATCH_PREFIX

    source: CocoSourceResource = defs.resources["coco_source"]
    stem = name or file.stem
    if batch_name(f"{stem}.json") is None:
        raise RunFailedError(f"{stem!r} is not usable as a label batch name: use letters, "
                             "digits and . _ = @ + - (pass --name)")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise RunFailedError(f"cannot read label file {file}: {exc.strerror or exc}") from None
    batch = LABEL_BATCH_PREFIX + stem
    uri = source.label_uri(batch)
    if source.objects().exists(uri):
        raise RunFailedError(f"{uri} exists already: pass --name to import {file} as a new "
                             "label batch (a later batch wins for the images both label)")
    source.objects().write_bytes(uri, data)
    new = add_partitions(instance, LABEL_BATCH, [batch])
    try:
        result = run_job(defs, "label_import_job", instance, partition_key=batch)
    except RunFailedError:
        source.objects().delete(uri)  # a file that cannot be imported does not stay in labels/
        for key in new:
            instance.delete_dynamic_partition(LABEL_BATCH, key)
        raise
    meta = result.asset_materializations_for_node("label_import")
    rows = {str(m.asset_key.path[-1]): m.metadata["dagster/row_count"].value for m in meta}
    return batch, (f"{rows.get('labeled_images')} images, {rows.get('label_annotations')} boxes, "
                   f"{rows.get('label_rejects')} rejects (see label_rejects)")


def oracle_label(defs: dg.Definitions, name: str | None = None) -> str:
    """The demo's labeler: answer the exported queue from ``<source>/ground_truth/``."""
    import json
    from datetime import datetime, timezone

    from al_assets.core.coco.parse import parse_coco
    from al_assets.core.coco.reader import load_json
    from al_assets.core.coco.tables import build_tables
    from al_assets.core.loop.oracle import oracle_export
    from al_assets.core.pool import pool_categories

    source: CocoSourceResource = defs.resources["coco_source"]
    store = defs.resources["storage"].tables()
    objects = source.objects()
    tasks_uri = store.file_uri("queue", "label_studio_tasks.json")
    if not objects.exists(tasks_uri):
        raise RunFailedError(f"no exported queue at {tasks_uri}: run `al-assets refresh` first")
    tasks = json.loads(objects.read_bytes(tasks_uri))
    truth_uri = join_uri(to_uri(source.root), "ground_truth")
    try:
        files, _ = objects.list(truth_uri, suffix=".json")
    except FileNotFoundError:
        raise RunFailedError(f"no ground truth at {truth_uri}: the oracle answers only the demo "
                             "data (`al-assets demo-data --add-batch N --unlabeled`)") from None
    truth = [build_tables(parse_coco(load_json(objects.read_bytes(f.uri), f.uri), f.uri), "gt",
                          source.image_root(), 10**9) for f in files]
    annotations = pa.concat_tables([t.annotations for t in truth])
    images = pa.concat_tables([t.images for t in truth])
    known = set(images["image_id"].to_pylist())
    answerable = [t for t in tasks if int(t["data"]["image_id"]) in known]
    if not answerable:
        raise RunFailedError("no queued image has withheld ground truth; the oracle has "
                             "nothing to answer")
    export = oracle_export(answerable, annotations, images, pool_categories(store))
    stem = name or f"oracle-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    uri = join_uri(source.labels_uri(), f"{stem}.json")
    objects.write_bytes(uri, json.dumps(export, indent=1).encode())
    return uri


def train(
    defs: dg.Definitions, instance: dg.DagsterInstance, config: dict | None = None,
    gate: dict | None = None, *, refresh: bool = True,
) -> str:
    """Train a challenger and gate it (``config`` None: gate the current challenger only);
    after a promotion predict every shard under the new champion and refresh the views."""
    ops = {"evaluation_gate": {"config": gate or {}}}
    if config is not None:
        ops["challenger"] = {"config": config}
    result = run_job(defs, "train_job" if config is not None else "gate_job", instance,
                     run_config={"ops": ops})
    event = result.asset_materializations_for_node("evaluation_gate")[0].metadata
    reason, promoted = event["reason"].value, bool(event["promoted"].value)
    text = f"{event['challenger'].value}: {reason}"
    if promoted and refresh:
        champion = str(event["champion_after"].value)
        done = predict(defs, instance, champion)
        refresh_views(defs, instance)
        text += f"\npredicted {len(done)} shard(s) with {champion}; refreshed the queue and report"
    return text
