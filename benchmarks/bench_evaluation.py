"""Time and peak memory of COCO evaluation at pool scale, against pycocotools' COCOeval.

Not a test: it prints tables, asserts nothing. Target (issue 16): 118k images x 20 boxes in
< 5 min and < 2 GB peak on 2 cores, with COCOeval's numbers where COCOeval fits. Synthetic
DETECTIONS shards (top-5 lists, optional distributions) and ANNOTATIONS are written first;
then each measurement runs in a child process of its own (peak RSS = its own, see README):

* ours: ``evaluate_predictions`` over the shards read one at a time with only the columns
  evaluation needs (``prediction_leaves``), as the ``model_evaluation`` asset reads them;
* baseline: pycocotools' COCOeval (loadRes + evaluate + accumulate + summarize) on the same
  images, at the sizes where it fits (``--baseline-images``); ratio = its time / ours.

    python benchmarks/bench_evaluation.py [--images 118000] [--boxes 20] [--annotations 7]
        [--baseline-images 10000] [--shard-images 5000] [--distribution 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _common as common

HERE = Path(__file__).resolve().parent
STAT_NAMES = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def main() -> None:
    args = _parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        runs = _measure(args, Path(tmp))
    results = _report(args, runs)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118_000, help="images of the full run")
    parser.add_argument("--boxes", type=int, default=20, help="detections per image")
    parser.add_argument("--annotations", type=int, default=7, help="ground-truth boxes/image")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--shard-images", type=int, default=5_000, help="images per shard")
    parser.add_argument("--baseline-images", type=int, nargs="*", default=[10_000],
                        help="sizes evaluated by both (pycocotools and ours)")
    parser.add_argument("--distribution", type=int, default=0,
                        help="length of each stored class distribution (0: null, the default "
                        "storage policy); evaluation never reads it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures to this JSON file (run_all.py uses it)")
    parser.add_argument("--child", choices=["write", "ours", "pycocotools"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


# -- parent: only the standard library, so children's ru_maxrss is their own ----------------
def _measure(args: argparse.Namespace, tmp: Path) -> dict:
    runs: dict = {"write": _run_child(args, "write", tmp, args.images)}
    for size in sorted(set(args.baseline_images) | {args.images}):
        runs[f"ours:{size}"] = _run_child(args, "ours", tmp, size)
        if size in args.baseline_images:
            runs[f"pycocotools:{size}"] = _run_child(args, "pycocotools", tmp, size)
    return runs


def _run_child(args: argparse.Namespace, mode: str, tmp: Path, size: int) -> dict:
    cmd = [sys.executable, str(HERE / "bench_evaluation.py"), "--child", mode, "--dir", str(tmp),
           "--limit", str(size), "--images", str(args.images), "--boxes", str(args.boxes),
           "--annotations", str(args.annotations), "--classes", str(args.classes),
           "--shard-images", str(args.shard_images), "--distribution", str(args.distribution),
           "--seed", str(args.seed)]
    started = time.perf_counter()
    code, peak, out = common.run_child(cmd)
    result = json.loads(out.strip().splitlines()[-1]) if code == 0 and out.strip() else {}
    return {**result, "returncode": code, "peak_rss_mib": peak,
            "child_wall_s": time.perf_counter() - started, "images": size, "mode": mode}


def _report(args: argparse.Namespace, runs: dict) -> dict:
    write = runs["write"]
    print(f"bench_evaluation: COCO evaluation of {args.boxes} detections/image, streaming "
          "(al_assets) vs pycocotools COCOeval")
    print(common.machine_line())
    print(f"inputs  : synthetic, seed {args.seed}: {args.images:,} images x {args.boxes} "
          f"detections ({args.images * args.boxes:,}), ~{args.annotations} annotations/image "
          f"(3% crowd; small/medium/large), {args.classes} classes; shards of "
          f"{args.shard_images:,} images ({write.get('shards', '?')} files, "
          f"{write.get('mib', float('nan')):,.0f} MiB Parquet; distributions "
          f"{args.distribution or 'null'}); written in {write.get('seconds', float('nan')):.0f} s"
          " (not timed)")
    rows, figures = [], {}
    for key, run in runs.items():
        if key == "write":
            continue
        failed = run["returncode"] != 0
        rows.append((f"{run['mode']}, {run['images']:,} images",
                     run.get("seconds", float("nan")), run.get("cpu_seconds", float("nan")),
                     run["peak_rss_mib"], run.get("workload_peak_mib", float("nan")),
                     run.get("start_rss_mib", float("nan")),
                     "FAILED (exit %d)" % run["returncode"] if failed else run.get("map", "-")))
        figures[key] = run
    common.print_table(["run (one child each)", "wall s", "CPU s", "peak RSS MiB",
                        "workload peak", "RSS at start", "mAP"], rows,
                       f"evaluation ({common.load_now()})")
    print("  peak RSS = ru_maxrss of the child (imports included: torch alone is ~400 MiB); "
          "workload peak = VmHWM during the evaluation, reset after imports and setup")
    comparisons = _comparisons(args, runs)
    full = runs[f"ours:{args.images}"]
    met = (full["returncode"] == 0 and full.get("seconds", 1e9) < 300
           and full["peak_rss_mib"] < 2048)
    print(f"\ntarget: {args.images:,} images in < 300 s and < 2048 MiB peak: "
          f"{full.get('seconds', float('nan')):.1f} s, {full['peak_rss_mib']:,.0f} MiB "
          f"[{common.verdict(met)}]")
    return {"benchmark": "evaluation", "machine": common.machine_info(),
            "inputs": {k: getattr(args, k) for k in ("images", "boxes", "annotations", "classes",
                                                     "shard_images", "baseline_images",
                                                     "distribution", "seed")},
            "runs": figures, "comparisons": comparisons, "full_seconds": full.get("seconds"),
            "full_peak_rss_mib": full["peak_rss_mib"], "target_met": met}


def _comparisons(args: argparse.Namespace, runs: dict) -> list[dict]:
    out = []
    for size in args.baseline_images:
        ours, theirs = runs.get(f"ours:{size}", {}), runs.get(f"pycocotools:{size}", {})
        if ours.get("returncode") or theirs.get("returncode") or "stats" not in theirs:
            print(f"  {size:,} images: no comparison (a run failed)")
            continue
        diff = max(abs((a if a is not None else -1.0) - (b if b is not None else -1.0))
                   for a, b in zip(ours["stats"], theirs["stats"], strict=True))
        per = max([abs(a - b) for a, b in zip(ours["per_category"], theirs["per_category"],
                                               strict=True) if a is not None and b is not None]
                  + [0.0])
        ratio = theirs["seconds"] / ours["seconds"]
        print(f"  {size:,} images: pycocotools / ours = {ratio:.1f}x the time, "
              f"{theirs['peak_rss_mib'] / ours['peak_rss_mib']:.1f}x the peak RSS; "
              f"max |difference| of the 6 AP stats {diff:.1e}, of per-class AP {per:.1e}")
        out.append({"images": size, "time_ratio": ratio, "max_stat_difference": diff,
                     "max_per_class_difference": per,
                     "peak_ratio": theirs["peak_rss_mib"] / ours["peak_rss_mib"]})
    return out


# -- children ------------------------------------------------------------------------------------
def _child(args: argparse.Namespace) -> dict:
    if args.child == "write":
        return _write(args)
    inputs = _read_inputs(args)
    if args.child == "ours":  # imports before the measured part, as in a running asset
        import al_assets.core.analysis.evaluation  # noqa: F401
    _reset_hwm()
    start_rss = common.current_rss_mib()
    wall, cpu = time.perf_counter(), common.cpu_seconds()
    stats, per_category = (_ours if args.child == "ours" else _pycocotools)(args, *inputs)
    return {"seconds": time.perf_counter() - wall, "cpu_seconds": common.cpu_seconds() - cpu,
            "workload_peak_mib": common.proc_status_mib("VmHWM"), "start_rss_mib": start_rss,
            "stats": stats, "per_category": per_category,
            "map": None if stats[0] is None else round(stats[0], 4)}


def _reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0): the evaluation's own peak."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _read_inputs(args: argparse.Namespace) -> tuple:
    import pyarrow.parquet as pq

    shards = sorted((args.dir / "detections").glob("*.parquet"))
    keep = -(-args.limit // args.shard_images)
    annotations = pq.read_table(args.dir / "annotations.parquet")
    annotations = annotations.filter(_below(annotations["image_id"], args.limit))
    return shards[:keep], annotations, pq.read_table(args.dir / "images.parquet"), \
        pq.read_table(args.dir / "categories.parquet")


def _below(ids, limit: int):
    import pyarrow.compute as pc

    return pc.less_equal(ids, limit)


def _ours(args, shards, annotations, images, categories) -> tuple[list, list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from al_assets.core.analysis.evaluation import evaluate_predictions, prediction_leaves

    def read():
        for path in shards:
            parquet = pq.ParquetFile(path)
            shard = parquet.read(columns=prediction_leaves(parquet.schema))
            yield shard.filter(_below(shard["image_id"], args.limit))
            pa.default_memory_pool().release_unused()

    result = evaluate_predictions(read(), annotations, images, categories)
    ids = sorted(result["per_category"])
    return [result[n] for n in STAT_NAMES], [result["per_category"][i] for i in ids]


def _pycocotools(args, shards, annotations, images, categories) -> tuple[list, list]:
    import contextlib
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    table = pa.concat_tables([pq.read_table(p, columns=["image_id", "detections"])
                              for p in shards])
    table = table.filter(_below(table["image_id"], args.limit))
    flat = pc.list_flatten(table["detections"])
    box = pc.struct_field(flat, "box")
    x0, y0, x1, y1 = (pc.struct_field(box, f).to_numpy().astype(np.float64)
                      for f in ("xmin", "ymin", "xmax", "ymax"))
    image = table["image_id"].to_numpy()[pc.list_parent_indices(table["detections"]).to_numpy()]
    results = [{"image_id": int(i), "category_id": int(c), "bbox": [a, b, c2 - a, d - b],
                "score": float(s)} for i, c, a, b, c2, d, s in zip(
                    image, pc.struct_field(flat, "label_id").to_numpy(), x0, y0, x1, y1,
                    pc.struct_field(flat, "score").to_numpy())]
    columns = annotations.select(["image_id", "category_id", "bbox_xywh", "area", "iscrowd"])
    gts = [{"id": n, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": int(k)}
           for n, (i, c, b, a, k) in enumerate(zip(*(columns[name].to_pylist()
                                                     for name in columns.column_names)), 1)]
    category_ids = sorted(categories["category_id"].to_pylist())
    ids = sorted(set(pc.unique(annotations["image_id"]).to_pylist()))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": i} for i in ids], "annotations": gts,
                        "categories": [{"id": c} for c in category_ids]}
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        evaluator.params.imgIds, evaluator.params.catIds = ids, category_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [None if v < 0 else float(v) for v in evaluator.stats[:6]]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per = [float(p[p > -1].mean()) if (p > -1).any() else None
           for p in (precision[:, :, k] for k in range(len(category_ids)))]
    return stats, per


def _write(args: argparse.Namespace) -> dict:
    """Shards of DETECTIONS and one ANNOTATIONS table, vectorized (no per-box Python)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from al_assets.core.schemas import CATEGORIES, IMAGES

    started = time.perf_counter()
    (args.dir / "detections").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    ann_parts = []
    for n, first in enumerate(range(1, args.images + 1, args.shard_images)):
        ids = np.arange(first, min(first + args.shard_images, args.images + 1), dtype=np.int64)
        predictions, annotations = _synthetic(rng, ids, args)
        pq.write_table(predictions, args.dir / "detections" / f"shard-{n:04d}.parquet",
                       compression="zstd")
        ann_parts.append(annotations)
    pq.write_table(pa.concat_tables(ann_parts), args.dir / "annotations.parquet")
    ids = np.arange(1, args.images + 1, dtype=np.int64)
    pq.write_table(pa.table({"image_id": ids, "file_name": pa.array(ids.astype(str)),
                             "uri": pa.array(ids.astype(str)), "width": np.full(ids.size, 640,
                                                                                 np.int32),
                             "height": np.full(ids.size, 480, np.int32),
                             "date_captured": pa.nulls(ids.size, pa.string()),
                             "batch": pa.array(["b"] * ids.size),
                             "shard": pa.array(["s"] * ids.size)}, schema=IMAGES),
                   args.dir / "images.parquet")
    cats = list(range(1, args.classes + 1))
    pq.write_table(pa.table({"category_id": pa.array(cats, pa.int32()),
                             "name": [f"class-{c}" for c in cats],
                             "supercategory": pa.nulls(len(cats), pa.string()),
                             "batch": ["b"] * len(cats)}, schema=CATEGORIES),
                   args.dir / "categories.parquet")
    files = list((args.dir / "detections").glob("*.parquet"))
    return {"seconds": time.perf_counter() - started, "shards": len(files),
            "mib": sum(f.stat().st_size for f in files) / 2**20}


