"""GPU leases: one run per GPU, released on exit and when the holder is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from al_assets.core.prediction import devices
from al_assets.core.prediction.devices import DeviceUnavailableError, lease_device


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease logic only names devices: torch.device('cuda:N') needs no GPU."""
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)


def test_cpu_and_auto_without_gpus_give_the_cpu(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    for requested in ("cpu", "auto", " AUTO "):
        with lease_device(requested, tmp_path) as device:
            assert device == torch.device("cpu")


def test_wrong_requests_fail_with_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(devices, "gpu_count", lambda: 1)
    with pytest.raises(DeviceUnavailableError, match="use auto, cpu, cuda or cuda:N"):
        with lease_device("gpu0", tmp_path):
            pass
    with pytest.raises(DeviceUnavailableError, match="torch sees 1 GPU"):
        with lease_device("cuda:3", tmp_path):
            pass
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    with pytest.raises(DeviceUnavailableError, match="sees no GPU; use auto"):
        with lease_device("cuda", tmp_path):
            pass


def test_each_lease_gets_its_own_gpu_until_released(tmp_path: Path, two_gpus) -> None:
    with lease_device("auto", tmp_path) as first, lease_device("cuda", tmp_path) as second:
        assert {first, second} == {torch.device("cuda:0"), torch.device("cuda:1")}
        with pytest.raises(DeviceUnavailableError, match="stayed leased"):
            with lease_device("auto", tmp_path, wait_s=0):
                pass
    with lease_device("cuda:1", tmp_path, wait_s=0) as again:
        assert again == torch.device("cuda:1")


def test_a_killed_holder_frees_its_gpu(tmp_path: Path, two_gpus) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"h = os.open({str(tmp_path / 'gpu-0.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with lease_device("auto", tmp_path, wait_s=0) as device:
            assert device == torch.device("cuda:1")  # gpu 0 is another process's
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    with lease_device("cuda:0", tmp_path, wait_s=0) as device:  # the kernel dropped the lock
        assert device == torch.device("cuda:0")
