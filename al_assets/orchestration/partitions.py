"""Partitions: ingest batches, prediction shards and registered model versions (all dynamic).

Batches and shards are added when data is ingested, model versions when a model is
registered; predictions are keyed by ``model_version x shard`` so that every version's results
stay readable side by side.
"""

from __future__ import annotations

import dagster as dg

BATCH = "batch"
SHARD = "shard"
MODEL_VERSION = "model_version"
LABEL_BATCH = "label_batch"

batch_partitions = dg.DynamicPartitionsDefinition(name=BATCH)
shard_partitions = dg.DynamicPartitionsDefinition(name=SHARD)
model_version_partitions = dg.DynamicPartitionsDefinition(name=MODEL_VERSION)
label_batch_partitions = dg.DynamicPartitionsDefinition(name=LABEL_BATCH)
"""One imported label file (``<source>/labels/<stem>.json`` -> ``labels-<stem>``)."""
prediction_partitions = dg.MultiPartitionsDefinition(
    {MODEL_VERSION: model_version_partitions, SHARD: shard_partitions}
)


def model_version_key(model_name: str, version: int | str) -> str:
    """``al-detector`` v3 -> ``al-detector-v3``."""
    return f"{model_name}-v{int(version)}"


def parse_model_version_key(key: str) -> tuple[str, int]:
    name, sep, version = key.rpartition("-v")
    if not sep or not version.isdigit():
        raise ValueError(f"{key!r} is not a model version key like 'al-detector-v3'")
    return name, int(version)


def prediction_key(model_version: str, shard: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({MODEL_VERSION: model_version, SHARD: shard})


def new_keys(instance: dg.DagsterInstance, name: str, keys: list[str]) -> list[str]:
    """The keys not yet partitions of ``name``, in order, without repeats."""
    existing = set(instance.get_dynamic_partitions(name))
    return [k for k in dict.fromkeys(keys) if k not in existing]


def add_partitions(instance: dg.DagsterInstance, name: str, keys: list[str]) -> list[str]:
    """Add the keys that are not there yet; returns the new ones (idempotent). Sensors ask
    Dagster to add them instead (SensorResult.dynamic_partitions_requests)."""
    new = new_keys(instance, name, keys)
    if new:
        instance.add_dynamic_partitions(name, new)
    return new
