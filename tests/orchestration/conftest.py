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
