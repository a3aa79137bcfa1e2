"""The simulation as a Dagster asset and as the `al-assets simulate` command, on a tiny pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import pyarrow.parquet as pq

from al_assets.core.demo.generator import generate_demo_dataset
from al_assets.core.simulation import SIMULATION_CURVES
from tests.orchestration.conftest import make_pipeline

TINY = {
    "strategies": ["random", "margin"],
    "seeds": [0],
    "initial_size": 4,
    "budget": 4,
    "rounds": 1,
    "initial_steps": 1,
    "round_steps": 1,
    "batch_size": 2,
    "min_score": 0.0,
    "n_boot": 10,
    "device": "cpu",
}


def test_simulation_asset_writes_curves_png_summary_and_mlflow_runs(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    (pool_json,) = generate_demo_dataset(tmp_path / "pool", n_images=16, seed=21)
    pipeline = make_pipeline(instance, tmp_path / "pool", tmp_path)
    config = {**TINY, "pool_json": str(pool_json), "pool_image_dir": str(tmp_path / "pool" / "images"),
              "holdout_size": 4, "experiment": "sim-asset"}

    result = dg.materialize(
        [pipeline.defs.get_assets_def("active_learning_simulation")],
        instance=instance,
        resources=pipeline.defs.resources,
        run_config={"ops": {"active_learning_simulation": {"config": config}}},
    )

    assert result.success
    table = pipeline.store.read("active_learning_simulation")
    assert table.schema.equals(SIMULATION_CURVES)
    assert sorted(set(table["strategy"].to_pylist())) == ["margin", "random"]
    assert table.num_rows == 2 * 2  # strategies x (round 0 + 1 round)
    files = Path(pipeline.storage.root) / "files" / "simulation"
    assert (files / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "random" in (files / "summary.md").read_text()
    metadata = result.asset_materializations_for_node("active_learning_simulation")[0].metadata
    assert metadata["dagster/row_count"].value == 4 and "summary" in metadata

    client = mlflow.MlflowClient(pipeline.mlflow.registry().tracking_uri)
    experiment = client.get_experiment_by_name("sim-asset")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["strategy"] for r in runs) == ["margin", "random"]


def test_simulate_command_on_a_coco_file(tmp_path: Path) -> None:
    (pool_json,) = generate_demo_dataset(tmp_path / "pool", n_images=16, seed=22)
    out = tmp_path / "out"
    args = [
        sys.executable, "-m", "al_assets.cli", "simulate", "--coco", str(pool_json),
        "--images", str(tmp_path / "pool" / "images"), "--holdout-size", "4",
        "--strategies", "random", "entropy", "--seeds", "0", "--rounds", "1",
        "--budget", "4", "--initial-size", "4", "--initial-steps", "1", "--round-steps", "1",
        "--batch-size", "2", "--min-score", "0", "--device", "cpu", "--out", str(out),
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    env = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736",
           "MALLOC_TOP_PAD_": "1073741824"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "entropy round 1" in done.stdout and "wall time" in done.stdout
    curves = pq.read_table(out / "curves.parquet")
    assert set(curves["strategy"].to_pylist()) == {"random", "entropy"}
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
