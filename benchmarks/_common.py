"""Helpers shared by the benchmark scripts: machine line, tables, timing, inputs, JSON results.

Not a library of the project: only the scripts in ``benchmarks/`` import it (they run as
``python benchmarks/bench_x.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_ARCH = "ssdlite320_mobilenet_v3_large"
RANDOM_CHECKPOINT = "random_ssdlite.pt"
MALLOC_KEYS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


# -- machine -----------------------------------------------------------------------------------
def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge a figure: platform, CPUs, torch threads, load, allocator."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": usable_cpus(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "malloc_env": {k: os.environ[k] for k in MALLOC_KEYS if k in os.environ} or "glibc default",
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    threads = f", torch {info['torch']}" if "torch" in info else ""
    if "torch_threads" in info:
        threads += f" with {info['torch_threads'] or 'default'} thread(s)"
    load = ", ".join(f"{x:.2f}" for x in info["load_average"])
    malloc = "tuned (Makefile env)" if isinstance(info["malloc_env"], dict) else "glibc default"
    return (f"machine : {info['platform']}, Python {info['python']}, {info['cpus']} usable CPUs"
            f"{threads}, malloc {malloc}, os.getloadavg() = ({load})")


def load_now() -> str:
    return "os.getloadavg() = ({})".format(", ".join(f"{x:.2f}" for x in os.getloadavg()))


def set_torch_threads(threads: int) -> int:
    """``threads`` > 0 pins torch's intra-op threads; 0 keeps torch's default. Returns the count."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# -- tables ------------------------------------------------------------------------------------
def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A plain aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                     enumerate(zip(headers, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for row in cells:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                        enumerate(zip(row, widths, strict=True))))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


# -- timing ------------------------------------------------------------------------------------
@dataclass
class Timing:
    wall: float = float("inf")  # best wall seconds
    cpu: float = float("inf")  # CPU seconds of that best run (this process + reaped children)
    runs: int = 0


def cpu_seconds() -> float:
    """CPU time of this process plus its terminated children (DataLoader workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def interleaved_best(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, Timing]:
    """Best wall time of each function over ``repeat`` rounds, the functions taking turns.

    Turns spread the shared machine's load changes over every function instead of letting one
    function draw all the quiet (or busy) minutes.
    """
    best = {name: Timing() for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            fn()
            elapsed, used = time.perf_counter() - wall, cpu_seconds() - cpu
            timing = best[name]
            timing.runs += 1
            if elapsed < timing.wall:
                timing.wall, timing.cpu = elapsed, used
    return best


# -- peak memory of a child process ------------------------------------------------------------
def run_child(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run ``cmd``; returns (exit code, peak RSS in MiB of its process tree, its stdout).

    ``os.wait4`` gives this child's own rusage; Linux reports ``ru_maxrss`` in KiB as the
    largest resident set of the child or any descendant it waited for (not their sum).
    """
    import subprocess

    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, out


def self_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    return proc_status_mib("VmRSS")


def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MiB; NaN where absent."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- inputs ------------------------------------------------------------------------------------
def demo_detector(workdir: Path, seed: int = 0) -> tuple[Path, str]:
    """The shipped demo detector when present, else a random-init ssdlite320 checkpoint.

    The random model's class head is perturbed (as ``tests/orchestration/conftest.py`` does):
    torchvision starts it near zero, which would give uniform, unrealistic distributions.
    """
    from al_assets.core.detection.sources import DEMO_CHECKPOINT

    if DEMO_CHECKPOINT.is_file():
        return DEMO_CHECKPOINT, f"shipped demo detector ({DEMO_CHECKPOINT.name})"
    from al_assets.core.demo.detector import random_demo_checkpoint

    path = random_demo_checkpoint(workdir / RANDOM_CHECKPOINT, seed)
    return path, (f"random-init {DEMO_ARCH}, class head perturbed (seed {seed}); "
                  f"{DEMO_CHECKPOINT.relative_to(DEMO_CHECKPOINT.parents[2])} is not present")


def saved_detector(workdir: Path) -> Path:
    """The checkpoint ``demo_detector(workdir)`` chose earlier (possibly in another process)."""
    from al_assets.core.detection.sources import DEMO_CHECKPOINT

    return DEMO_CHECKPOINT if DEMO_CHECKPOINT.is_file() else workdir / RANDOM_CHECKPOINT


def demo_images(workdir: Path, n_images: int, seed: int = 0):
    """Generate ``n_images`` demo images in one batch and ingest it: the IMAGES table."""
    from al_assets.core.coco.ingest import IngestOptions, ingest_batch
    from al_assets.core.demo.generator import generate_demo_dataset
    from al_assets.core.storage.objects import ObjectStore, join_uri, to_uri

    root = workdir / "demo"
    (path,) = generate_demo_dataset(root, n_images=n_images, seed=seed, n_batches=1)
    tables = ingest_batch(to_uri(path), join_uri(to_uri(root), "images"), path.stem,
                          ObjectStore(), IngestOptions(verify="none"))
    return tables.images


# -- CLI and results ---------------------------------------------------------------------------
def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures to this JSON file (run_all.py uses it)")


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Timing):
        return {"wall_s": value.wall, "cpu_s": value.cpu, "runs": value.runs}
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def run_json_child(cmd: list[str], what: str) -> dict:
    """Run a benchmark child whose last stdout line is its JSON report; add its wait4 peak."""
    code, peak, out = run_child(cmd)
    if code != 0:
        raise SystemExit(f"{what} failed with exit code {code}")
    report = json.loads(out.strip().splitlines()[-1])
    report["wait4_peak_mib"] = peak
    return report
