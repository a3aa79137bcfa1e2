"""The Dagster code location: assets, resources, sensors and schedules of al_assets."""

import dagster as dg

from al_assets.orchestration.assets import ingestion, models, prediction
from al_assets.orchestration.resources import (
    CocoSourceResource,
    DeviceResource,
    MlflowResource,
    StorageResource,
)


def default_resources() -> dict:
    storage = StorageResource()
    return {
        "storage": storage,
        "coco_source": CocoSourceResource(),
        "mlflow": MlflowResource(storage=storage),
        "device": DeviceResource(),
    }


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[ingestion.coco_batch, models.registered_model, prediction.predictions],
        resources=default_resources(),
    )


defs = build_definitions()
