"""Ingestion: ``ingest_batch`` + writing its four tables vs ``pycocotools.coco.COCO(path)`` alone.

Not a test: it prints tables and asserts nothing. Targets: ingesting a COCO instances file (JSON
read, record validation, polygon/RLE -> compressed RLE, Arrow tables, four Parquet writes) takes
at most 2x the time pycocotools needs just to load and index it, at a peak RSS of at most 1.3x
pycocotools' own. Peak RSS is measured in one child process per side (``--child``): VmHWM of the
child itself (imports included) and of the workload alone (high-water mark reset after imports).

The input is generated, never shipped: a seeded synthetic instances file (default 20,000 images,
100,000 annotations with polygon segmentations, a few crowd annotations as uncompressed RLE, 5
categories with gaps in their ids) written to a temporary folder. Images are not needed:
``IngestOptions(verify="none")`` trusts the JSON, as pycocotools does.

    python benchmarks/bench_ingestion.py [--size 20k|200k] [--images N] [--annotations N]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import _common as common
from al_assets.core.coco.ingest import IngestOptions, ingest_batch
from al_assets.core.coco.parse import parse_coco
from al_assets.core.coco.reader import gc_paused, load_json
from al_assets.core.coco.tables import (
    CocoTables,
    _annotations_table,
    _categories_table,
    _images_table,
    rejects_table,
)
from al_assets.core.sharding import DEFAULT_SHARD_SIZE
from al_assets.core.storage import TableStore
from al_assets.core.storage.objects import ObjectStore, to_uri

CATEGORIES = [  # ids with gaps, as in COCO
    {"id": 2, "name": "bicycle", "supercategory": "vehicle"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 7, "name": "train", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 44, "name": "bottle", "supercategory": "kitchen"},
]
TABLES = ("categories", "images", "annotations", "ingestion_rejects")
BATCH = "batch-000"
SIZES = {"20k": (20_000, 100_000, 40), "200k": (200_000, 1_000_000, 400)}  # images, anns, crowd


def ours_once(uri: str, image_root: str, store_root: Path) -> None:
    """One ingestion as the asset does it: ``ingest_batch`` + the four Parquet writes."""
    store = TableStore(store_root)
    tables = ingest_batch(uri, image_root, BATCH, ObjectStore(), IngestOptions(verify="none"))
    for name in TABLES:
        store.write(name, getattr(tables, _attr(name)), BATCH)


def baseline_once(path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        COCO(str(path))


def main() -> None:
    args = _parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_ingestion_") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        path, counts = write_synthetic_coco(work / "annotations" / f"{BATCH}.json", args)
        generated = time.perf_counter() - started
        uri, image_root = to_uri(path), to_uri(work / "images")
        runs = {"n": 0}

        def ours() -> None:
            runs["n"] += 1
            ours_once(uri, image_root, work / f"store-{runs['n']}")

        memory = {side: _peak_in_child(side, path, work / f"store-child-{side}")
                  for side in ("pycocotools", "al_assets")}
        times = common.interleaved_best(
            {"pycocotools": lambda: baseline_once(path), "al_assets": ours}, args.repeat)
        stages = _stages(uri, image_root, work / "store-stages")
        ratio = times["al_assets"].wall / times["pycocotools"].wall
        profile = _profile(ours) if args.profile == "always" or (
            args.profile == "near" and ratio > 0.75 * args.target) else None
        info = common.machine_info()
        results = _report(args, info, path, counts, generated, times, stages, memory, ratio,
                          profile)
    common.write_json(args.json, {"benchmark": "ingestion", "machine": info, **results})


# -- peak RSS, one child process per side ----------------------------------------------------
_CHILD = """
import sys, time
sys.path.insert(0, {here!r})
import _common as common
from pathlib import Path
side, path, store = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if side == "pycocotools":  # pycocotools' own imports only
    import contextlib, io
    from pycocotools.coco import COCO
    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            COCO(str(path))
else:
    from bench_ingestion import ours_once
    images = (path.parent.parent / "images").resolve().as_uri()
    def run():
        ours_once(path.resolve().as_uri(), images, store)
imports_peak = common.proc_status_mib("VmHWM")
with open("/proc/self/clear_refs", "w") as handle:  # "5": VmHWM back to the current RSS
    handle.write("5")
