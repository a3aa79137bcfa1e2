"""The repository's dagster.yaml and workspace.yaml are what `make ui` and the CLI load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from al_assets.orchestration.instance import configure_gpu_pool

REPO = Path(__file__).resolve().parents[2]


def test_repository_dagster_yaml_loads_with_monitoring_and_pools(tmp_path: Path) -> None:
    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 30
        assert configure_gpu_pool(instance, 3) == 3
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 3


def test_workspace_loads_the_definitions() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w",
         str(REPO / "workspace.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