def _synthetic(rng, ids, args):
    """Ground truth of 1..2x``annotations`` boxes per image (log-uniform sizes: every COCO area
    range), detections: a jittered copy of most boxes (10% relabelled), random boxes to fill."""
    import numpy as np
    import pyarrow as pa

    from al_assets.core.schemas import ANNOTATIONS, BOX2D, DETECTION, DETECTIONS

    n_gt = rng.integers(args.annotations // 2, args.annotations * 3 // 2 + 1, ids.size)
    gt_image = np.repeat(ids, n_gt)
    size = np.exp(rng.uniform(np.log(4), np.log(300), (gt_image.size, 2)))
    corner = rng.uniform(0, 640 - size.max(axis=1, keepdims=True).clip(max=600), (gt_image.size, 2))
    gt_box = np.column_stack([corner, corner + size])
    gt_label = rng.integers(1, args.classes + 1, gt_image.size)
    crowd = rng.random(gt_image.size) < 0.03
    per_image = args.boxes
    det_box = np.empty((ids.size * per_image, 4))
    det_label = rng.integers(1, args.classes + 1, det_box.shape[0])
    score = rng.random(det_box.shape[0]).astype(np.float32)
    det_size = np.exp(rng.uniform(np.log(4), np.log(300), (det_box.shape[0], 2)))
    det_corner = rng.uniform(0, 340, (det_box.shape[0], 2))
    det_box[:] = np.column_stack([det_corner, det_corner + det_size])
    starts = np.r_[0, np.cumsum(n_gt)[:-1]]
    for j in range(min(per_image, int(n_gt.max()))):  # the j-th box of each image
        has = n_gt > j
        rows, gt = np.flatnonzero(has) * per_image + j, starts[has] + j
        hit = rng.random(rows.size) < 0.85
        rows, gt = rows[hit], gt[hit]
        det_box[rows] = gt_box[gt] + rng.normal(0, 0.05, (gt.size, 4)) * np.repeat(
            gt_box[gt, 2:] - gt_box[gt, :2], 2, axis=1)
        det_label[rows] = np.where(rng.random(gt.size) < 0.9, gt_label[gt], det_label[rows])
        score[rows] = (0.3 + 0.7 * rng.random(gt.size)).astype(np.float32)
    det_box[:, 2:] = np.maximum(det_box[:, 2:], det_box[:, :2])
    box = pa.StructArray.from_arrays([pa.array(det_box[:, i].astype(np.float32))
                                      for i in range(4)], fields=list(BOX2D))
    n = det_box.shape[0]
    top = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * 5),
                                   pa.array(np.tile(np.arange(1, 6, dtype=np.int32), n)))
    top_scores = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * 5),
                                          pa.array(np.full(n * 5, 0.2, np.float32)))
    width = args.distribution
    distribution = (pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * width),
        pa.array(rng.random(n * width, dtype=np.float32))) if width else pa.nulls(
        n, pa.list_(pa.float32())))
    detections = pa.StructArray.from_arrays(
        [box, pa.array(score), pa.array(det_label.astype(np.int32)), top, top_scores,
         distribution], fields=list(DETECTION))
    offsets = pa.array(np.arange(ids.size + 1, dtype=np.int32) * per_image)
    predictions = pa.Table.from_arrays(
        [pa.array(ids), pa.array(ids.astype(str)), pa.array(np.full(ids.size, 640, np.int32)),
         pa.array(np.full(ids.size, 480, np.int32)), pa.array(["detector"] * ids.size),
         pa.array(np.ones(ids.size, np.int32)), pa.array(["s"] * ids.size),
         pa.ListArray.from_arrays(offsets, detections), pa.nulls(ids.size, pa.list_(pa.float32()))],
        schema=DETECTIONS)
    xywh = np.column_stack([gt_box[:, :2], gt_box[:, 2:] - gt_box[:, :2]]).astype(np.float32)
    m = gt_image.size
    annotations = pa.Table.from_arrays(
        [pa.array(np.arange(m, dtype=np.int64) + int(ids[0]) * 100), pa.array(gt_image),
         pa.array(gt_label.astype(np.int32)), pa.array(["c"] * m), pa.nulls(m, pa.string()),
         pa.StructArray.from_arrays([pa.array(gt_box[:, i].astype(np.float32))
                                     for i in range(4)], fields=list(BOX2D)),
         pa.FixedSizeListArray.from_arrays(pa.array(xywh.reshape(-1)), 4),
         pa.array(xywh[:, 2].astype(np.float64) * xywh[:, 3] * 0.8), pa.array(crowd),
         pa.array(["b"] * m)],
        schema=pa.schema([f for f in ANNOTATIONS if f.name != "segmentation"]))  # no masks
    return predictions, annotations


if __name__ == "__main__":
    main()
