"""The active-learning simulation as an on-demand asset: curves table, PNG and MLflow runs.

It is an experiment, not part of the pool's refresh chain: no automation condition, no job
selects it; launch it from the UI or ``materialize`` with a config. The core does the work.
"""

import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from al_assets.core.defaults import SIMULATION_EXPERIMENT
from al_assets.core.simulation import (
    CocoSplit,
    SimulationConfig,
    Tracking,
    default_targets,
    demo_splits,
    mean_curves,
    run_simulation,
)
from al_assets.core.simulation.loop import DEMO_HOLDOUT_IMAGES, DEMO_POOL_IMAGES
from al_assets.core.simulation.report import curves_png, markdown_summary
from al_assets.core.storage.objects import join_uri
from al_assets.orchestration.config import dataclass_of, derived_config
from al_assets.orchestration.metadata import markdown_preview, table_metadata
from al_assets.orchestration.resources import MlflowResource, StorageResource

EXPERIMENTS = "experiments"
SimulationOptions = derived_config("SimulationOptions", SimulationConfig)
"""``SimulationConfig``'s fields as run config: same names, defaults and help."""


class SimulationAssetConfig(SimulationOptions):
    """``SimulationConfig`` (derived from it) plus where the pool comes from."""

    pool_json: str | None = Field(default=None, description="Labeled COCO file; empty = demo data")
    pool_image_dir: str | None = None
    holdout_json: str | None = Field(default=None, description="Empty = the production split")
    holdout_image_dir: str | None = None
    holdout_size: int = Field(default=DEMO_HOLDOUT_IMAGES, description="Demo held-out images")
    demo_pool_images: int = DEMO_POOL_IMAGES
    experiment: str = SIMULATION_EXPERIMENT

    def simulation(self) -> SimulationConfig:
        return dataclass_of(self, SimulationConfig)

    def splits(self, workdir: Path) -> tuple[CocoSplit, CocoSplit | None]:
        if not self.pool_json:
            return demo_splits(workdir / "demo", self.demo_pool_images, self.holdout_size)
        pool = CocoSplit(
            Path(self.pool_json), Path(self.pool_image_dir or Path(self.pool_json).parent)
        )
        if not self.holdout_json:
            return pool, None
        return pool, CocoSplit(Path(self.holdout_json),
                               Path(self.holdout_image_dir or Path(self.holdout_json).parent))


@dg.asset(
    group_name=EXPERIMENTS,
    kinds={"parquet", "png", "mlflow"},
    owners=["team:ml"],
    description="Replays active learning on a labeled pool: strategies x seeds x rounds, COCO "
    "mAP on a held-out split after each round; does uncertainty sampling beat random?",
)
def active_learning_simulation(
    context: dg.AssetExecutionContext,
    config: SimulationAssetConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    registry = mlflow.registry()
    tracking = Tracking(
        registry.tracking_uri,
        config.experiment,
        join_uri(registry.artifact_location, "simulation") if registry.artifact_location else None,
    )
    with tempfile.TemporaryDirectory(prefix="al-simulation-") as folder:
        pool, holdout = config.splits(Path(folder))
        table = run_simulation(
            pool,
            holdout,
            config.simulation(),
            Path(folder) / "work",
            tracking,
            log=context.log.info,
        )
    store = storage.tables()
    uri = store.write("active_learning_simulation", table)
    summary = mean_curves(table)
    store.write("active_learning_summary", summary)
    text = markdown_summary(table, default_targets(table))
    png = store.write_file(curves_png(table), "simulation", "curves.png")
    store.write_file(text.encode("utf-8"), "simulation", "summary.md")
    return dg.MaterializeResult(
        metadata={
            **table_metadata(table, uri),
            "summary": dg.MetadataValue.md(text),
            "mean_curves": dg.MetadataValue.md(markdown_preview(summary, rows=summary.num_rows)),
            "curves_png": dg.MetadataValue.path(png),
            "mlflow_experiment": config.experiment,
        }
    )
