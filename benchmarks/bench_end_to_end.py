"""End to end: the demo chain from an empty storage root and a fresh Dagster instance to the report,
then one new batch through the same chain (the incremental pass).

Not a test: it prints tables and asserts nothing. The figure of merit is the ratio incremental /
full: a new batch should cost about its own prediction plus one refresh of the views, not a
re-run of the pool. Runs are real: ``execute_in_process`` on a Dagster instance in a temporary
DAGSTER_HOME (the repository's dagster.yaml), an MLflow SQLite registry under the storage root,
the same resources as ``tests/orchestration/conftest.py::make_pipeline``.

    python benchmarks/bench_end_to_end.py [--images 120] [--batches 2] [--new-images 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import _common as common

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    args = _parse_args()
    started = time.perf_counter()
    import torch  # noqa: F401  (imports are timed apart from the chain)

    import dagster as dg

    from al_assets.core.demo.generator import add_demo_batch, generate_demo_dataset
    from al_assets.core.sharding import batch_of_shard
    from al_assets.orchestration import runs
    from al_assets.orchestration.definitions import build_definitions
    from al_assets.orchestration.instance import configure_gpu_pool
    from al_assets.orchestration.resources import (
        CocoSourceResource,
        DeviceResource,
        MlflowResource,
        StorageResource,
    )

    imports = time.perf_counter() - started
    threads = common.set_torch_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        work = Path(tmp)
        source_root = work / "source"
        untimed = {}
        t0 = time.perf_counter()
        generate_demo_dataset(source_root, n_images=args.images, seed=0, n_batches=args.batches)
        untimed["generate demo pool"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        checkpoint, detector = common.demo_detector(work)
        untimed["detector checkpoint"] = time.perf_counter() - t0
        home = work / "dagster_home"
        home.mkdir()
        shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # MLflow's SQLite under the storage root
        stack = contextlib.ExitStack()

        ingest_config = {"shard_size": args.shard_size}
        predict_config = {"batch_size": args.batch_size, "num_workers": args.num_workers}
        timer = StepTimer()
        seen_runs: set[str] = set()

        # -- full pass: empty storage root, fresh instance ------------------------------------
        with timer.step("full", "instance + definitions"):
            instance, instance_desc = _fresh_instance(dg, home, stack)
            configure_gpu_pool(instance, 1)
            storage = StorageResource(root=str(work / "store"))
            source = CocoSourceResource(root=str(source_root))
            resources = {"storage": storage, "coco_source": source,
                         "mlflow": MlflowResource(storage=storage),
                         "device": DeviceResource(device="cpu", lease_dir=str(work / "leases"))}
            defs = build_definitions(resources)
        with timer.step("full", "discover batches"):
            batches = runs.discover_batches(source, instance)
        with timer.step("full", "ingest"):
            runs.ingest(defs, instance, batches, ingest_config)
        with timer.step("full", "register model"):
            key = runs.register(defs, instance, {"weights": str(checkpoint)})
        with timer.step("full", "predict + score shards"):
            full_shards = runs.predict(defs, instance, key, config=predict_config)
        with timer.step("full", "refresh views + report"):
            runs.refresh_views(defs, instance)
        full_steps = _dagster_steps(instance, seen_runs)
        report = storage.tables().file_uri("report", "index.html")

        # -- incremental pass: one new batch --------------------------------------------------
        t0 = time.perf_counter()
        add_demo_batch(source_root, args.new_images)
        untimed["generate new batch"] = time.perf_counter() - t0
        with timer.step("incremental", "discover batches"):
            new_batches = runs.discover_batches(source, instance)
        with timer.step("incremental", "ingest"):
            runs.ingest(defs, instance, new_batches, ingest_config)
        with timer.step("incremental", "predict + score shards"):
            new_shards = [s for s in instance.get_dynamic_partitions("shard")
                          if batch_of_shard(s) in new_batches]
            runs.predict(defs, instance, key, new_shards, config=predict_config)
        with timer.step("incremental", "refresh views + report"):
            runs.refresh_views(defs, instance)
        incremental_steps = _dagster_steps(instance, seen_runs)
        stack.close()
        info = common.machine_info()
        results = _report(args, info, detector, imports, untimed, timer, full_shards, batches,
                          new_batches, new_shards, full_steps, incremental_steps, report, threads,
                          instance_desc)
    common.write_json(args.json, {"benchmark": "end_to_end", "machine": info, **results})


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="demo pool size")
    parser.add_argument("--batches", type=int, default=2, help="annotation files of the pool")
    parser.add_argument("--new-images", type=int, default=30, help="images of the added batch")
    parser.add_argument("--shard-size", type=int, default=2000,
                        help="ingestion shard_size (pipeline default 2000: one shard per batch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1, help="0: torch's default")
    common.add_json_arg(parser)
    return parser.parse_args()


def _fresh_instance(dg, home: Path, stack: contextlib.ExitStack):
    """``DagsterInstance.get()`` on the repository's dagster.yaml; if this Dagster refuses that
    file, a SQLite ``instance_for_test`` in the same folder (what the tests use), saying why."""
    try:
        instance = stack.enter_context(dg.DagsterInstance.get())
        return instance, "DagsterInstance.get() with the repository's dagster.yaml (SQLite)"
    except dg.DagsterInvalidConfigError as exc:
        (home / "dagster.yaml").unlink()
        instance = stack.enter_context(dg.instance_for_test(temp_dir=str(home)))
        reason = str(exc).splitlines()[0]
        return instance, (f"dg.instance_for_test(temp_dir) (SQLite), because Dagster "
                          f"{dg.__version__} refuses the repository's dagster.yaml: {reason}")


class StepTimer:
    """Wall seconds of named steps, per pass, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = defaultdict(dict)

    def step(self, phase: str, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[phase][name] = time.perf_counter() - self.start

        return _Step()

    def total(self, phase: str) -> float:
        return sum(self.seconds[phase].values())


def _dagster_steps(instance, seen: set[str]) -> dict[str, dict[str, float]]:
    """Per job: runs, and seconds per step (asset op) summed over the runs not seen before."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for record in instance.get_run_records():
        run = record.dagster_run
        if run.run_id in seen:
            continue
        seen.add(run.run_id)
        out[run.job_name]["(runs)"] += 1
        for stat in instance.get_run_step_stats(run.run_id):
            if stat.start_time and stat.end_time:
                out[run.job_name][stat.step_key] += stat.end_time - stat.start_time
    return {job: dict(steps) for job, steps in out.items()}


def _report(args, info, detector, imports, untimed, timer, full_shards, batches, new_batches,
            new_shards, full_steps, incremental_steps, report, threads, instance_desc) -> dict:
    full, incremental = timer.total("full"), timer.total("incremental")
    ratio = incremental / full
    print("bench_end_to_end: demo chain, empty storage + fresh Dagster instance -> report, then "
          "one new batch")
    print(common.machine_line(info))
    print(f"model   : {detector}; registered from that checkpoint")
    print(f"inputs  : demo pool of {args.images} images in {len(batches)} batches "
          f"({', '.join(batches)}; shard_size {args.shard_size}: {len(full_shards)} shards), then "
          f"+{args.new_images} images ({', '.join(new_batches)}: {len(new_shards)} shard(s)); "
          f"predictions batch {args.batch_size}, num_workers {args.num_workers}, torch threads "
          f"{threads}; ingestion verify_images=decode (default)")
    print(f"instance: {instance_desc}")
    print(f"untimed : imports {imports:.1f} s, " + ", ".join(
        f"{k} {v:.1f} s" for k, v in untimed.items()))
    names = list(dict.fromkeys([*timer.seconds["full"], *timer.seconds["incremental"]]))
    rows = [(name, timer.seconds["full"].get(name, float("nan")),
             timer.seconds["incremental"].get(name, float("nan"))) for name in names]
    rows.append(("total", full, incremental))
    common.print_table(["step (wall s)", "full", "incremental"], rows,
                       f"end to end ({common.load_now()})")
    for phase, steps in (("full", full_steps), ("incremental", incremental_steps)):
        inside = sum(v for job in steps.values() for k, v in job.items() if k != "(runs)")
        runs = sum(int(job.get("(runs)", 0)) for job in steps.values())
        print(f"{phase}: {inside:.1f} s inside the ops of {runs} runs, "
              f"{timer.total(phase) - inside:.1f} s outside them (run launch, event log, "
              f"resources, partitions; imports excluded)")
    print(f"\nratio incremental / full = {incremental:.1f} / {full:.1f} s = {ratio:.3f} "
          f"(the new batch is {args.new_images / args.images:.0%} of the pool's images)")
    step_rows = []
    for job in sorted(set(full_steps) | set(incremental_steps)):
        keys = sorted(set(full_steps.get(job, {})) | set(incremental_steps.get(job, {})),
                      key=lambda k: (k != "(runs)", k))
        for key in keys:
            f = full_steps.get(job, {}).get(key, float("nan"))
            i = incremental_steps.get(job, {}).get(key, float("nan"))
            label = f"{job}: {key}"
            step_rows.append((label, int(f) if key == "(runs)" else f,
                              int(i) if key == "(runs)" and i == i else i))
    common.print_table(["Dagster step (seconds inside the op, from run step stats)", "full",
                        "incremental"], step_rows,
                       f"breakdown by Dagster step ({common.load_now()})")
    print(f"report: {report} (removed with the temporary folder)")
    return {
        "inputs": {"images": args.images, "batches": batches, "new_images": args.new_images,
                   "new_batches": new_batches, "shards": full_shards, "new_shards": new_shards,
                   "detector": detector, "torch_threads": threads, "instance": instance_desc},
        "imports_s": imports, "untimed_s": untimed,
        "steps_s": {k: dict(v) for k, v in timer.seconds.items()},
        "total_s": {"full": full, "incremental": incremental},
        "ratio_incremental_over_full": ratio,
        "dagster_steps_s": {"full": full_steps, "incremental": incremental_steps},
    }


if __name__ == "__main__":
    main()
