"""The GPU path, measured: ``predict_shard`` on CUDA with AMP vs a bare loop, decode on CPU vs
``decode_jpeg(device="cuda")``, and two partition runs contending for one GPU lease.

Not a test: it prints tables and asserts nothing. ``benchmarks/gpu_check.sh`` runs it on a
machine with a GPU (under 8 minutes); ``--device cpu`` runs every section on the CPU, to check
the script itself where there is no GPU (its figures then say nothing about GPUs).

Sections:
1. throughput, batch 8/32/64: images/s of the prediction asset's code path (DataLoader decode
   workers -> extractor under float16 autocast -> Arrow -> Parquet) against a bare torchvision
   loop over pre-decoded tensors already on the device, same module, same batch, same autocast;
2. breakdown, largest batch: the extractor alone on the pre-decoded device tensors (its full
   class distributions vs the bare model's top label), the pipeline with more decode workers,
   and cProfile's cumulative seconds of the pipeline's stages (loader, forward + copy to host,
   Arrow rows, storage policy, Parquet write), to explain a ratio below target;
3. decode: ``decode_rgb`` (what the workers run) per image on one CPU thread vs a batched
   ``torchvision.io.decode_jpeg(device="cuda")`` over the same photo-like JPEGs, at 320 x 240,
   640 x 480 (COCO's typical size) and 1280 x 960 (runs on the CPU alone without a GPU);
4. lease: two processes, each one shard's ``predict_shard`` under ``lease_device("auto")``,
   started together: with one GPU their lease intervals must not overlap (the second waits),
   and both must finish.

    python benchmarks/bench_gpu.py [--device cuda|cpu] [--images 256] [--batch-sizes 8 32 64]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

import _common as common
from al_assets.core import schemas
from al_assets.core.demo.generator import generate_demo_dataset
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.images import decode_rgb
from al_assets.core.prediction.devices import lease_device
from al_assets.core.prediction.loader import ShardImages
from al_assets.core.prediction.runner import PredictOptions, ShardRef, predict_shard
from al_assets.core.storage import TableStore

REF = ShardRef("bench-model", 1, "bench.s000")


def main() -> None:
    args = _parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch: nothing measured (use --device cpu to check "
              "the script)")
        common.write_json(args.json, {"benchmark": "gpu", "device": "none"})
        return
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        work = Path(tmp)
        images = shard_images(work, args.images)
        checkpoint, desc = common.demo_detector(work)
        print(common.machine_line(common.machine_info()))
        print(f"device  : {_device_name(device)}; model: {desc}; {images.num_rows} demo images")
        loops = Loops(images, checkpoint, device)
        results = {
            "throughput": throughput(loops, args),
            "breakdown": breakdown(loops, args),
            "decode": decode(device, args.repeat),
            "lease": lease(images, checkpoint, device, work),
        }
    common.write_json(args.json, {"benchmark": "gpu", "device": _device_name(device),
                                  "machine": common.machine_info(), **results})


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run)")
    parser.add_argument("--images", type=int, default=256, help="demo images in the shard")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--num-workers", type=int, default=2,
                        help="decode workers (the prediction asset's default on a GPU: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timed runs")
    common.add_json_arg(parser)
    return parser.parse_args()


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu (dry run: no GPU figures)"
    return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"


def shard_images(work: Path, n: int) -> pa.Table:
    """IMAGES rows (uri, width, height) of ``n`` generated demo images, without ingestion
    (so that the script needs no COCO tooling on a bare GPU machine)."""
    from PIL import Image

    generate_demo_dataset(work / "demo", n_images=n, seed=0, n_batches=1)
    folder = work / "demo" / "images"
    files = sorted(folder.iterdir())
    sizes = [Image.open(f).size for f in files]
    return pa.table({"image_id": list(range(1, len(files) + 1)),
                     "uri": [str(f) for f in files],
                     "width": [w for w, _ in sizes], "height": [h for _, h in sizes]})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Loops:
    """The two loops every section compares: a model over the shard's images pre-decoded onto
    the device, and the prediction asset's pipeline (``predict_shard``) over the same shard."""

    def __init__(self, images: pa.Table, checkpoint: Path, device: torch.device) -> None:
        self.images, self.device = images, device
        self.extractor = ClassScoreExtractor.from_checkpoint(checkpoint).to(device)
        self.plain = self.extractor.model.eval()
        self.on_device = [ShardImages(images)[i].tensor.to(device).float().div_(255)
                          for i in range(images.num_rows)]
        self.store = TableStore(Path(tempfile.mkdtemp(prefix="bench_gpu_store_")))
        self.amp = device.type == "cuda"

    def loop(self, model, batch: int) -> None:
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            for start in range(0, len(self.on_device), batch):
                model(self.on_device[start:start + batch])
        _sync(self.device)

    def pipeline(self, batch: int, workers: int) -> None:
        options = PredictOptions(batch_size=batch, num_workers=workers, mixed_precision=self.amp)
        with self.store.writer("detections", schemas.DETECTIONS, "bench/bench.s000") as writer:
            stats = predict_shard(self.images, self.extractor, writer, REF, device=self.device,
                                  options=options, dataset=ShardImages(self.images))
        if stats.images != self.images.num_rows:
            raise RuntimeError(f"predicted {stats.images} of {self.images.num_rows}: "
                               f"{stats.error_rows[:2]}")


