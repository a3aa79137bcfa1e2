"""Scale: the queue's candidate read, the detection views, class frequency and model
evaluation at 10k vs 100k images.

Not a test: it prints tables and asserts nothing. Each workload runs in its own child process
(peak RSS from ``os.wait4``, as in bench_memory.py) on synthetic shards this script writes the
way the prediction asset does (2,000 images per shard by the stable hash, rows sorted by
image_id, STORE_ROW_GROUP_IMAGES per row group, box_scores banded at the noise floor, the
default storage policy's ~10 boxes per image; ground truth: up to 3 boxes per image, each a
detection moved by a few pixels). ``frequency`` is the class_frequency asset's read and count,
``evaluation`` the model_evaluation asset's core call (``evaluate_versions``: COCO mAP of the
version on the held-out split + the confusion matrix, shard by shard). Figures:
seconds and peak RSS per pool size, the ratio 100k / 10k, and "pushed down" / "read all"
(the code before issue 15: every shard read whole, then filtered) in the same run.

A storage section also runs the demo detector on demo images through ``predict_shard`` with
everything kept and with the default ``StoragePolicy``, and reports bytes per image.

    python benchmarks/bench_scale.py [--sizes 10000 100000] [--candidates 250] [--demo-images 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _common as common

MODEL_VERSION = "bench-model-1"
SHARD_SIZE = 2000
VIEW_COLUMNS = ["image_id", "uri", "det_index", "box", "label_id", "score", "first_label_id",
                "second_label_id", "p1", "p2", "margin", "entropy"]
QUEUE_COLUMNS = ["image_id", "uri", "width", "height", "model_name", "model_version", "shard",
                 "detections"]
WORKLOADS = ("queue_read_all", "queue_pushed", "queue_pushed_no_embedding",
             "views_read_all", "views_pushed", "frequency", "evaluation")
GT_PER_IMAGE = 3  # ground-truth boxes per image (from its first detections, moved a little)


def main() -> None:
    args = _parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        setup = {n: _run(args, "setup", work, n) for n in args.sizes}
        measured = {(w, n): _run(args, w, work, n) for n in args.sizes for w in WORKLOADS}
        storage = _run(args, "storage", work, args.demo_images) if args.demo_images else None
    info = common.machine_info()
    results = _report(args, info, setup, measured, storage)
    common.write_json(args.json, {"benchmark": "scale", "machine": info, **results})


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000],
                        help="small and large pool, in images")
    parser.add_argument("--candidates", type=int, default=250,
                        help="queue candidates read (size 50 x CANDIDATE_FACTOR 5)")
    parser.add_argument("--detections", type=float, default=10.0,
                        help="mean stored boxes per image (the demo detector's default: 10.4)")
    parser.add_argument("--classes", type=int, default=8, help="distribution length (demo: 8)")
    parser.add_argument("--embedding", type=int, default=1152, help="ssdlite320's: 1152")
    parser.add_argument("--demo-images", type=int, default=60,
                        help="storage section: demo images predicted (0: skip it)")
    parser.add_argument("--child", choices=["setup", "storage", *WORKLOADS],
                        help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    common.add_json_arg(parser)
    return parser.parse_args()


def _run(args, child: str, work: Path, size: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", child, "--work", str(work),
           "--size", str(size), "--candidates", str(args.candidates),
           "--detections", str(args.detections), "--classes", str(args.classes),
           "--embedding", str(args.embedding)]
    return common.run_json_child(cmd, f"bench_scale child {child} (size {size})")


# -- children ----------------------------------------------------------------------------------
def _child(args) -> dict:
    if args.child == "setup":
        return _setup(args)
    if args.child == "storage":
        return _storage(args)
    run = _workload(args)
    report = {"setup_rss_mib": common.current_rss_mib()}
    with open("/proc/self/clear_refs", "w") as refs:  # VmHWM from here: the workload's own
        refs.write("5")
    started = time.perf_counter()
    report |= run()
    return report | {"workload_s": time.perf_counter() - started,
                     "workload_hwm_mib": common.proc_status_mib("VmHWM")}


def _store(args):
    from al_assets.core.storage import TableStore

    return TableStore(args.work / f"pool{args.size}")


def _setup(args) -> dict:
    """Detections and box_scores shards of a pool of ``size`` images, as the assets write them."""
    import numpy as np

    from al_assets.core import schemas
    from al_assets.core.scoring.box_scores import box_scores
    from al_assets.core.defaults import DEFAULT_MIN_SCORE, STORE_ROW_GROUP_IMAGES
    from al_assets.core.scoring.views import score_bands
    from al_assets.core.sharding import assign_shards

    started = time.perf_counter()
    store = _store(args)
    ids = np.arange(1, args.size + 1, dtype=np.int64)
    shards = np.array(assign_shards(ids, "bench", SHARD_SIZE))
    store.write("images", _images_table(ids, shards), "bench")  # where each id's shard is
    store.write("categories", _categories(args.classes), "bench")
    rows = boxes = 0
    for index, shard in enumerate(sorted(set(shards.tolist()))):
        table = _synthetic_shard(args, ids[shards == shard], shard, index)
        partition = f"{MODEL_VERSION}/{shard}"
        with store.writer("detections", schemas.DETECTIONS, partition) as writer:
            writer.write_table(table, row_group_size=STORE_ROW_GROUP_IMAGES)
        scores = box_scores(table)
        with store.writer("box_scores", scores.schema, partition) as writer:
            for band in score_bands(scores, DEFAULT_MIN_SCORE):  # as scoring writes them
                writer.write_table(band)
        store.write("annotations", _synthetic_truth(table, index), shard)
        rows, boxes = rows + table.num_rows, boxes + scores.num_rows
    return {"images": rows, "boxes": boxes, "shards": len(set(shards.tolist())),
            "detections_mib": _folder_mib(store, "detections"),
            "box_scores_mib": _folder_mib(store, "box_scores"),
            "setup_s": time.perf_counter() - started}


def _images_table(ids, shards):
    import numpy as np
    import pyarrow as pa

    from al_assets.core import schemas

    n = ids.size
    return pa.Table.from_arrays([
        pa.array(ids), pa.array([f"{i:012d}.jpg" for i in ids]),
        pa.array([f"file:///pool/{i:012d}.jpg" for i in ids]),
        pa.array(np.full(n, 640, np.int32)), pa.array(np.full(n, 480, np.int32)),
        pa.nulls(n, pa.string()), pa.array(["bench"] * n), pa.array(shards.tolist()),
    ], schema=schemas.IMAGES)


def _categories(classes: int):
    import pyarrow as pa

    from al_assets.core import schemas

    ids = list(range(1, classes + 1))
    return pa.table({"category_id": pa.array(ids, pa.int32()), "name": [f"c{i}" for i in ids],
                     "supercategory": pa.nulls(classes, pa.string()),
                     "batch": ["bench"] * classes}, schema=schemas.CATEGORIES)


def _synthetic_truth(detections, seed: int):
    """ANNOTATIONS: each image's first GT_PER_IMAGE detections, moved up to 4 px, as boxes of
    their top label (so matching finds hits, misses and confusions)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from al_assets.core import schemas

    lists = detections["detections"].combine_chunks()
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    offsets = lists.offsets.to_numpy()
    keep = np.flatnonzero(np.arange(parents.size) - offsets[parents] < GT_PER_IMAGE)
    flat, parents = flat.take(pa.array(keep)), parents[keep]
    n = keep.size
    rng = np.random.default_rng([seed, 16])
    corners = np.stack([flat.field("box").field(k).to_numpy() for k in
                        ("xmin", "ymin", "xmax", "ymax")], axis=1)
    corners = corners + rng.uniform(-4, 4, (n, 1)).astype(np.float32)
    xywh = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
    labels = flat.field("label_id").to_numpy()
    return pa.Table.from_arrays([
        pa.array(np.arange(n, dtype=np.int64) + seed * 10**7),
        detections["image_id"].take(pa.array(parents)), pa.array(labels.astype(np.int32)),
        pa.array([f"c{c}" for c in labels]), pa.nulls(n, pa.string()),
        pa.StructArray.from_arrays([pa.array(corners[:, i]) for i in range(4)],
                                   fields=list(schemas.BOX2D)),
        _lists(xywh.astype(np.float32)).cast(pa.list_(pa.float32(), 4)),
        pa.array((xywh[:, 2] * xywh[:, 3]).astype(np.float64)), pa.array(np.zeros(n, bool)),
        _no_masks(n), pa.array(["bench"] * n),
    ], schema=schemas.ANNOTATIONS)


