"""The xdist worker pinning of tests/conftest.py (``make test``): each worker on its own cores."""

from __future__ import annotations

import os

import pytest


@pytest.mark.skipif(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2
                    or not hasattr(os, "sched_getaffinity"), reason="not under two xdist workers")
def test_each_worker_runs_on_its_share_of_the_cores() -> None:
    import torch

    count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    share = os.sched_getaffinity(0)
    machine = os.cpu_count() or 1
    if machine >= count:  # fewer cores than workers: they share them all
        assert len(share) <= -(-machine // count)
    assert os.environ["OMP_NUM_THREADS"] == str(len(share)) == str(torch.get_num_threads())
