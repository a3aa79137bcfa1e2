"""Shared fixtures: demo data, a real S3-API server (moto, server mode), Dagster instances."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from al_assets.core.demo.generator import generate_demo_dataset

TEST_IMAGES = 40


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``), give each worker its own share of the cores.

    Every worker would otherwise run torch (and the servers it starts) with a thread per core,
    so two workers on two cores oversubscribe them and spin. Pinning the worker process also
    pins its subprocesses (dagster, MLflow, al-assets), and training sizes its threads from the
    affinity (``training._torch_threads``)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[int(worker[2:]) % count::count] if len(cpus) >= count else cpus
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = str(len(share))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(len(share))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo pool (two batches); treat as read-only, copy it to modify."""
    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, n_images=TEST_IMAGES, seed=0, n_batches=2)
    return root


@pytest.fixture
def demo_copy(demo_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the demo pool."""
    target = tmp_path / "source"
    shutil.copytree(demo_root, target)
    return target


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


# -- S3 (moto in server mode, a separate process on 127.0.0.1) --------------------------------
@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str

    def client(self, **overrides: str):
        import boto3

        kwargs = {
            "endpoint_url": self.endpoint_url,
            "region_name": "us-east-1",
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> str:
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")
        return f"s3://{bucket}/{prefix}"


@contextmanager
def _moto_server(**env: str) -> Iterator[str]:
    """A moto_server process on a free port; yields its endpoint URL."""
    port = free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    process = subprocess.Popen(
        [moto or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto_server with IAM auth enforced: only the keys created here are accepted."""
    import boto3

    with _moto_server(INITIAL_NO_AUTH_ACTION_COUNT="3") as endpoint:
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="al-assets")
        iam.put_user_policy(
            UserName="al-assets", PolicyName="all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        )
        key = iam.create_access_key(UserName="al-assets")["AccessKey"]
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="session")
def s3_open_server() -> Iterator[S3Server]:
    """moto_server without auth, for presigned URLs: with auth on, moto reads only the
    Authorization header and fails (500) on a query-string signature; off, it checks none."""
    with _moto_server() as endpoint:
        yield S3Server(endpoint, "open", "open")


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test."""
    name = "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    name = f"{name}-{int(time.time() * 1000) % 100000}"
    s3_server.client().create_bucket(Bucket=name)
    return name


# -- Dagster ---------------------------------------------------------------------------------
@pytest.fixture
def instance(tmp_path: Path):
    """A real, persistent (SQLite) Dagster instance in a temporary DAGSTER_HOME."""
    import dagster as dg

    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def failure_text(result) -> str:
    """Every message of a failed run's step errors, causes included."""
    texts = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return "\n".join(texts)