start_rss, wall, cpu = common.current_rss_mib(), time.perf_counter(), common.cpu_seconds()
run()
print(common.json.dumps({{
    "wall_s": time.perf_counter() - wall, "cpu_s": common.cpu_seconds() - cpu,
    "imports_peak_mib": imports_peak, "start_rss_mib": start_rss,
    "workload_peak_mib": common.proc_status_mib("VmHWM")}}))
"""


def _peak_in_child(side: str, path: Path, store_root: Path) -> dict[str, float]:
    """Run one side once in a fresh process that imports only what that side needs; its
    VmHWM is its own (ru_maxrss would start at this parent's peak), reported with the imports
    and for the workload alone (high-water mark reset after the imports)."""
    code = _CHILD.format(here=str(Path(__file__).resolve().parent))
    status, ru_maxrss, out = common.run_child(
        [sys.executable, "-c", code, side, str(path), str(store_root)])
    if status != 0:
        raise SystemExit(f"bench_ingestion child {side} failed with exit code {status}")
    return {**json.loads(out.strip().splitlines()[-1]), "ru_maxrss_mib": ru_maxrss}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="20k",
                        help="preset: 20k images / 100k annotations (default, 35 MiB) or 200k "
                        "images / 1M annotations (350 MiB; ~25 s for pycocotools alone)")
    parser.add_argument("--images", type=int, default=None, help="overrides --size")
    parser.add_argument("--annotations", type=int, default=None, help="overrides --size")
    parser.add_argument("--crowd", type=int, default=None,
                        help="crowd annotations (uncompressed RLE); overrides --size")
    parser.add_argument("--vertices", type=int, nargs=2, default=[8, 24],
                        help="polygon vertex count range")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    parser.add_argument("--target", type=float, default=2.0, help="time target (x pycocotools)")
    parser.add_argument("--memory-target", type=float, default=1.3,
                        help="peak RSS target (x pycocotools' own peak)")
    parser.add_argument("--profile", choices=["near", "always", "never"], default="near",
                        help="cProfile one more ingestion; near (default): when the ratio is "
                        "over 75%% of the target (missed or close to it)")
    parser.add_argument("--seed", type=int, default=0)
    common.add_json_arg(parser)
    args = parser.parse_args()
    preset = dict(zip(("images", "annotations", "crowd"), SIZES[args.size], strict=True))
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _attr(table: str) -> str:
    return "rejects" if table == "ingestion_rejects" else table


# -- synthetic COCO --------------------------------------------------------------------------
def write_synthetic_coco(path: Path, args: argparse.Namespace) -> tuple[Path, dict[str, int]]:
    """A seeded COCO instances file: star-shaped polygons inside each image, a few crowd RLEs."""
    rng = np.random.default_rng(args.seed)
    n_img, n_ann = args.images, args.annotations
    widths = rng.integers(320, 641, n_img)
    heights = rng.integers(240, 481, n_img)
    images = [
        {"id": i + 1, "file_name": f"{i + 1:08d}.jpg", "width": int(w), "height": int(h),
         "license": 1, "date_captured": "2024-01-01 00:00:00"}
        for i, (w, h) in enumerate(zip(widths.tolist(), heights.tolist(), strict=True))
    ]
    owner = np.sort(rng.integers(0, n_img, n_ann))  # image index of each annotation
    cat_ids = np.array([c["id"] for c in CATEGORIES])[rng.integers(0, len(CATEGORIES), n_ann)]
    crowd = set(rng.choice(n_ann, size=min(args.crowd, n_ann), replace=False).tolist())
    polygons = _polygons(rng, widths[owner], heights[owner], args.vertices)
    annotations, vertices = [], 0
    for a, (polygon, bbox, area) in enumerate(polygons):
        if a in crowd:
            w, h = int(widths[owner[a]]), int(heights[owner[a]])
            segmentation, bbox, area = _crowd_rle(rng, w, h)
        else:
            segmentation = [polygon]
            vertices += len(polygon) // 2
        annotations.append({
            "id": a + 1, "image_id": int(owner[a]) + 1, "category_id": int(cat_ids[a]),
            "segmentation": segmentation, "area": area, "bbox": bbox, "iscrowd": int(a in crowd),
        })
    info = {"description": "al_assets synthetic ingestion benchmark", "seed": args.seed}
    document = {"info": info,
                "licenses": [{"id": 1, "name": "synthetic", "url": ""}],
                "images": images, "annotations": annotations, "categories": CATEGORIES}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, separators=(",", ":")))
    counts = {"images": n_img, "annotations": n_ann, "crowd": len(crowd),
              "polygon_vertices": vertices, "categories": len(CATEGORIES),
              "bytes": path.stat().st_size}
    return path, counts


def _polygons(rng: np.random.Generator, w: np.ndarray, h: np.ndarray, vertex_range):
    """One star-shaped polygon per annotation, vectorized: (flat xy list, xywh bbox, area)."""
    n = len(w)
    k = rng.integers(vertex_range[0], vertex_range[1] + 1, n)
    radius = rng.uniform(8, np.minimum(w, h) / 4)
    cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
    group = np.repeat(np.arange(n), k)
    angles = rng.uniform(0, 2 * np.pi, group.size)
    angles = angles[np.lexsort((angles, group))]  # sorted within each polygon
    r = np.repeat(radius, k) * rng.uniform(0.5, 1.0, group.size)
    xs = np.round(np.repeat(cx, k) + r * np.cos(angles), 2)
    ys = np.round(np.repeat(cy, k) + r * np.sin(angles), 2)
    ends = np.cumsum(k)
    starts = ends - k
    nxt = np.arange(group.size) + 1
    nxt[ends - 1] = starts  # each polygon's last vertex wraps to its first
    area = 0.5 * np.abs(np.add.reduceat(xs * ys[nxt] - xs[nxt] * ys, starts))
    x0, y0 = np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts)
    bw = np.round(np.maximum.reduceat(xs, starts) - x0, 2)
    bh = np.round(np.maximum.reduceat(ys, starts) - y0, 2)
    flat = np.column_stack([xs, ys]).ravel().tolist()
    bounds = (2 * np.concatenate([starts, [group.size]])).tolist()
    boxes = np.column_stack([x0, y0, bw, bh]).tolist()
    areas = np.round(area, 2).tolist()
    return [(flat[bounds[i]:bounds[i + 1]], boxes[i], areas[i]) for i in range(n)]


def _crowd_rle(rng: np.random.Generator, w: int, h: int) -> tuple[dict, list, float]:
    """Uncompressed RLE (column-major run lengths, starting with zeros) of a few rectangles."""
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(3, 8))):
        x, y = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
        mask[y:y + int(rng.integers(4, 12)), x:x + int(rng.integers(4, 12))] = 1
    flat = mask.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    rle = mask_utils.encode(np.asfortranarray(mask))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {"size": [h, w], "counts": counts}, bbox, float(mask_utils.area(rle))


# -- breakdown -------------------------------------------------------------------------------
def _stages(uri: str, image_root: str, root: Path) -> dict[str, float]:
    """The steps of ``ingest_batch`` + the writes, timed one by one (one run)."""
    times: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        times[name] = time.perf_counter() - start
        return value

    with gc_paused():  # as ingest_batch runs
        data = timed("read file", lambda: ObjectStore().read_bytes(uri))
        document = timed("msgspec decode + top-level checks (load_json)",
                         lambda: load_json(data, uri))
        del data
        parsed = timed("validate records (parse_coco)", lambda: parse_coco(document, uri))
        del document
        rejects: list = []
        annotations, _ = timed(
            "annotations table: RLE per image run + columns (_annotations_table)",
            lambda: _annotations_table(parsed, BATCH, rejects))
        tables = CocoTables(
            annotations=annotations,
            images=timed("images table incl. shard assignment (_images_table)",
                         lambda: _images_table(parsed, BATCH, image_root, DEFAULT_SHARD_SIZE)),
            categories=_categories_table(parsed, BATCH),
            rejects=rejects_table(rejects, BATCH, uri),
        )
    store = TableStore(root)
    for name in TABLES:
        timed(f"write {name} (TableStore.write, zstd Parquet)",
              lambda name=name: store.write(name, getattr(tables, _attr(name)), BATCH))
    return times


def _profile(fn) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(15)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    header = [line.strip() for line in lines[:start] if "function calls" in line]
    return "\n".join(header + lines[start:])


# -- report ----------------------------------------------------------------------------------
def _report(args, info, path, counts, generated, times, stages, memory, ratio,
            profile) -> dict:
    base, ours = times["pycocotools"], times["al_assets"]
    print("bench_ingestion: ingest_batch + 4 Parquet writes vs pycocotools.coco.COCO(path)")
    print(common.machine_line(info))
    print(f"inputs  : synthetic COCO instances file, seed {args.seed}: "
          f"{counts['images']:,} images, "
          f"{counts['annotations']:,} annotations ({counts['annotations'] - counts['crowd']:,} "
          f"polygons, {counts['polygon_vertices']:,} vertices; {counts['crowd']} crowd "
          f"uncompressed RLEs), {counts['categories']} categories (ids "
          f"{[c['id'] for c in CATEGORIES]}), {counts['bytes'] / 2**20:.1f} MiB JSON "
          f"(generated in {generated:.1f} s, not timed); IngestOptions(verify='none'); "
          f"best of {args.repeat}, interleaved")
    rows = [
        ("baseline: pycocotools.coco.COCO(path) (json.load + createIndex)", base.wall, base.cpu,
         counts["annotations"] / base.wall, 1.0),
        ("al_assets: ingest_batch + TableStore.write x 4", ours.wall, ours.cpu,
         counts["annotations"] / ours.wall, ratio),
    ]
    common.print_table(["method", "wall s", "CPU s", "annotations/s", "x baseline"], rows,
                       f"ingestion ({common.load_now()})")
    print(f"\nratio: al_assets / pycocotools = {ratio:.2f}x the time (target <= {args.target:g}x) "
          f"[{common.verdict(ratio <= args.target)}]")
    total = sum(stages.values())
    common.print_table(["stage (one run)", "seconds", "share"],
                       [(k, v, f"{100 * v / total:.0f}%") for k, v in stages.items()],
                       f"breakdown of one ingestion, stage by stage ({common.load_now()})")
    peaks = _print_memory(memory, args.memory_target)
    if profile:
        print(f"\ncProfile of one ingestion (ingest_batch + 4 writes), top 15 by cumulative time:")
        print(profile)
    return {
        "inputs": counts,
        "times": {"pycocotools": base, "al_assets": ours},
        "ratio": ratio, "target": args.target,
        "target_met": ratio <= args.target and peaks["process"] <= args.memory_target,
        "memory": memory, "memory_ratio": peaks, "memory_target": args.memory_target,
        "stages_s": stages, "profile": profile,
    }


def _print_memory(memory: dict[str, dict[str, float]], target: float) -> dict[str, float]:
    """Peak RSS table (one child each) and the ratios: the process's and the workload's."""
    rows = []
    for side, m in memory.items():
        peak = max(m["imports_peak_mib"], m["workload_peak_mib"])
        m["process_peak_mib"] = peak
        rows.append((side, peak, m["imports_peak_mib"], m["start_rss_mib"],
                     m["workload_peak_mib"], m["workload_peak_mib"] - m["start_rss_mib"],
                     m["wall_s"]))
    common.print_table(["one child process each", "peak RSS MiB", "after imports", "at start",
                        "workload peak", "growth", "seconds"], rows,
                       f"peak RSS: VmHWM of the child, imports included and workload alone "
                       f"({common.load_now()})")
    ours, base = memory["al_assets"], memory["pycocotools"]
    peaks = {"process": ours["process_peak_mib"] / base["process_peak_mib"],
             "growth": (ours["workload_peak_mib"] - ours["start_rss_mib"])
             / (base["workload_peak_mib"] - base["start_rss_mib"])}
    print(f"\npeak RSS: al_assets / pycocotools = {peaks['process']:.2f}x the process peak "
          f"(target <= {target:g}x) [{common.verdict(peaks['process'] <= target)}]; "
          f"{peaks['growth']:.2f}x the growth over the imports (al_assets imports torch via "
          f"core.images: {ours['imports_peak_mib']:,.0f} vs {base['imports_peak_mib']:,.0f} MiB)")
    return peaks


if __name__ == "__main__":
    main()
