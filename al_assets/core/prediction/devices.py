"""Pick the device a prediction run uses, holding an exclusive lease on a GPU.

Dagster's ``gpu`` pool limits how many prediction steps run at once (its limit = the number of
GPUs); the lease decides *which* GPU each one gets. A lease is an ``flock`` on
``<lease_dir>/gpu-<N>.lock``: the kernel drops it when the process ends, even on SIGKILL, so a
killed run never leaves a GPU marked busy. On Kubernetes each run pod sees only the GPU it
requested (``CUDA_VISIBLE_DEVICES``), so the lease is trivially ``cuda:0`` there.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from al_assets.core.errors import AlAssetsError


class DeviceUnavailableError(AlAssetsError):
    """No device matching the request could be leased."""


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def lease_device(
    requested: str = "auto", lease_dir: str | Path | None = None, *, wait_s: float = 600.0
) -> Iterator[torch.device]:
    """Yield a device: ``cpu``, a free ``cuda:N`` (exclusive until exit), per ``requested``.

    ``auto`` uses a free GPU when there is one and the CPU when the machine has none.
    """
    candidates = _candidates(requested)
    if not candidates:
        yield torch.device("cpu")
        return
    folder = Path(lease_dir or Path.home() / ".al_assets" / "gpu-leases")
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for index in candidates:
            handle = _try_lock(folder / f"gpu-{index}.lock")
            if handle is not None:
                try:
                    yield torch.device(f"cuda:{index}")
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    os.close(handle)
                return
        if time.monotonic() > deadline:
            raise DeviceUnavailableError(
                f"all GPUs {candidates} stayed leased for {wait_s:.0f}s; set the Dagster pool "
                "'gpu' limit to the number of GPUs (al-assets setup-instance) so runs queue instead"
            )
        time.sleep(1.0)


def _candidates(requested: str) -> list[int]:
    requested = requested.strip().lower()
    count = gpu_count()
    if requested == "cpu":
        return []
    if requested == "auto":
        return list(range(count))
    if requested == "cuda":
        if not count:
            raise DeviceUnavailableError("device 'cuda' requested but torch sees no GPU; use auto")
        return list(range(count))
    if requested.startswith("cuda:") and requested[5:].isdigit():
        index = int(requested[5:])
        if index >= count:
            raise DeviceUnavailableError(f"{requested} requested but torch sees {count} GPU(s)")
        return [index]
    raise DeviceUnavailableError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N")


def _try_lock(path: Path) -> int | None:
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    os.ftruncate(handle, 0)
    os.write(handle, f"pid {os.getpid()}\n".encode())
    return handle