def throughput(loops: Loops, args) -> list[dict]:
    images, device, amp = loops.images, loops.device, loops.amp

    def bare(batch: int) -> None:
        loops.loop(loops.plain, batch)

    def pipeline(batch: int) -> None:
        loops.pipeline(batch, args.num_workers)

    rows = []
    for batch in args.batch_sizes:
        bare(batch), pipeline(batch)  # warm-up: cudnn autotune, allocator, worker start
        times = common.interleaved_best({"bare": lambda b=batch: bare(b),
                                         "pipeline": lambda b=batch: pipeline(b)}, args.repeat)
        n = images.num_rows
        row = {"batch": batch, "bare_img_s": n / times["bare"].wall,
               "pipeline_img_s": n / times["pipeline"].wall,
               "ratio": times["bare"].wall / times["pipeline"].wall}
        rows.append(row)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if amp else 0.0
    common.print_table(
        ["batch", "bare loop img/s", "pipeline img/s", "pipeline / bare", "target >= 0.9x"],
        [[r["batch"], f"{r['bare_img_s']:.1f}", f"{r['pipeline_img_s']:.1f}",
          f"{r['ratio']:.2f}x", common.verdict(r["ratio"] >= 0.9)] for r in rows],
        title=f"1. throughput ({'float16 autocast' if amp else 'float32'}, "
              f"num_workers={args.num_workers}; peak GPU memory {peak:,.0f} MiB)")
    return rows


STAGES = {"loader wait": ("dataloader.py", "__next__"),
          "forward + copy to host": ("prediction/runner.py", "_run"),
          "Arrow rows": ("prediction/arrow.py", "predictions_batch"),
          "storage policy": ("prediction/storage.py", "apply_policy"),
          "Parquet write": ("parquet/core.py", "write_table")}
"""Pipeline stages timed by cProfile: label -> (file suffix, function): its cumulative time."""


def breakdown(loops: Loops, args) -> dict:
    """Where the pipeline's time goes at the largest batch (see the module docstring, 2.)."""
    import cProfile
    import pstats

    batch = max(args.batch_sizes)

    def pipeline(workers: int) -> None:
        loops.pipeline(batch, workers)

    more = max(args.num_workers, min(8, common.usable_cpus() - 1))
    fns = {"bare model": lambda: loops.loop(loops.plain, batch),
           "extractor": lambda: loops.loop(loops.extractor, batch),
           f"pipeline, {args.num_workers} workers": lambda: pipeline(args.num_workers),
           f"pipeline, {more} workers": lambda: pipeline(more)}
    for fn in fns.values():
        fn()  # warm-up
    times = common.interleaved_best(fns, args.repeat)
    profiler = cProfile.Profile()
    wall = time.perf_counter()
    profiler.runcall(pipeline, args.num_workers)
    wall = time.perf_counter() - wall
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    stages = {label: sum(v[3] for (file, _, fn), v in stats.items()
                         if fn == name and file.endswith(suffix))
              for label, (suffix, name) in STAGES.items()}
    n = loops.images.num_rows
    rows = [[name, f"{n / t.wall:.1f}", f"{times['bare model'].wall / t.wall:.2f}x"]
            for name, t in times.items()]
    common.print_table(["loop (pre-decoded for the first two)", "img/s", "vs bare model"], rows,
                       title=f"2. breakdown at batch {batch}")
    common.print_table(
        ["stage (cProfile, one pipeline run)", "s", "share of wall"],
        [[label, f"{s:.2f}", f"{s / wall:.0%}"] for label, s in stages.items()],
        title=f"   pipeline with {args.num_workers} workers under cProfile: {wall:.2f} s wall")
    return {"batch": batch, "img_s": {k: n / t.wall for k, t in times.items()},
            "profiled_wall_s": wall, "stages_s": stages}


DECODE_SIZES = ((320, 240), (640, 480), (1280, 960))
"""JPEG sizes decoded: the demo's, COCO's typical 640 x 480, and a 1.2-megapixel camera frame."""