def _no_masks(n: int):
    """A null RLE column (null structs over non-null children, as ingestion writes it)."""
    import numpy as np
    import pyarrow as pa

    from al_assets.core import schemas

    sizes = pa.ListArray.from_arrays(np.zeros(n + 1, np.int32), pa.array([], pa.int32()))
    return pa.StructArray.from_arrays([sizes, pa.array([""] * n)], fields=list(schemas.RLE),
                                      mask=pa.array(np.ones(n, bool)))


def _folder_mib(store, table: str) -> float:
    from al_assets.core.storage.objects import local_path

    folder = local_path(store.root) / "tables" / table
    return sum(p.stat().st_size for p in folder.rglob("*.parquet")) / 2**20


def _synthetic_shard(args, image_ids, shard: str, seed: int):
    """DETECTIONS rows like the default storage policy keeps: boxes >= 0.05, top-2, the full
    distribution, one embedding per image; built column-wise (no Python loop over boxes)."""
    import numpy as np
    import pyarrow as pa

    from al_assets.core import schemas

    rng = np.random.default_rng([seed, 15])
    n = image_ids.size
    counts = rng.poisson(args.detections, n)
    total = int(counts.sum())
    logits = rng.standard_normal((total, args.classes)).astype(np.float32) * \
        rng.uniform(0.2, 4.0, (total, 1)).astype(np.float32)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1)[:, :2]
    xy = rng.uniform(0, 400, (total, 2)).astype(np.float32)
    box = pa.StructArray.from_arrays(
        [pa.array(c) for c in (xy[:, 0], xy[:, 1], xy[:, 0] + 30, xy[:, 1] + 30)],
        fields=list(schemas.BOX2D))
    detection = pa.StructArray.from_arrays([
        box, pa.array(rng.uniform(0.05, 1.0, total).astype(np.float32)),
        pa.array((top[:, 0] + 1).astype(np.int32)), _lists((top + 1).astype(np.int32)),
        _lists(np.take_along_axis(probs, top, 1)), _lists(probs),
    ], fields=list(schemas.DETECTION))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    embedding = rng.standard_normal((n, args.embedding)).astype(np.float32)
    return pa.Table.from_arrays([
        pa.array(image_ids), pa.array([f"file:///pool/{i:012d}.jpg" for i in image_ids]),
        pa.array(np.full(n, 640, np.int32)), pa.array(np.full(n, 480, np.int32)),
        pa.array(["bench-model"] * n), pa.array(np.ones(n, np.int32)), pa.array([shard] * n),
        pa.ListArray.from_arrays(offsets, detection), _lists(embedding),
    ], schema=schemas.DETECTIONS)


