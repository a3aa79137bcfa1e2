"""The Dagster code location: assets, resources, sensors and schedules of al_assets."""

from __future__ import annotations

import dagster as dg

from al_assets.orchestration.assets import ingestion
from al_assets.orchestration.resources import CocoSourceResource, StorageResource


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[ingestion.coco_batch],
        resources={"storage": StorageResource(), "coco_source": CocoSourceResource()},
    )


defs = build_definitions()
