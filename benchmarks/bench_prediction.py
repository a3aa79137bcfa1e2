"""Prediction overhead: ``predict_shard`` (DataLoader + extractor + Arrow + Parquet) vs a bare loop.

Not a test: it prints tables and asserts nothing. Target: the pipeline's images/s >= 0.9x a bare
torchvision loop (same detector module in eval mode under ``torch.inference_mode()``, the same
images already decoded to float tensors, same batch size and device, results discarded).

The comparison is deliberately unfair to the pipeline: it reads and decodes the JPEG/PNG files
and converts uint8 -> float itself, while the bare loop gets float tensors for free. Decoding is
therefore timed on its own and the ratio is also shown with it taken out.

    python benchmarks/bench_prediction.py [--images 96] [--batch-size 8] [--num-workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import _common as common
from al_assets.core import schemas
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.prediction.arrow import predictions_batch
from al_assets.core.prediction.loader import ShardImages
from al_assets.core.prediction.runner import PredictOptions, ShardRef, predict_shard
from al_assets.core.storage import TableStore

REF = ShardRef("bench-model", 1, "bench.s000")
DEVICE = torch.device("cpu")


def main() -> None:
    args = _parse_args()
    default_threads = torch.get_num_threads()
    threads = common.set_torch_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="bench_prediction_") as tmp:
        work = Path(tmp)
        setup = time.perf_counter()
        images = common.demo_images(work, args.images)
        checkpoint, detector_desc = common.demo_detector(work)
        extractor = ClassScoreExtractor.from_checkpoint(checkpoint)
        plain = extractor.model.eval()
        store = TableStore(work / "store")
        decoded = [ShardImages(images)[i].tensor for i in range(images.num_rows)]
        floats = [t.float().div_(255) for t in decoded]
        setup = time.perf_counter() - setup
        bench = Bench(images, extractor, plain, store, floats)
        bench.warm_up(args.batch_size)
        main_times = common.interleaved_best(bench.main_configs(args), args.repeat)
        arrow = bench.arrow_and_parquet(args.batch_size, args.repeat)
        default_row = bench.default_threads_row(args, threads, default_threads)
        grid_times = common.interleaved_best(bench.grid_configs(args), args.grid_repeat)
        info = common.machine_info()
        results = _report(args, info, detector_desc, images, floats, bench, main_times, arrow,
                          default_row, grid_times, setup)
        met = results["ratios"]["target_met"]
        if args.profile == "always" or (args.profile == "missed" and not met):
            results["profile"] = _profile(
                lambda: bench.pipeline(images.num_rows, args.batch_size, args.num_workers),
                f"one predict_shard run (batch {args.batch_size}, num_workers "
                f"{args.num_workers}, {images.num_rows} images)")
    common.write_json(args.json, {"benchmark": "prediction", "machine": info, **results})


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="demo images in the shard")
    parser.add_argument("--batch-size", type=int, default=8, help="pipeline default: 8")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="default 0: the prediction asset's CPU default (2 on a GPU)")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many timed runs")
    parser.add_argument("--grid-images", type=int, default=32, help="images per grid cell")
    parser.add_argument("--grid-workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid-batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--grid-repeat", type=int, default=2)
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="torch intra-op threads for every config (0: torch's default). Default 1: on a "
        "shared 2-core machine 2 spinning threads lose most of their time to other jobs",
    )
    parser.add_argument("--default-threads-images", type=int, default=16,
                        help="images for the one bare-loop row at torch's default thread count "
                        "(0 skips it)")
    parser.add_argument("--profile", choices=["missed", "always", "never"], default="missed",
                        help="cProfile one more pipeline run when the target is missed (default)")
    common.add_json_arg(parser)
    return parser.parse_args()


class Bench:
    """The configurations being timed, over one shard of images and one detector."""

    def __init__(self, images, extractor, plain, store: TableStore, floats) -> None:
        self.images, self.extractor, self.plain = images, extractor, plain
        self.store, self.floats = store, floats
        self.detections_per_image = 0.0

    def pipeline(self, n: int, batch_size: int, num_workers: int) -> None:
        """The prediction asset's code path: DataLoader decode -> extractor -> Parquet."""
        images = self.images.slice(0, n)
        options = PredictOptions(batch_size=batch_size, num_workers=num_workers)
        with self.store.writer("detections", schemas.DETECTIONS, "bench-model-1/bench.s000") as w:
            stats = predict_shard(images, self.extractor, w, REF, device=DEVICE,
                                  options=options, dataset=ShardImages(images))
        if stats.images != n:
            raise RuntimeError(f"predict_shard predicted {stats.images} of {n} images: "
                               f"{stats.error_rows[:3]}")
        self.detections_per_image = stats.detections / n

    def bare(self, model, n: int, batch_size: int) -> None:
        """A plain torchvision loop over pre-decoded float tensors; results discarded."""
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                model(self.floats[start:min(start + batch_size, n)])

    def decode(self, n: int) -> None:
        """What the DataLoader workers do per image: read bytes + decode_rgb."""
        dataset = ShardImages(self.images)
        for i in range(n):
            dataset[i]

    def warm_up(self, batch_size: int) -> None:
        self.bare(self.plain, batch_size, batch_size)
        self.bare(self.extractor, batch_size, batch_size)
        self.pipeline(batch_size, batch_size, 0)

    def main_configs(self, args) -> dict:
        n, bs, nw = self.images.num_rows, args.batch_size, args.num_workers
        configs = {
            "bare": lambda: self.bare(self.plain, n, bs),
            "bare_extractor": lambda: self.bare(self.extractor, n, bs),
            "pipeline": lambda: self.pipeline(n, bs, nw),
            "pipeline_nw0": lambda: self.pipeline(n, bs, 0),
            "decode": lambda: self.decode(n),
        }
        if nw == 0:
            del configs["pipeline_nw0"]
        return configs

    def grid_configs(self, args) -> dict:
        n = min(args.grid_images, self.images.num_rows)
        configs = {}
        for bs in args.grid_batch_sizes:
            configs[f"bare bs{bs}"] = lambda bs=bs: self.bare(self.plain, n, bs)
            for nw in args.grid_workers:
                configs[f"pipeline bs{bs} nw{nw}"] = lambda bs=bs, nw=nw: self.pipeline(n, bs, nw)
        return configs

    def arrow_and_parquet(self, batch_size: int, repeat: int) -> common.Timing:
        """Outputs -> DETECTIONS record batches -> one Parquet file (the runner's own calls)."""
        n = self.images.num_rows
        with torch.inference_mode():
            outputs = [self.extractor(self.floats[s:s + batch_size])
                       for s in range(0, n, batch_size)]

        def write() -> None:
            with self.store.writer("detections", schemas.DETECTIONS, "bench-model-1/arrow") as w:
                batches = [predictions_batch(self.images, list(range(s, s + len(out))), out,
                                             model_name=REF.model_name,
                                             model_version=REF.model_version, shard=REF.shard)
                           for s, out in zip(range(0, n, batch_size), outputs, strict=True)]
                import pyarrow as pa

                w.write_table(pa.Table.from_batches(batches, schemas.DETECTIONS))

        return common.interleaved_best({"arrow": write}, repeat)["arrow"]

    def default_threads_row(self, args, threads: int, default_threads: int):
        """One bare-loop timing at torch's default threads, to show what the setting costs here."""
        n = min(args.default_threads_images, self.images.num_rows)
        if n == 0 or threads == default_threads:
            return None
        torch.set_num_threads(default_threads)
        try:
            self.bare(self.plain, args.batch_size, args.batch_size)
            timing = common.interleaved_best(
                {"default": lambda: self.bare(self.plain, n, args.batch_size)}, 1)["default"]
        finally:
            torch.set_num_threads(threads)
        return default_threads, n, timing