def _lists(values):
    import numpy as np
    import pyarrow as pa

    rows, width = values.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * width),
                                    pa.array(values.reshape(-1)))


def _workload(args):
    """The measured call: the queue's candidate read or the three detection views."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from al_assets.core import schemas
    from al_assets.core.analysis.frequency import class_frequency
    from al_assets.core.defaults import CONFIDENT_SCORE, DEFAULT_MIN_SCORE
    from al_assets.core.pool import pool_categories, pool_table
    from al_assets.core.prediction.storage import predictions_of
    from al_assets.core.scoring.views import confident, score_at_least, top_rows
    from al_assets.core.splits import HELDOUT, split_of

    if args.child == "evaluation":  # imports torch: before the measured part, as in an asset
        from al_assets.core.analysis.versions import evaluate_versions
    store = _store(args)
    ids = np.random.default_rng(0).choice(np.arange(1, args.size + 1), args.candidates,
                                          replace=False)
    wanted = pa.array(np.sort(ids).astype(np.int64))

    def queue() -> dict:
        partitions = store.partitions("detections", under=MODEL_VERSION)
        if args.child == "queue_read_all":  # before: every shard, every column, then filter
            parts = [t.filter(pc.is_in(t["image_id"], wanted))
                     for t in (store.read("detections", p) for p in partitions)]
            table = pa.concat_tables(parts)
        else:
            columns = QUEUE_COLUMNS + ([] if args.child.endswith("no_embedding") else
                                       ["embedding"])
            table = predictions_of(store, MODEL_VERSION, wanted, columns)  # the queue's read
        return {"rows": table.num_rows, "columns": table.num_columns}

    def views() -> dict:
        partitions = store.partitions("box_scores", under=MODEL_VERSION)
        rows = {}
        for column, descending, limit in (("score", False, 1000), ("margin", False, 10000),
                                          ("entropy", True, 1000)):
            if args.child == "views_read_all":  # before: read every box, filter afterwards
                tables = (confident(store.read("box_scores", p, VIEW_COLUMNS), DEFAULT_MIN_SCORE)
                          for p in partitions)
            else:
                where = score_at_least(DEFAULT_MIN_SCORE)
                tables = (store.read("box_scores", p, VIEW_COLUMNS, where=where)
                          for p in partitions)
            rows[column] = top_rows(tables, column, limit=limit, descending=descending).num_rows
        return {"rows": rows}

    def frequency() -> dict:  # the class_frequency asset: boxes >= 0.5 and ground truth
        boxes = store.read_where("box_scores", store.partitions("box_scores", under=MODEL_VERSION),
                                 score_at_least(CONFIDENT_SCORE), ["label_id", "score"],
                                 schema=schemas.BOX_SCORES)
        table = class_frequency(boxes, pool_table(store, "annotations", ["category_id", "iscrowd"]),
                                pool_categories(store), score_thresh=CONFIDENT_SCORE)
        return {"rows": table.num_rows, "boxes": boxes.num_rows}

    def evaluation() -> dict:  # the model_evaluation asset's core call
        images = pool_table(store, "images", ["image_id", "width", "height"])
        all_ids = images["image_id"].to_numpy()
        heldout = pa.array(all_ids[split_of(all_ids) == HELDOUT])
        found = evaluate_versions(store, [MODEL_VERSION], MODEL_VERSION, heldout,
                                  pool_table(store, "annotations"), images, pool_categories(store),
                                  iou_threshold=0.5, score_thresh=CONFIDENT_SCORE)
        return {"heldout": len(heldout), **found.summary[MODEL_VERSION],
                "confusions": int(pc.sum(found.matrix["count"]).as_py())}

    chosen = {"frequency": frequency, "evaluation": evaluation}
    return chosen.get(args.child) or (queue if args.child.startswith("queue") else views)


def _storage(args) -> dict:
    """Bytes per image of the demo detector's DETECTIONS, everything kept vs the default."""
    import pyarrow.compute as pc
    import torch

    from al_assets.core import schemas
    from al_assets.core.detection.extractor import ClassScoreExtractor
    from al_assets.core.prediction.loader import ShardImages
    from al_assets.core.prediction.runner import PredictOptions, ShardRef, predict_shard
    from al_assets.core.prediction.storage import KEEP_ALL, StoragePolicy
    from al_assets.core.storage import TableStore

    common.set_torch_threads(1)
    store = TableStore(args.work / "storage")
    images = common.demo_images(args.work, args.size)
    path, detector = common.demo_detector(args.work)
    extractor = ClassScoreExtractor.from_checkpoint(path)
    out = {"detector": detector, "images": images.num_rows}
    for name, policy in (("keep_all", KEEP_ALL), ("default", StoragePolicy())):
        with store.writer("detections", schemas.DETECTIONS, f"v/{name}") as writer:
            predict_shard(images, extractor, writer, ShardRef("demo", 1, name),
                          device=torch.device("cpu"), options=PredictOptions(storage=policy),
                          dataset=ShardImages(images))
        table = store.read("detections", f"v/{name}")
        size = Path(store.uri("detections", f"v/{name}")[len("file://"):]).stat().st_size
        out[name] = {"bytes_per_image": size / table.num_rows,
                     "boxes_per_image": len(pc.list_flatten(table["detections"])) / table.num_rows,
                     "embedding_bytes_per_image": _column_bytes(store, name, "embedding")
                     / table.num_rows}
    return out