def synthetic_jpegs(width: int, height: int, n: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth shapes + sensor noise, quality 90: ~150 KiB at 640 x 480, as
    COCO's files are); flat synthetic images would decode unrealistically fast."""
    import io

    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = (rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        pixels = np.asarray(smooth.filter(ImageFilter.GaussianBlur(1)), np.int16)
        noisy = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def decode(device: torch.device, repeat: int, per_size: int = 20) -> list[dict]:
    """ms per image of ``decode_rgb`` (one CPU thread, what each DataLoader worker runs) and of
    a batched ``decode_jpeg(device="cuda")``, per JPEG size."""
    from torchvision.io import decode_jpeg

    rows = []
    for width, height in DECODE_SIZES:
        jpegs = synthetic_jpegs(width, height, per_size)
        raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
        fns = {"cpu": lambda j=jpegs, s=(width, height): [decode_rgb(d, "bench.jpg",
                                                                      expected_size=s) for d in j]}
        if device.type == "cuda":
            def gpu(r=raw) -> None:
                decode_jpeg(r, device=device)
                _sync(device)
            gpu()  # warm-up: nvjpeg handles
            fns["gpu"] = gpu
        times = common.interleaved_best(fns, repeat)
        row = {"size": f"{width}x{height}", "kib": sum(map(len, jpegs)) / len(jpegs) / 1024,
               **{f"{k}_ms": 1000 * t.wall / len(jpegs) for k, t in times.items()}}
        rows.append(row)
    common.print_table(
        ["JPEG", "KiB", "decode_rgb ms/img (1 CPU thread)", "decode_jpeg cuda ms/img (batched)"],
        [[r["size"], f"{r['kib']:.0f}", f"{r['cpu_ms']:.2f}",
          f"{r['gpu_ms']:.3f}" if "gpu_ms" in r else "n/a (no GPU)"] for r in rows],
        title=f"3. decode, {per_size} photo-like JPEGs per size")
    return rows


def _leased_run(checkpoint: str, uris: list[str], sizes: list[tuple[int, int]], lease_dir: str,
                out: str, queue) -> None:
    """One partition run: lease a device, predict the shard, report the lease interval."""
    images = pa.table({"image_id": list(range(1, len(uris) + 1)), "uri": uris,
                       "width": [w for w, _ in sizes], "height": [h for _, h in sizes]})
    extractor = ClassScoreExtractor.from_checkpoint(Path(checkpoint))
    store = TableStore(Path(out))
    with lease_device("auto", lease_dir, wait_s=300) as device:
        acquired = time.time()
        extractor.to(device)
        with store.writer("detections", schemas.DETECTIONS, "bench/bench.s000") as writer:
            stats = predict_shard(images, extractor, writer, REF, device=device,
                                  options=PredictOptions(batch_size=32, num_workers=0),
                                  dataset=ShardImages(images))
        _sync(device)
        released = time.time()
    queue.put({"device": str(device), "acquired": acquired, "released": released,
               "images": stats.images})


def lease(images: pa.Table, checkpoint: Path, device: torch.device, work: Path) -> dict:
    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    queue = context.Queue()
    uris = images["uri"].to_pylist()
    sizes = list(zip(images["width"].to_pylist(), images["height"].to_pylist(), strict=True))
    start = time.time()
    runs = [context.Process(target=_leased_run, args=(str(checkpoint), uris, sizes,
                                                      str(work / "leases"), str(work / f"r{i}"),
                                                      queue)) for i in range(2)]
    for run in runs:
        run.start()
    reports = [queue.get(timeout=600) for _ in runs]
    for run in runs:
        run.join()
    first, second = sorted(reports, key=lambda r: r["acquired"])
    overlap = max(0.0, first["released"] - second["acquired"])
    result = {"runs": reports, "overlap_s": overlap, "wall_s": time.time() - start,
              "exit_codes": [r.exitcode for r in runs]}
    exclusive = device.type != "cuda" or overlap == 0.0
    common.print_table(
        ["run", "device", "lease held (s from start)", "images"],
        [[k + 1, r["device"], f"{r['acquired'] - start:.1f} - {r['released'] - start:.1f}",
          r["images"]] for k, r in enumerate((first, second))],
        title=f"4. two partition runs, one lease folder: overlap {overlap:.1f} s, wall "
              f"{result['wall_s']:.1f} s, exit codes {result['exit_codes']}"
              + ("" if device.type == "cuda" else " (CPU: leases are not exclusive)")
              + f"; {'exclusive: OK' if exclusive else 'OVERLAPPED: the lease failed'}")
    return result


if __name__ == "__main__":
    main()
