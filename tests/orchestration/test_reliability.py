"""Faults and repetition: identical re-runs, concurrent runs, storage and registry faults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest

from al_assets.orchestration.resources import MlflowResource, S3Config, StorageResource
from al_assets.core.errors import AlAssetsError
from al_assets.orchestration.runs import RunFailedError, discover_batches, ingest, predict, register
from tests.conftest import free_port, wait_for_port
from tests.orchestration.conftest import FAST, make_pipeline

REPO = Path(__file__).resolve().parents[2]


def _parquet_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_materializing_twice_gives_identical_tables(ingested, checkpoints) -> None:
    p = ingested
    version = register(p.defs, p.instance, {"weights": str(checkpoints[0])})
    shard = p.instance.get_dynamic_partitions("shard")[0]
    predict(p.defs, p.instance, version, [shard], FAST)
    tables = Path(p.store.root[len("file://"):]) / "tables"
    first = _parquet_bytes(tables)
    ingest(p.defs, p.instance, p.instance.get_dynamic_partitions("batch"),
           {"shard_size": 8, "verify_images": "exists"})
    predict(p.defs, p.instance, version, [shard], FAST)
    assert _parquet_bytes(tables) == first


def _concurrent_predictions(home: Path, source: Path, work: Path, version: str, shards) -> list:
    script = (
        "import sys, dagster as dg\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from pathlib import Path\n"
        "from tests.orchestration.conftest import make_pipeline\n"
        "from al_assets.orchestration.runs import predict\n"
        "instance = dg.DagsterInstance.get()\n"
        f"p = make_pipeline(instance, Path({str(source)!r}), Path({str(work)!r}), gpu_slots=4)\n"
        f"predict(p.defs, instance, {version!r}, [sys.argv[1]], {FAST!r})\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    children = [subprocess.Popen([sys.executable, "-c", script, shard], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for shard in shards]
    return [(child.wait(timeout=600), child.stderr.read()) for child in children]


def _prepare(home: Path, demo_root: Path, work: Path, checkpoint: Path) -> tuple[str, list[str]]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        p = make_pipeline(instance, demo_root, work, gpu_slots=4)
        ingest(p.defs, instance, discover_batches(p.source, instance),
               {"shard_size": 6, "verify_images": "exists"})
        version = register(p.defs, instance, {"weights": str(checkpoint)})
        return version, instance.get_dynamic_partitions("shard")[:4]


def _check_four_runs(home: Path, demo_root: Path, tmp_path: Path, checkpoint: Path) -> None:
    work = tmp_path / "work"
    version, shards = _prepare(home, demo_root, work, checkpoint)
    results = _concurrent_predictions(home, demo_root, work, version, shards)
    for code, stderr in results:
        assert code == 0, stderr[-2000:]
        assert "database is locked" not in stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_run_records(dg.RunsFilter(job_name="predict_job"))
        assert len(runs) == 4
        assert {r.dagster_run.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}


@pytest.mark.slow
def test_four_concurrent_partition_runs_on_sqlite(demo_root, tmp_path, checkpoints) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    _check_four_runs(home, demo_root, tmp_path, checkpoints[0])


def _postgres_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres(tmp_path):
    """A real PostgreSQL server on 127.0.0.1 (Debian's binaries), as user postgres when root."""
    bindir = _postgres_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    # Not under tmp_path: pytest's root (/tmp/pytest-of-<user>) is 0700, closed to `postgres`.
    home = Path(tempfile.mkdtemp(prefix="al-assets-pg-"))
    data, port = home / "pgdata", free_port()
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    init = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                           "postgres"], capture_output=True, text=True)
    assert init.returncode == 0, f"initdb failed: {init.stderr[-2000:]}"
    server = subprocess.Popen([*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                               "-k", str(home), "-h", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        time.sleep(1.0)
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                        "CREATE DATABASE dagster"], check=True, capture_output=True)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_four_concurrent_partition_runs_on_postgres(postgres, demo_root, tmp_path, checkpoints):
    home = tmp_path / "home"
    home.mkdir()
    config = (REPO / "dagster.yaml").read_text() + (
        "\nstorage:\n  postgres:\n    postgres_db:\n      hostname: 127.0.0.1\n"
        f"      username: postgres\n      password: ''\n      db_name: dagster\n      port: {postgres}\n"
        "      scheme: postgresql+psycopg2\n"  # as docs/deployment.md: SQLAlchemy 2.1's default is psycopg 3
    )
    (home / "dagster.yaml").write_text(config)
    _check_four_runs(home, demo_root, tmp_path, checkpoints[0])


