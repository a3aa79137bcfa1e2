"""The UI's API end to end: dagster-webserver on 127.0.0.1, assets found and a run launched via GraphQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster_graphql import DagsterGraphQLClient

from tests.conftest import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
ASSETS_QUERY = "{ assetNodes { assetKey { path } groupName } }"


@pytest.mark.slow
def test_launch_a_materialization_through_graphql(demo_root: Path, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(  # no daemon here: launch runs directly, not queued
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "AL_ASSETS_STORAGE_ROOT": str(tmp_path / "store"),
           "AL_ASSETS_SOURCE_ROOT": str(demo_root)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("batch", ["batch-000"])
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=120)
        groups = _asset_groups(port)
        assert groups["images"] == "ingestion" and groups["detections"] == "prediction"
        assert groups["labeling_queue"] == "uncertainty" and groups["uncertainty_report"] == "analysis"

        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_id = client.submit_job_execution(
            "ingest_job", tags={"dagster/partition": "batch-000"},
            run_config={"ops": {"ingestion": {"config": {"verify_images": "exists"}}}},
        )
        status = _wait_for_run(client, run_id)
        assert status == dg.DagsterRunStatus.SUCCESS
        assert (tmp_path / "store" / "tables" / "images" / "batch-000.parquet").is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _asset_groups(port: int) -> dict[str, str]:
    deadline = time.monotonic() + 120
    while True:  # the code location loads after the port opens
        response = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": ASSETS_QUERY},
                                 timeout=30)
        nodes = response.json().get("data", {}).get("assetNodes") or []
        if nodes or time.monotonic() > deadline:
            return {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        time.sleep(1)


def _wait_for_run(client: DagsterGraphQLClient, run_id: str) -> dg.DagsterRunStatus:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id)
        if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                      dg.DagsterRunStatus.CANCELED):
            return status
        time.sleep(2)
    raise TimeoutError(f"run {run_id} did not finish in 300 s (last status {status})")