def _column_bytes(store, partition: str, prefix: str) -> int:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(store.uri("detections", f"v/{partition}")[len("file://"):]).metadata
    return sum(meta.row_group(g).column(c).total_compressed_size
               for g in range(meta.num_row_groups) for c in range(meta.num_columns)
               if meta.row_group(g).column(c).path_in_schema.startswith(prefix))


# -- report --------------------------------------------------------------------------------------
def _report(args, info, setup, measured, storage) -> dict:
    small, large = args.sizes
    print("bench_scale: queue candidate read, detection views, class frequency, evaluation, "
          f"{small:,} vs {large:,} images")
    print(common.machine_line(info))
    s = setup[large]
    print(f"inputs  : synthetic shards of {SHARD_SIZE} images (stable hash), the assets' row "
          f"groups, ~{args.detections:g} boxes/image >= 0.05, {args.classes}-class "
          f"distributions, {args.embedding}-value embeddings; {large:,} images = {s['shards']} "
          f"shards, {s['detections_mib']:.0f} MiB detections + {s['box_scores_mib']:.0f} MiB "
          f"box_scores; queue: {args.candidates} random candidates")
    rows, ratios = [], {}
    for workload in WORKLOADS:
        a, b = measured[(workload, small)], measured[(workload, large)]
        ratios[workload] = {"time": b["workload_s"] / a["workload_s"],
                            "peak": b["wait4_peak_mib"] / a["wait4_peak_mib"]}
        rows.append((workload, a["workload_s"], b["workload_s"], ratios[workload]["time"],
                     a["wait4_peak_mib"], b["wait4_peak_mib"], ratios[workload]["peak"]))
    common.print_table(["workload (one child process each)", f"s @{small:,}", f"s @{large:,}",
                        "time ratio", f"peak MiB @{small:,}", f"peak MiB @{large:,}",
                        "peak ratio"], rows, f"ratio = {large:,} / {small:,} ({common.load_now()})")
    versus = {}
    print("\npushed down / read all, same run (time, peak RSS)")
    for new, old in (("queue_pushed", "queue_read_all"),
                     ("queue_pushed_no_embedding", "queue_read_all"),
                     ("views_pushed", "views_read_all")):
        for n in args.sizes:
            t = measured[(new, n)]["workload_s"] / measured[(old, n)]["workload_s"]
            p = measured[(new, n)]["wait4_peak_mib"] / measured[(old, n)]["wait4_peak_mib"]
            versus[f"{new}/{old}@{n}"] = {"time": t, "peak": p}
            print(f"  {new:<26} / {old:<15} @ {n:>7,}: time {t:.3f}x, peak {p:.3f}x")
    if storage:
        print(f"\nstorage: {storage['detector']}, {storage['images']} demo images, predict_shard")
        common.print_table(
            ["policy", "bytes/image", "boxes/image", "embedding bytes/image"],
            [(name, storage[name]["bytes_per_image"], storage[name]["boxes_per_image"],
              storage[name]["embedding_bytes_per_image"]) for name in ("keep_all", "default")])
    return {"inputs": {"sizes": args.sizes, "candidates": args.candidates,
                       "detections": args.detections, "classes": args.classes,
                       "embedding": args.embedding, "setup": setup},
            "measurements": {f"{w}@{n}": m for (w, n), m in measured.items()},
            "ratios": ratios, "pushed_over_read_all": versus, "storage": storage}


if __name__ == "__main__":
    main()