def _profile(fn, what: str, top: int = 15) -> str:
    """cProfile top entries by cumulative time, then by own time (main process only)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    text = []
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        text.append(f"top {top} by {order} time:\n" + "\n".join(lines[start:]))
    summary = f"cProfile of {what}, main process only (DataLoader workers not profiled)"
    print(f"\n{summary}; {common.load_now()}")
    print("\n".join(text))
    return summary + "\n" + "\n".join(text)


def _report(args, info, detector_desc, images, floats, bench, times, arrow, default_row,
            grid, setup) -> dict:
    n = images.num_rows
    bs, nw = args.batch_size, args.num_workers
    per_image = bench.detections_per_image
    sizes = sorted({tuple(f.shape[1:]) for f in floats})
    print("bench_prediction: prediction overhead, predict_shard vs a bare torchvision loop")
    print(common.machine_line(info))
    print(f"model   : {detector_desc}; ClassScoreExtractor.from_checkpoint, eval, device cpu")
    print(f"inputs  : {n} demo images (generate_demo_dataset seed 0, ingest_batch verify=none), "
          f"{len(sizes)} distinct sizes from {min(sizes)} to {max(sizes)} (H, W), JPEG + ~5% PNG; "
          f"~{per_image:.0f} detections/image (model defaults); batch {bs}, num_workers {nw}; "
          f"best of {args.repeat} interleaved runs after one warm-up; setup {setup:.1f} s")
    bare = times["bare"].wall
    rows, results = [], {}
    labels = {
        "bare": "bare loop: plain detector, pre-decoded float tensors (baseline)",
        "bare_extractor": "bare loop: ClassScoreExtractor, same tensors",
        "pipeline": f"pipeline: predict_shard, num_workers={nw} (decodes itself)",
        "pipeline_nw0": "pipeline: predict_shard, num_workers=0 (decode in-process)",
        "decode": "decode alone: ShardImages[i] (read + decode_rgb), 1 process",
    }
    for key, label in labels.items():
        if key not in times:
            continue
        t = times[key]
        rows.append((label, n / t.wall, t.wall, t.cpu / n * 1e3, bare / t.wall))
        results[key] = {"images": n, "wall_s": t.wall, "cpu_s": t.cpu, "images_per_s": n / t.wall}
    rows.append(("Arrow + Parquet alone: predictions_batch + ParquetWriter", n / arrow.wall,
                 arrow.wall, arrow.cpu / n * 1e3, float("nan")))
    results["arrow_parquet"] = {"images": n, "wall_s": arrow.wall, "cpu_s": arrow.cpu}
    if default_row:
        threads, m, t = default_row
        rows.append((f"bare loop, plain detector, torch default {threads} threads ({m} images)",
                     m / t.wall, t.wall, t.cpu / m * 1e3, (bare / n) / (t.wall / m)))
        results["bare_default_threads"] = {"threads": threads, "images": m, "wall_s": t.wall,
                                           "cpu_s": t.cpu, "images_per_s": m / t.wall}
    common.print_table(["configuration", "img/s", "wall s", "CPU ms/img", "x bare"], rows,
                       f"throughput, batch {bs}, {n} images ({common.load_now()})")

    pipe, pipe0 = times["pipeline"].wall, times.get("pipeline_nw0", times["pipeline"]).wall
    decode, extractor = times["decode"].wall, times["bare_extractor"].wall
    ratio = bare / pipe
    ratio_no_decode = bare / max(pipe0 - decode, 1e-9)
    extractor_ratio = bare / extractor
    other = pipe0 - decode - extractor
    print(f"\nratios (wall time; target: pipeline >= 0.9x the bare loop on CPU)")
    print(f"  pipeline (num_workers={nw}) / bare loop        : {ratio:5.3f}x  "
          f"[{common.verdict(ratio >= 0.9)}]")
    print(f"  pipeline (num_workers=0) minus decode / bare   : {ratio_no_decode:5.3f}x  "
          f"(decode {decode / n * 1e3:.1f} ms/img taken out; the bare loop never decodes)")
    print(f"  extractor / plain detector, same tensors        : {extractor_ratio:5.3f}x  "
          f"(extractor costs {(extractor - bare) / n * 1e3:+.1f} ms/img)")
    print(f"  CPU time, pipeline (num_workers={nw}) / bare     : "
          f"{times['bare'].cpu / max(times['pipeline'].cpu, 1e-9):5.3f}x  "
          "(CPU of workers included)")
    print("breakdown of the in-process pipeline (num_workers=0), ms/img: "
          f"decode {decode / n * 1e3:.1f} + extractor {extractor / n * 1e3:.1f} "
          f"(plain detector {bare / n * 1e3:.1f}) + the rest {other / n * 1e3:.1f} "
          f"(uint8->float, DataLoader, Arrow + Parquet; Arrow + Parquet alone "
          f"{arrow.wall / n * 1e3:.1f}) = {pipe0 / n * 1e3:.1f}")

    m = min(args.grid_images, n)
    grid_rows, grid_results = [], []
    for bs_ in args.grid_batch_sizes:
        base = grid[f"bare bs{bs_}"].wall
        cells = [grid[f"pipeline bs{bs_} nw{nw_}"].wall for nw_ in args.grid_workers]
        grid_rows.append((f"batch_size {bs_}", m / base,
                          *(m / c for c in cells), *(base / c for c in cells)))
        grid_results.append({"batch_size": bs_, "bare_images_per_s": m / base, **{
            f"nw{nw_}_images_per_s": m / c for nw_, c in zip(args.grid_workers, cells)}})
    headers = ["", "bare img/s", *(f"nw={w} img/s" for w in args.grid_workers),
               *(f"nw={w} x bare" for w in args.grid_workers)]
    common.print_table(headers, grid_rows, f"grid: pipeline img/s by num_workers x batch_size, "
                       f"{m} images per cell, best of {args.grid_repeat} interleaved "
                       f"({common.load_now()})")
    return {
        "inputs": {"images": n, "batch_size": bs, "num_workers": nw, "detector": detector_desc,
                   "detections_per_image": per_image, "torch_threads": args.torch_threads},
        "configs": results,
        "ratios": {"pipeline_over_bare": ratio, "pipeline_minus_decode_over_bare": ratio_no_decode,
                   "extractor_over_plain": extractor_ratio, "target": 0.9,
                   "target_met": ratio >= 0.9},
        "grid": grid_results,
    }


if __name__ == "__main__":
    main()
