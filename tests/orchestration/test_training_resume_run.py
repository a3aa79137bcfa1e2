"""A training run killed mid-way (SIGKILL) never registers a model; the next one resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736",
          "MALLOC_TOP_PAD_": "1073741824"}


def _cli(env: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "al_assets.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900, **kwargs)


@pytest.mark.slow
def test_killed_training_registers_nothing_and_the_rerun_resumes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, **MALLOC, "DAGSTER_HOME": str(home),
           "AL_ASSETS_STORAGE_ROOT": str(tmp_path / "store"),
           "AL_ASSETS_SOURCE_ROOT": str(tmp_path / "data")}
    env.pop("MLFLOW_TRACKING_URI", None)
    for step in (["demo", "--root", str(tmp_path / "data"), "--images", "120"],
                 ["label-oracle", "--name", "round-1"], ["ingest"]):
        done = _cli(env, *step)
        assert done.returncode == 0, done.stderr[-2000:]

    train = ["train", "--steps", "80", "--batch-size", "2", "--no-refresh",
             "--min-improvement", "0"]
    child = subprocess.Popen([sys.executable, "-m", "al_assets.cli", *train], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = home / "al_assets-work" / "training" / "al-class-scores-v1" / "state"
    deadline = time.monotonic() + 600
    while not (state / "train_state.pt").exists() and time.monotonic() < deadline:
        assert child.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    assert _versions(env) == [1]  # nothing half-trained was registered

    done = _cli(env, *train)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "died with its process" in done.stdout  # its gpu slot freed, not waited on forever
    assert "resumed from the checkpoint of step" in done.stderr + done.stdout
    assert not (state / "train_state.pt").exists()
    assert _versions(env) == [1, 2]


def _versions(env: dict) -> list[int]:
    rows = [line.split() for line in _cli(env, "models").stdout.splitlines()[1:]]
    return sorted(int(r[1]) for r in rows if r and r[0] == "al-class-scores")
