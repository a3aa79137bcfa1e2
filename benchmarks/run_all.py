"""Run every benchmark, each in its own subprocess, print their tables and a summary, and write
``benchmarks/results.json``.

Each benchmark is a separate process so that its peak RSS (``ru_maxrss`` from ``os.wait4``) is
its own. This script imports only the standard library on purpose: after ``exec`` a child's
``ru_maxrss`` starts at its parent's peak, so a heavy parent would inflate every child's figure.

The children get the Makefile's glibc malloc settings (``MALLOC_*``, see
``al_assets/core/detection/training.py``) when they are not already set, so ``make bench`` and
``python benchmarks/run_all.py`` measure the same thing; ``--malloc default`` opts out.

    python benchmarks/run_all.py [--only prediction memory] [--quick] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import _common as common

HERE = Path(__file__).resolve().parent
MALLOC_ENV = {  # the Makefile's exports (= RECOMMENDED_MALLOC_ENV of detection/training.py)
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}
BENCHMARKS = {  # name: (script, default arguments, --quick arguments)
    "scoring": ("bench_scoring.py", [], ["--detections", "100000", "--loop-rows", "2000"]),
    "ingestion": ("bench_ingestion.py", [], ["--images", "2000", "--annotations", "10000",
                                             "--crowd", "5", "--repeat", "1"]),
    "prediction": ("bench_prediction.py", [], [
        "--images", "16", "--grid-images", "8", "--grid-batch-sizes", "4", "8", "--repeat", "1",
        "--grid-repeat", "1", "--default-threads-images", "0"]),
    "memory": ("bench_memory.py", [], ["--images", "8", "--factor", "3", "--view-shards", "1",
                                       "--shard-images", "500"]),
    "end_to_end": ("bench_end_to_end.py", [], ["--images", "16", "--new-images", "6"]),
    "scale": ("bench_scale.py", [], ["--sizes", "2000", "6000", "--candidates", "50",
                                     "--demo-images", "8"]),
    "evaluation": ("bench_evaluation.py", [], ["--images", "4000", "--baseline-images", "2000",
                                               "--shard-images", "1000"]),
    "gpu": ("bench_gpu.py", [], ["--device", "cpu", "--images", "8", "--batch-sizes", "8",
                                 "--repeat", "1", "--num-workers", "0"]),  # quick: a dry run
}


def main() -> None:
    args = _parse_args()
    env = dict(os.environ)
    if args.malloc == "makefile":
        for key, value in MALLOC_ENV.items():
            env.setdefault(key, value)
    names = args.only or list(BENCHMARKS)
    started, stamp = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    command = " ".join(["python", "benchmarks/run_all.py", *sys.argv[1:]])
    print(f"run_all: {len(names)} benchmark(s), each in its own process; started {stamp}")
    print(f"command : {command}")
    print(f"host    : {platform.platform()}, Python {platform.python_version()}, "
          f"{common.usable_cpus()} usable CPUs, {common.load_now()}")
    print("malloc  : " + (", ".join(f"{k}={env[k]}" for k in MALLOC_ENV if k in env)
                          or "glibc default"))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="run_all_") as tmp:
        for name in names:
            results[name] = _run(name, args.quick, Path(tmp), env)
    total = time.perf_counter() - started
    _summary(results, total)
    payload = {"started": stamp, "command": command, "total_s": total, "quick": args.quick,
               "host": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": common.usable_cpus(), "load_average_end": list(os.getloadavg())},
               "malloc_env": {k: env[k] for k in MALLOC_ENV if k in env},
               "benchmarks": results}
    output = args.output or (None if args.quick else HERE / "results.json")
    if output is not None:
        output.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {output}")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these only")
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs: checks that every script runs (figures meaningless)")
    parser.add_argument("--malloc", choices=["makefile", "default"], default="makefile",
                        help="makefile (default): give the children the Makefile's MALLOC_* "
                        "settings when unset; default: leave glibc's defaults")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results.json (with --quick: not written)")
    return parser.parse_args()


def _run(name: str, quick: bool, tmp: Path, env: dict[str, str]) -> dict:
    """One benchmark: stream its stdout, keep its stderr aside, read its JSON figures."""
    script, default_args, quick_args = BENCHMARKS[name]
    json_path = tmp / f"{name}.json"
    cmd = [sys.executable, str(HERE / script), *(quick_args if quick else default_args),
           "--json", str(json_path)]
    print(f"\n{'=' * 100}\n$ python benchmarks/{script} {' '.join(cmd[2:-2])}\n{'=' * 100}",
          flush=True)
    import subprocess

    stderr_path = tmp / f"{name}.stderr"
    started = time.perf_counter()
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True,
                                bufsize=1)
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            print(line, end="", flush=True)
            lines.append(line)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    errors = stderr_path.read_text(errors="replace")
    if code != 0:
        print(f"!! {name} failed (exit code {code}); last lines of its stderr:")
        print("\n".join(errors.splitlines()[-30:]))
    figures = json.loads(json_path.read_text()) if json_path.exists() else None
    return {"script": script, "args": cmd[2:-2], "returncode": code, "wall_s": wall,
            "peak_rss_mib": usage.ru_maxrss / 1024, "results": figures,
            "output": "".join(lines), "stderr_tail": errors.splitlines()[-30:] if code else []}


def _headline(name: str, figures: dict | None) -> tuple[str, str]:
    """(figure, verdict) for the summary table."""
    if not figures:
        return "-", "no figures"
    if name == "scoring":
        r = figures["ratios"]
        return (f"{r['faster_than_loop']:.0f}x faster than the loop (>= 200x), "
                f"{r['x_plogp_pass']:.2f}x one p log p pass (<= 1.5x)",
                common.verdict(r["target_met"]))
    if name == "ingestion":
        return (f"{figures['ratio']:.2f}x pycocotools (<= {figures['target']:g}x)",
                common.verdict(figures["target_met"]))
    if name == "prediction":
        r = figures["ratios"]
        return (f"pipeline {r['pipeline_over_bare']:.2f}x the bare loop (>= 0.9x); extractor "
                f"{r['extractor_over_plain']:.2f}x plain", common.verdict(r["target_met"]))
    if name == "memory":
        r = figures["ratios"]
        text = "; ".join(f"{k} peak {v['peak_ratio']:.2f}x" for k, v in r.items())
        return (f"{text} (<= {figures['target']:g}x)",
                common.verdict(all(v["target_met"] for v in r.values())))
    if name == "scale":
        r, (small, large) = figures["ratios"], figures["inputs"]["sizes"]
        return (f"{large:,}/{small:,} images, time: queue {r['queue_pushed']['time']:.1f}x, views "
                f"{r['views_pushed']['time']:.1f}x; peak {r['queue_pushed']['peak']:.2f}x / "
                f"{r['views_pushed']['peak']:.2f}x", "no target")
    if name == "gpu":
        if "throughput" not in figures:
            return "no GPU: nothing measured (benchmarks/gpu_check.sh on a GPU machine)", "-"
        best = max(figures["throughput"], key=lambda r: r["pipeline_img_s"])
        coco = figures["decode"][1]  # 640 x 480
        gpu_decode = (f"{coco['cpu_ms'] / coco['gpu_ms']:.1f}x" if "gpu_ms" in coco else "n/a")
        return (f"{figures['device']}: batch {best['batch']} {best['pipeline_img_s']:.0f} img/s, "
                f"{best['ratio']:.2f}x the bare loop (>= 0.9x); nvjpeg {gpu_decode} one CPU "
                f"thread at 640x480; lease overlap {figures['lease']['overlap_s']:.1f} s",
                "dry run" if figures["device"].startswith("cpu")
                else common.verdict(best["ratio"] >= 0.9))
    if name == "evaluation":
        ratios = "; ".join(f"{c['time_ratio']:.0f}x faster than pycocotools at {c['images']:,}"
                           f" (max diff {c['max_stat_difference']:.0e})"
                           for c in figures["comparisons"])
        return (f"{figures['inputs']['images']:,} images {figures['full_seconds']:.0f} s, "
                f"{figures['full_peak_rss_mib']:,.0f} MiB (< 300 s, < 2048 MiB); {ratios}",
                common.verdict(figures["target_met"]))
    if name == "end_to_end":
        t = figures["total_s"]
        return (f"incremental / full = {t['incremental']:.0f} / {t['full']:.0f} s = "
                f"{figures['ratio_incremental_over_full']:.2f}", "no target")
    return "-", "-"


def _summary(results: dict[str, dict], total: float) -> None:
    rows = []
    for name, result in results.items():
        figure, verdict = _headline(name, result["results"])
        if result["returncode"] != 0:
            verdict = f"FAILED ({result['returncode']})"
        rows.append((name, result["wall_s"], result["peak_rss_mib"], figure, verdict))
    print(f"\n{'=' * 100}")
    common.print_table(["benchmark", "wall s", "peak RSS MiB*", "headline figure (target)",
                        "verdict"], rows,
                       f"summary: {total:.0f} s in all ({total / 60:.1f} min), {common.load_now()}")
    print("* ru_maxrss of the benchmark's process (os.wait4): the largest single process of its "
          "tree, children included")


if __name__ == "__main__":
    main()
