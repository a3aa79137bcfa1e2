"""Memory: peak RSS of one prediction partition and of the pool-wide scoring views, 1x vs 10x.

Not a test: it prints a table and asserts nothing. Target: the peak stays within 20% when the
input grows tenfold (streaming: memory is bounded by a batch / one shard, not by the pool).

Every measurement is its own child process (``python bench_memory.py --child ...``); its peak is
``ru_maxrss`` from ``os.wait4`` on that child. Two Linux details make that number honest:

* after ``exec`` a child's ``ru_maxrss`` starts at the *parent's* peak (the pre-exec address
  space counts), so this parent only imports the standard library and leaves the heavy setup
  (demo images, detector, synthetic predictions) to a setup child of its own;
* each child also resets its high-water mark after its setup (``/proc/self/clear_refs``) and
  reports ``VmHWM`` before and after the workload, so the workload's own peak is visible.

    python benchmarks/bench_memory.py [--images 40] [--factor 10] [--view-shards 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _common as common

STRATEGIES = ("least_confidence", "margin", "ratio", "entropy")
VIEWS = (("least_confidence", "score", False, 1000), ("least_margin", "margin", False, 10000),
         ("entropy", "entropy", True, 1000))
VIEW_COLUMNS = ["image_id", "uri", "det_index", "box", "label_id", "score", "first_label_id",
                "second_label_id", "p1", "p2", "margin", "entropy"]
MODEL_VERSION = "bench-model-1"


def main() -> None:
    args = _parse_args()
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        work = Path(tmp)
        setup = _run(args, "setup", work)
        big = args.images * args.factor
        shards = args.view_shards * args.factor
        measurements = [
            ("predict_shard", f"{args.images} images", _run(args, "predict", work, args.images)),
            ("predict_shard", f"{big} images", _run(args, "predict", work, big)),
            ("scoring views", f"{args.view_shards} shards", _run(args, "views", work,
                                                                 args.view_shards)),
            ("scoring views", f"{shards} shards", _run(args, "views", work, shards)),
        ]
    info = common.machine_info()
    info["torch_threads"] = args.torch_threads
    results = _report(args, info, setup, measurements)
    common.write_json(args.json, {"benchmark": "memory", "machine": info, **results})


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="N: images of the small shard")
    parser.add_argument("--factor", type=int, default=10, help="the large input is factor x N")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--view-shards", type=int, default=2, help="shards of the small pool")
    parser.add_argument("--shard-images", type=int, default=2000, help="images per view shard")
    parser.add_argument("--detections", type=int, default=10, help="mean detections per image")
    parser.add_argument("--classes", type=int, default=91, help="distribution length")
    parser.add_argument("--target", type=float, default=1.2, help="peak ratio target")
    parser.add_argument("--child", choices=["setup", "predict", "views"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    common.add_json_arg(parser)
    return parser.parse_args()


def _run(args, child: str, work: Path, size: int = 0) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", child, "--work", str(work),
           "--size", str(size), "--images", str(args.images), "--factor", str(args.factor),
           "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
           "--torch-threads", str(args.torch_threads), "--view-shards", str(args.view_shards),
           "--shard-images", str(args.shard_images), "--detections", str(args.detections),
           "--classes", str(args.classes)]
    return common.run_json_child(cmd, f"bench_memory child {child} (size {size})")


# -- children ----------------------------------------------------------------------------------
def _child(args) -> None:
    start = time.perf_counter()
    if args.child == "setup":
        report = _setup(args)
    else:
        workload = _predict if args.child == "predict" else _views
        run = workload(args)  # setup; returns the workload to measure
        report = {"setup_rss_mib": common.current_rss_mib(),
                  "setup_hwm_mib": common.proc_status_mib("VmHWM")}
        _reset_hwm()
        started = time.perf_counter()
        report |= run()
        report |= {"workload_s": time.perf_counter() - started,
                   "workload_hwm_mib": common.proc_status_mib("VmHWM"),
                   "end_rss_mib": common.current_rss_mib()}
    report["child_s"] = time.perf_counter() - start
    print(json.dumps(report))


def _reset_hwm() -> None:
    """Reset VmHWM and ru_maxrss to the current RSS (Linux >= 4.0): the workload's own peak."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _setup(args) -> dict:
    """Demo images (N and factor x N rows), a detector checkpoint, synthetic prediction shards."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from al_assets.core.storage import TableStore

    store = TableStore(args.work / "store")
    images = common.demo_images(args.work, args.images)
    _, detector = common.demo_detector(args.work)
    big = args.images * args.factor
    repeats = -(-big // images.num_rows)
    ids = np.arange(1, repeats * images.num_rows + 1, dtype=np.int64)[:big]
    tiled = pa.concat_tables([images] * repeats).slice(0, big)  # same files, distinct ids
    tiled = tiled.set_column(tiled.schema.get_field_index("image_id"), "image_id",
                             pa.array(ids))
    store.write("images", images, "n1x")
    store.write("images", tiled, "n10x")
    shards = args.view_shards * args.factor
    detections = 0
    for i in range(shards):
        table = _synthetic_predictions(args, i)
        detections += len(pc.list_flatten(table["detections"]))
        store.write("detections", table, f"{MODEL_VERSION}/s{i:03d}")
    return {"detector": detector, "shards": shards, "detections": detections}


def _synthetic_predictions(args, index: int):
    """One DETECTIONS shard from random detector-like outputs, via ``predictions_batch``."""
    import numpy as np
    import pyarrow as pa
    import torch

    from al_assets.core.prediction.arrow import predictions_batch

    rng = np.random.default_rng([index, 7])
    n = args.shard_images
    first = index * n + 1
    counts = rng.poisson(args.detections, n)
    total = int(counts.sum())
    logits = rng.standard_normal((total, args.classes), dtype=np.float32) * 2.0
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1)[:, :5]
    xy = rng.uniform(0, 400, (total, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(4, 200, (total, 2)).astype(np.float32)], 1)
    split = np.cumsum(counts)[:-1]
    outputs = [
        {"boxes": torch.from_numpy(b), "scores": torch.from_numpy(p.max(axis=1) * 0.9),
         "labels": torch.from_numpy(t[:, 0] + 1), "topk_labels": torch.from_numpy(t + 1),
         "topk_scores": torch.from_numpy(np.take_along_axis(p, t, 1)),
         "distribution": torch.from_numpy(p)}
        for b, p, t in zip(np.split(boxes, split), np.split(probs, split), np.split(top, split),
                           strict=True)
    ]
    images = pa.table({
        "image_id": pa.array(np.arange(first, first + n, dtype=np.int64)),
        "uri": pa.array([f"file:///pool/{i:012d}.jpg" for i in range(first, first + n)]),
        "width": pa.array(np.full(n, 640, np.int32)),
        "height": pa.array(np.full(n, 480, np.int32)),
    })
    return pa.Table.from_batches([predictions_batch(
        images, list(range(n)), outputs, model_name="bench-model", model_version=1,
        shard=f"s{index:03d}")])


def _predict(args):
    """One prediction partition (the asset's code path) over ``size`` images."""
    import torch

    from al_assets.core import schemas
    from al_assets.core.detection.extractor import ClassScoreExtractor
    from al_assets.core.prediction.loader import ShardImages
    from al_assets.core.prediction.runner import PredictOptions, ShardRef, predict_shard
    from al_assets.core.storage import TableStore

    common.set_torch_threads(args.torch_threads)
    store = TableStore(args.work / "store")
    images = store.read("images", "n1x" if args.size <= args.images else "n10x")
    images = images.slice(0, args.size)
    extractor = ClassScoreExtractor.from_checkpoint(common.saved_detector(args.work))
    options = PredictOptions(batch_size=args.batch_size, num_workers=args.num_workers)

    def run() -> dict:
        with store.writer("detections", schemas.DETECTIONS, f"{MODEL_VERSION}/p{args.size}") as w:
            stats = predict_shard(images, extractor, w, ShardRef("bench-model", 1, "p"),
                                  device=torch.device("cpu"), options=options,
                                  dataset=ShardImages(images))
        return {"images": stats.images, "detections": stats.detections, "errors": stats.errors}

    return run


def _views(args):
    """Per-shard scores, then the pool-wide views, one shard in memory at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from al_assets.core.scoring.aggregation import aggregate_images
    from al_assets.core.scoring.box_scores import box_scores
    from al_assets.core.scoring.views import rerank, top_rows
    from al_assets.core.storage import TableStore

    store = TableStore(args.work / "store")
    shards = [f"{MODEL_VERSION}/s{i:03d}" for i in range(args.size)]

    def run() -> dict:
        detections = 0
        for shard in shards:  # the scoring asset, one partition after another
            predictions = store.read("detections", shard)
            boxes = box_scores(predictions)
            detections += boxes.num_rows
            images = predictions.select(["image_id", "uri"])
            ranked = pa.concat_tables([aggregate_images(boxes, images, measure=m)
                                       for m in STRATEGIES])
            store.write("box_scores", boxes, shard)
            store.write("image_scores", ranked, shard)
            del predictions, boxes, images, ranked
        rows = {}
        for name, column, descending, limit in VIEWS:  # least_confidence, least_margin, entropy
            tables = (store.read("box_scores", s, VIEW_COLUMNS) for s in shards)
            rows[name] = top_rows(tables, column, limit=limit, descending=descending).num_rows
        merged = pa.concat_tables([store.read("image_scores", s) for s in shards])  # rankings
        ranked = [rerank(merged.filter(pc.equal(merged["measure"], m))) for m in STRATEGIES]
        return {"detections": detections, "view_rows": rows,
                "ranked_images": sum(t.num_rows for t in ranked),
                "image_scores_mib": merged.nbytes / 2**20}

    return run


# -- report --------------------------------------------------------------------------------------
def _report(args, info, setup, measurements) -> dict:
    print("bench_memory: peak RSS of one prediction partition and of the scoring views, "
          f"1x vs {args.factor}x")
    print(common.machine_line(info))
    print(f"model   : {setup['detector']}; predict_shard batch {args.batch_size}, num_workers "
          f"{args.num_workers}, torch threads {args.torch_threads or 'default'}")
    print(f"inputs  : prediction: {args.images} demo images vs {args.images * args.factor} (the "
          f"same files repeated under distinct image_ids); views: synthetic DETECTIONS shards "
          f"of {args.shard_images} images, ~{args.detections} detections/image, "
          f"{args.classes}-class distributions ({setup['detections']:,} detections in "
          f"{setup['shards']} shards), {args.view_shards} vs {setup['shards']} shards")
    rows, out = [], []
    for what, size, m in measurements:
        rows.append((f"{what}, {size}", m["wait4_peak_mib"], m["setup_hwm_mib"],
                     m["setup_rss_mib"], m["workload_hwm_mib"],
                     m["workload_hwm_mib"] - m["setup_rss_mib"], m["workload_s"]))
        out.append({"what": what, "size": size, **m})
    common.print_table(
        ["measurement (one child process each)", "peak RSS MiB", "setup peak", "RSS at start",
         "workload peak", "growth", "seconds"], rows,
        f"peak RSS: ru_maxrss of the child (wait4; includes DataLoader workers), VmHWM of the "
        f"child ({common.load_now()})")
    print("  peak RSS = the spec's figure; setup peak = VmHWM after imports + inputs/model load; "
          "workload peak = VmHWM during the measured call (reset after setup);\n"
          "  growth = workload peak - RSS at its start (what the data itself adds)")
    ratios = {}
    print(f"\nratios {args.factor}x / 1x (target: peak within {100 * (args.target - 1):.0f}%)")
    pairs = (("predict_shard", out[0], out[1]), ("scoring views", out[2], out[3]))
    for name, small, large in pairs:
        peak = large["wait4_peak_mib"] / small["wait4_peak_mib"]
        growth_small = small["workload_hwm_mib"] - small["setup_rss_mib"]
        growth_large = large["workload_hwm_mib"] - large["setup_rss_mib"]
        ratios[name] = {"peak_ratio": peak, "target_met": peak <= args.target,
                        "growth_mib": [growth_small, growth_large]}
        print(f"  {name:<14}: peak {large['wait4_peak_mib']:.0f} / {small['wait4_peak_mib']:.0f} "
              f"MiB = {peak:.3f}x [{common.verdict(peak <= args.target)}]; growth "
              f"{growth_large:.0f} vs {growth_small:.0f} MiB")
    views_large = out[3]
    print(f"  (views at {setup['shards']} shards: the rankings concatenate every shard's image "
          f"scores, {views_large['image_scores_mib']:.1f} MiB, one row per image and measure)")
    return {"inputs": {"images": args.images, "factor": args.factor,
                       "view_shards": args.view_shards, "shard_images": args.shard_images,
                       "detector": setup["detector"]},
            "measurements": out, "ratios": ratios, "target": args.target}


if __name__ == "__main__":
    main()
