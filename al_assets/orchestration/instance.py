"""The Dagster instance the CLI and the demo use: DAGSTER_HOME, dagster.yaml, the gpu pool."""

import os
import shutil
from pathlib import Path

import dagster as dg

from al_assets.core.prediction.devices import gpu_count
from al_assets.orchestration.assets.prediction import GPU_POOL

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
DEFAULT_HOME = ".dagster_home"


def ensure_dagster_home() -> Path:
    """Default DAGSTER_HOME to ./.dagster_home and put the project's dagster.yaml there."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(DEFAULT_HOME).resolve())))
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() and REPO_DAGSTER_YAML.exists():
        shutil.copyfile(REPO_DAGSTER_YAML, target)
    return home


def get_instance() -> dg.DagsterInstance:
    ensure_dagster_home()
    return dg.DagsterInstance.get()


def configure_gpu_pool(instance: dg.DagsterInstance, slots: int | None = None) -> int:
    """Limit the ``gpu`` pool to the number of GPUs (1 on a CPU-only machine: one CPU slot)."""
    limit = slots if slots is not None else max(1, gpu_count())
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, limit)
    return limit
