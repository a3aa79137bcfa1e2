"""The Dagster code location: assets, resources, sensors and schedules of al_assets."""

import os

import dagster as dg

from al_assets.orchestration.assets import (
    analysis,
    ingestion,
    labels,
    models,
    prediction,
    queue,
    report,
    simulation,
    training,
    uncertainty,
)
from al_assets.orchestration.automation import automation_sensor
from al_assets.orchestration.jobs import JOBS
from al_assets.orchestration.schedules import build_schedules
from al_assets.orchestration.sensors import SENSORS
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
        # Read once here: mlflow.set_tracking_uri() rewrites MLFLOW_TRACKING_URI at run time.
        "mlflow": MlflowResource(storage=storage, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI")),
        "device": DeviceResource(),
    }


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """All definitions; tests and deployments pass their own resources."""
    return dg.Definitions(
        assets=[
            ingestion.ingestion,
            labels.label_import,
            labels.splits,
            models.registered_model,
            training.challenger,
            training.evaluation_gate,
            prediction.detections,
            uncertainty.scoring,
            uncertainty.least_confidence,
            uncertainty.least_margin,
            uncertainty.entropy,
            uncertainty.image_rankings,
            queue.labeling_queue,
            analysis.confused_pairs,
            analysis.class_frequency,
            analysis.model_evaluation,
            report.uncertainty_report,
            simulation.active_learning_simulation,
        ],
        jobs=JOBS,
        sensors=[*SENSORS, automation_sensor],
        schedules=build_schedules(),
        resources=resources or default_resources(),
    )


defs = build_definitions()
