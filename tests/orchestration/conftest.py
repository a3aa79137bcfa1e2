"""A pipeline on a real Dagster instance and a real MLflow registry in a temporary folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from al_assets.core.demo.detector import random_demo_checkpoint
from al_assets.orchestration.definitions import build_definitions
from al_assets.orchestration.instance import configure_gpu_pool
from al_assets.orchestration.resources import (
    CocoSourceResource,
    DeviceResource,
    MlflowResource,
    StorageResource,
)
from al_assets.orchestration.runs import discover_batches, ingest


FAST = {"score_thresh": 0.05, "detections_per_img": 20, "num_workers": 1, "batch_size": 4}
"""detections config for tests: few boxes per image, one decode worker, small batches."""


def tick(sensor, instance, cursor, **resources):
    """One evaluation, as the daemon runs it (run keys and partitions validated)."""
    from dagster._core.definitions.partitions.context import partition_loading_context

    from al_assets.orchestration.definitions import defs

    with dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor,
                                 resources=resources,
                                 repository_def=defs.get_repository_def()) as context, \
            partition_loading_context(dynamic_partitions_store=instance):
        result = sensor.evaluate_tick(context)
    for request in result.dynamic_partitions_requests or []:  # what the daemon then does
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return (random_demo_checkpoint(folder / "one.pt", 1),
            random_demo_checkpoint(folder / "two.pt", 2))


@dataclass
class Pipeline:
    defs: dg.Definitions
    instance: dg.DagsterInstance
    storage: StorageResource
    mlflow: MlflowResource
    source: CocoSourceResource

    @property
    def store(self):
        return self.storage.tables()


def make_pipeline(
    instance: dg.DagsterInstance, source_root: Path, work: Path, *, gpu_slots: int = 1,
    storage: StorageResource | None = None, mlflow: MlflowResource | None = None,
) -> Pipeline:
    storage = storage or StorageResource(root=str(work / "store"))
    source = CocoSourceResource(root=str(source_root))
    mlflow = mlflow or MlflowResource(storage=storage)
    resources = {"storage": storage, "coco_source": source, "mlflow": mlflow,
                 "device": DeviceResource(device="cpu", lease_dir=str(work / "leases"))}
    defs = build_definitions(resources)
    configure_gpu_pool(instance, gpu_slots)
    return Pipeline(defs, instance, storage, mlflow, source)


@pytest.fixture
def pipeline(instance, demo_root: Path, tmp_path: Path) -> Pipeline:
    return make_pipeline(instance, demo_root, tmp_path)


@pytest.fixture
def ingested(pipeline: Pipeline) -> Pipeline:
    """The demo pool ingested in small shards (2 batches x 2-3 shards)."""
    ingest(pipeline.defs, pipeline.instance, discover_batches(pipeline.source, pipeline.instance),
           {"shard_size": 8, "verify_images": "exists"})
    return pipeline