def test_s3_storage_fault_mid_run_keeps_outputs_and_a_retry_succeeds(
    instance, demo_root, tmp_path, checkpoints, s3_server, s3_bucket
) -> None:
    good = S3Config(endpoint_url=s3_server.endpoint_url, region="us-east-1",
                    access_key_id=s3_server.access_key_id,
                    secret_access_key=s3_server.secret_access_key)
    storage = StorageResource(root=f"s3://{s3_bucket}/store", s3=good)
    mlflow = MlflowResource(storage=StorageResource(root=str(tmp_path / "local")))
    p = make_pipeline(instance, demo_root, tmp_path, storage=storage, mlflow=mlflow)
    ingest(p.defs, instance, discover_batches(p.source, instance), {"verify_images": "exists"})
    version = register(p.defs, instance, {"weights": str(checkpoints[0])})
    shard = instance.get_dynamic_partitions("shard")[0]
    predict(p.defs, instance, version, [shard], FAST)
    before = storage.tables().read("detections", f"{version}/{shard}")

    revoked = StorageResource(root=storage.root, s3=good.model_copy(
        update={"secret_access_key": "revoked"}))
    broken = make_pipeline(instance, demo_root, tmp_path, storage=revoked, mlflow=mlflow)
    with pytest.raises(RunFailedError, match="rejected the credentials"):
        predict(broken.defs, instance, version, [shard], FAST)
    assert storage.tables().read("detections", f"{version}/{shard}").equals(before)
    predict(p.defs, instance, version, [shard], FAST)
    assert storage.tables().read("detections", f"{version}/{shard}").equals(before)


@pytest.mark.slow
def test_registry_server_down_then_back(instance, demo_root, tmp_path, checkpoints) -> None:
    """A real MLflow tracking server: stopped -> a clear failure; restarted -> the retry works."""
    port = free_port()
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(port), "--backend-store-uri", backend,
               "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"]

    def start():
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, timeout=120)
        return server

    storage = StorageResource(root=str(tmp_path / "store"))
    mlflow = MlflowResource(storage=storage, tracking_uri=f"http://127.0.0.1:{port}",
                            http_max_retries=0, http_timeout_s=5)
    p = make_pipeline(instance, demo_root, tmp_path, storage=storage, mlflow=mlflow)
    ingest(p.defs, instance, discover_batches(p.source, instance), {"verify_images": "exists"})
    server = start()
    try:
        version = register(p.defs, instance, {"weights": str(checkpoints[0])})
    finally:
        server.terminate()
        server.wait(timeout=30)
    shard = instance.get_dynamic_partitions("shard")[0]
    with pytest.raises(AlAssetsError, match="unreachable"):  # the version check, before the run
        predict(p.defs, instance, version, [shard], FAST)
    assert p.store.partitions("detections", under=version) == []
    server = start()
    try:
        predict(p.defs, instance, version, [shard], FAST)
        assert p.store.partitions("detections", under=version) == [f"{version}/{shard}"]
        mlflow.registry().client.delete_model_version("al-class-scores", "1")
        with pytest.raises(RunFailedError, match="does not exist"):
            predict(p.defs, instance, version, [shard], FAST)
    finally:
        server.terminate()
        server.wait(timeout=30)
