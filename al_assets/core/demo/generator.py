"""Seeded, byte-for-byte deterministic demo dataset in COCO format (instances JSON + images).

The demo must stand in for real data end to end: ingestion, a small detector trained from scratch
on CPU, uncertainty scoring and confusion analysis. So it is learnable but not easy:

==  =========  =============  =========  ==================================================
id  name       supercategory  frequency  look-alike / role
==  =========  =============  =========  ==================================================
1   circle     round          14 %       vs ellipse (aspect 1.00-1.06 vs 1.3-1.5)
3   ellipse    round          11 %       vs circle
5   triangle   polygon        30 %       very common class
7   square     quadrilateral  14 %       vs rectangle (aspect 1.00-1.06 vs 1.3-1.6)
8   rectangle  quadrilateral  11 %       vs square
11  pentagon   polygon        10 %       vs hexagon (5 vs 6 vertices)
13  hexagon    polygon         7 %       vs pentagon; rare
17  star       star            3 %       rare class
==  =========  =============  =========  ==================================================

Ids have gaps, as in COCO, so code cannot assume contiguous labels. Every class draws its colour
from one shared palette, so only shape separates the look-alike pairs; with objects of 12-120 px,
random rotation, blur, noise and unannotated clutter (lines, arcs, blobs, specks), small
look-alikes stay confusable, which gives uncertainty sampling something to find. Real-data traits
are present on purpose: ~5 % images without objects, ~10 % with an `iscrowd=1` group of tiny objects
(uncompressed RLE), polygon masks, partial occlusion (bounded: no placement above IoU 0.5 or hiding
half of another object), varied image sizes, ~5 % grayscale JPEGs and ~5 % PNGs.

Layout: `root/annotations/<batch>.json` and `root/images/<file_name>`. Each image draws from its
own seeded stream, so a batch depends only on its arguments and never on the clock.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from al_assets.core.coco.reader import read_coco_json
from al_assets.core.demo.render import encode_image, render_image
from al_assets.core.demo.scene import CrowdLayout, ImageLayout, ObjectLayout, plan_image
from al_assets.core.demo.shapes import CATEGORY_ID, DEMO_CATEGORIES, LOOKALIKE_PAIRS
from al_assets.core.errors import CocoFormatError, StorageError
from al_assets.core.storage.files import write_bytes_atomic

__all__ = [
    "DEMO_CATEGORIES",
    "LOOKALIKE_PAIRS",
    "add_demo_batch",
    "batch_seed",
    "generate_demo_batch",
    "generate_demo_dataset",
]

ANNOTATIONS_DIR = "annotations"
IMAGES_DIR = "images"
GROUND_TRUTH_DIR = "ground_truth"  # withheld labels: what the demo's oracle labeler knows
EMPTY_FRACTION = 0.05
GRAYSCALE_FRACTION = 0.05
PNG_FRACTION = 0.05
CROWD_FRACTION = 0.10
MEAN_OBJECTS = 4.5
MAX_OBJECTS = 14
WIDTH_RANGE = (240, 480)
HEIGHT_RANGE = (200, 400)
DEFAULT_SEED = 0
GENERATOR_VERSION = "1.0"
LICENSES = [
    {"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/2.0/"},
    {
        "id": 2,
        "name": "Attribution-ShareAlike License",
        "url": "http://creativecommons.org/licenses/by-sa/2.0/",
    },
    {
        "id": 4,
        "name": "Attribution-NonCommercial License",
        "url": "http://creativecommons.org/licenses/by-nc/2.0/",
    },
]
_EPOCH = datetime(2019, 1, 1)
_BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_INDEXED_BATCH = re.compile(r"^batch-(\d+)$")

# Stream ids for numpy seed sequences: one per purpose so changing one never shifts another.
_BATCH_STREAM, _LAYOUT_STREAM, _RENDER_STREAM, _SEED_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class _ImagePlan:
    """Image-level choices drawn once per batch (size, format, traits)."""

    index: int
    image_id: int
    file_name: str
    width: int
    height: int
    file_format: str
    grayscale: bool
    empty: bool
    crowd: bool
    license: int
    date_captured: str


def batch_seed(base_seed: int, batch_index: int) -> int:
    """Seed of batch `batch_index` in a dataset seeded with `base_seed` (stable across runs)."""
    _require_int("base_seed", base_seed, 0)
    _require_int("batch_index", batch_index, 0)
    state = np.random.SeedSequence([base_seed, _SEED_STREAM, batch_index]).generate_state(1)
    return int(state[0])


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _quota(rng: np.random.Generator, n: int, fraction: float) -> int:
    """Stochastic rounding of fraction*n: unbiased, and at least 1 once fraction*n >= 1."""
    return int(math.floor(fraction * n + rng.uniform()))


def _pick(rng: np.random.Generator, candidates: np.ndarray, count: int) -> set[int]:
    count = min(count, candidates.size)
    return {int(i) for i in rng.choice(candidates, size=count, replace=False)}


def _pick_traits(rng: np.random.Generator, n_images: int) -> dict[str, set[int]]:
    """Image indices per trait; quotas (not coin flips) so every trait appears from ~20 images."""
    indices = np.arange(n_images)
    empty = _pick(rng, indices, _quota(rng, n_images, EMPTY_FRACTION))
    gray = _pick(rng, indices, _quota(rng, n_images, GRAYSCALE_FRACTION))
    color = np.array([i for i in indices if i not in gray], dtype=int)
    png = _pick(rng, color, _quota(rng, n_images, PNG_FRACTION))
    with_objects = np.array([i for i in indices if i not in empty], dtype=int)
    crowd = _pick(rng, with_objects, _quota(rng, n_images, CROWD_FRACTION))
    return {"empty": empty, "gray": gray, "png": png, "crowd": crowd}


def _plan_images(batch: str, n_images: int, seed: int, first_image_id: int) -> list[_ImagePlan]:
    rng = np.random.default_rng([seed, _BATCH_STREAM])
    traits = _pick_traits(rng, n_images)
    widths = rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1, n_images)
    heights = rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1, n_images)
    licenses = rng.choice([lic["id"] for lic in LICENSES], n_images)
    start = _EPOCH + timedelta(days=int(rng.integers(0, 1500)))
    offsets = np.sort(rng.integers(0, 30 * 86400, n_images))
    plans = []
    for i in range(n_images):
        image_id, png = first_image_id + i, i in traits["png"]
        captured = start + timedelta(seconds=int(offsets[i]))
        plans.append(_ImagePlan(
            index=i, image_id=image_id,
            file_name=f"{batch}_{image_id:06d}{'.png' if png else '.jpg'}",
            width=int(widths[i]), height=int(heights[i]), file_format="PNG" if png else "JPEG",
            grayscale=i in traits["gray"], empty=i in traits["empty"],
            crowd=i in traits["crowd"], license=int(licenses[i]),
            date_captured=captured.strftime("%Y-%m-%d %H:%M:%S"),
        ))
    return plans


def _layout(plan: _ImagePlan, seed: int) -> ImageLayout:
    rng = np.random.default_rng([seed, _LAYOUT_STREAM, plan.index])
    n_objects = 0 if plan.empty else min(1 + int(rng.poisson(MEAN_OBJECTS)), MAX_OBJECTS)
    return plan_image(rng, plan.width, plan.height, n_objects, plan.crowd)


def _object_record(obj: ObjectLayout, plan: _ImagePlan, ann_id: int) -> dict:
    segmentation = [obj.polygon.ravel().tolist()]
    rles = mask_utils.frPyObjects(segmentation, plan.height, plan.width)
    x0, y0 = obj.polygon.min(axis=0)
    x1, y1 = obj.polygon.max(axis=0)
    return {
        "id": ann_id,
        "image_id": plan.image_id,
        "category_id": CATEGORY_ID[obj.category],
        "segmentation": segmentation,
        "area": float(mask_utils.area(mask_utils.merge(rles))),
        "bbox": [float(x0), float(y0), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        "iscrowd": 0,
    }


def _crowd_record(crowd: CrowdLayout, plan: _ImagePlan, ann_id: int) -> dict:
    rle = mask_utils.frPyObjects(crowd.rle, plan.height, plan.width)
    return {
        "id": ann_id,
        "image_id": plan.image_id,
        "category_id": CATEGORY_ID[crowd.category],
        "segmentation": crowd.rle,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 1,
    }


def _annotation_records(layout: ImageLayout, plan: _ImagePlan, first_ann_id: int) -> list[dict]:
    """Crowd first, then objects in drawing order (later ones may occlude earlier ones)."""
    records = []
    if layout.crowd is not None:
        records.append(_crowd_record(layout.crowd, plan, first_ann_id))
    for obj in layout.objects:
        records.append(_object_record(obj, plan, first_ann_id + len(records)))
    return records


def _image_record(plan: _ImagePlan) -> dict:
    return {
        "id": plan.image_id,
        "file_name": plan.file_name,
        "width": plan.width,
        "height": plan.height,
        "license": plan.license,
        "date_captured": plan.date_captured,
    }


def _coco_document(batch: str, seed: int, plans: list[_ImagePlan], annotations: list[dict]) -> dict:
    created = datetime.strptime(plans[-1].date_captured, "%Y-%m-%d %H:%M:%S")
    info = {
        "description": f"al_assets synthetic shapes demo, batch {batch}",
        "url": "",
        "version": GENERATOR_VERSION,
        "year": created.year,
        "contributor": "al_assets.core.demo",
        "date_created": created.strftime("%Y/%m/%d"),
        "batch": batch,
        "seed": seed,
    }
    return {
        "info": info,
        "licenses": LICENSES,
        "images": [_image_record(plan) for plan in plans],
        "annotations": annotations,
        "categories": DEMO_CATEGORIES,
    }


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    write_bytes_atomic(path, data)


def _read_coco(path: Path) -> dict:
    try:
        return read_coco_json(path, max_bytes=None)
    except (CocoFormatError, StorageError) as error:
        raise ValueError(f"{error}; fix or remove it") from None


def _annotation_files(root: Path) -> list[Path]:
    folder = root / ANNOTATIONS_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _ids(document: dict, key: str) -> set[int]:
    return {int(record["id"]) for record in document.get(key, [])}


def _check_collisions(root: Path, target: Path, document: dict) -> None:
    """Ids and file names must stay unique across all batches of a dataset."""
    image_ids, ann_ids = _ids(document, "images"), _ids(document, "annotations")
    names = {image["file_name"] for image in document["images"]}
    for other_path in _annotation_files(root):
        if other_path == target:
            continue
        other = _read_coco(other_path)
        clashes = {
            "image ids": image_ids & _ids(other, "images"),
            "annotation ids": ann_ids & _ids(other, "annotations"),
            "image file names": names & {image.get("file_name") for image in other["images"]},
        }
        for what, clash in clashes.items():
            if clash:
                sample = sorted(clash)[:3]
                raise ValueError(
                    f"batch file {target.name} would reuse {what} {sample} already in "
                    f"{other_path}; use add_demo_batch (it picks free ids) or pass other first ids"
                )


def _check_existing(path: Path, data: bytes, batch: str) -> None:
    if path.exists() and path.read_bytes() != data:
        raise FileExistsError(
            f"{path} already holds a batch named {batch!r} with different content; "
            "pick another batch name or delete that file (and its images) to regenerate it"
        )


def _validate_batch_arguments(
    root: Path, batch: str, n_images: int, seed: int, first_image_id: int, first_ann_id: int
) -> None:
    if not isinstance(batch, str) or not _BATCH_NAME.match(batch):
        raise ValueError(
            f"batch name {batch!r} must start with a letter or digit and contain only "
            "letters, digits, '.', '_' or '-'"
        )
    _require_int("n_images", n_images, 1)
    _require_int("seed", seed, 0)
    _require_int("first_image_id", first_image_id, 1)
    _require_int("first_ann_id", first_ann_id, 1)
    if root.exists() and not root.is_dir():
        raise ValueError(f"demo dataset root {root} is a file; pass a folder path")


def _build_batch(
    batch: str, n_images: int, seed: int, first_image_id: int, first_ann_id: int
) -> tuple[dict, list[_ImagePlan], list[ImageLayout]]:
    """Plan every image and its annotations; cheap, no pixels drawn."""
    plans = _plan_images(batch, n_images, seed, first_image_id)
    layouts = [_layout(plan, seed) for plan in plans]
    annotations: list[dict] = []
    for plan, layout in zip(plans, layouts):
        annotations.extend(_annotation_records(layout, plan, first_ann_id + len(annotations)))
    return _coco_document(batch, seed, plans, annotations), plans, layouts


def generate_demo_batch(
    root: Path,
    batch: str,
    n_images: int,
    seed: int,
    first_image_id: int = 1,
    first_ann_id: int = 1,
) -> Path:
    """Write one demo batch under `root` and return its annotation JSON path.

    Annotations are built and checked before any file is written; the JSON is written last, so
    its presence means the batch's images are complete. Rerunning with the same arguments
    rewrites nothing; a different batch under an existing name is refused.
    """
    root = Path(root)
    _validate_batch_arguments(root, batch, n_images, seed, first_image_id, first_ann_id)
    target = root / ANNOTATIONS_DIR / f"{batch}.json"
    document, plans, layouts = _build_batch(batch, n_images, seed, first_image_id, first_ann_id)
    data = (json.dumps(document, separators=(",", ":")) + "\n").encode("utf-8")
    _check_existing(target, data, batch)
    _check_collisions(root, target, document)
    for plan, layout in zip(plans, layouts):
        image = render_image(layout, np.random.default_rng([seed, _RENDER_STREAM, plan.index]))
        encoded = encode_image(image, plan.file_format, plan.grayscale)
        _write_if_changed(root / IMAGES_DIR / plan.file_name, encoded)
    _write_if_changed(target, data)
    return target


def generate_demo_dataset(
    root: Path, n_images: int = 300, seed: int = 0, n_batches: int = 1
) -> list[Path]:
    """Write `n_images` split evenly over batches batch-000, batch-001, ... with unique ids."""
    _require_int("n_images", n_images, 1)
    _require_int("seed", seed, 0)
    _require_int("n_batches", n_batches, 1)
    if n_images < n_batches:
        raise ValueError(f"n_images ({n_images}) must be >= n_batches ({n_batches})")
    paths = []
    next_image_id, next_ann_id = 1, 1
    for index in range(n_batches):
        size = n_images // n_batches + (1 if index < n_images % n_batches else 0)
        path = generate_demo_batch(
            root, f"batch-{index:03d}", size, batch_seed(seed, index), next_image_id, next_ann_id
        )
        document = _read_coco(path)
        next_image_id = max(_ids(document, "images"), default=next_image_id - 1) + 1
        next_ann_id = max(_ids(document, "annotations"), default=next_ann_id - 1) + 1
        paths.append(path)
    return paths


def withhold_labels(annotation_file: Path) -> Path:
    """Make a batch unlabeled: its annotations move to ``ground_truth/`` (the oracle's answers).

    Real pools arrive mostly unlabeled; the demo's second batch plays that part, and the demo's
    oracle labeler answers the labeling queue from the withheld file. Idempotent.
    """
    annotation_file = Path(annotation_file)
    document = _read_coco(annotation_file)
    target = annotation_file.parent.parent / GROUND_TRUTH_DIR / annotation_file.name
    if document.get("annotations"):
        _write_if_changed(target, annotation_file.read_bytes())
    unlabeled = {**document, "annotations": []}
    _write_if_changed(annotation_file,
                      (json.dumps(unlabeled, separators=(",", ":")) + "\n").encode("utf-8"))
    return target


def add_demo_batch(
    root: Path, n_images: int, seed: int | None = None, *, unlabeled: bool = False
) -> Path:
    """Append the next batch-NNN with ids after every existing one, as new data would arrive.

    With `seed=None` the seed is `batch_seed(DEFAULT_SEED, index)`, the same one
    `generate_demo_dataset` would use for that batch index.
    """
    _require_int("n_images", n_images, 1)
    root = Path(root)
    last_index, max_image_id, max_ann_id = -1, 0, 0
    withheld = sorted((root / GROUND_TRUTH_DIR).glob("*.json"))
    for path in [*_annotation_files(root), *withheld]:
        document = _read_coco(path)
        max_image_id = max(max_image_id, max(_ids(document, "images"), default=0))
        max_ann_id = max(max_ann_id, max(_ids(document, "annotations"), default=0))
        indexed = _INDEXED_BATCH.match(path.stem)
        if indexed:
            last_index = max(last_index, int(indexed.group(1)))
    index = last_index + 1
    if seed is None:
        seed = batch_seed(DEFAULT_SEED, index)
    path = generate_demo_batch(
        root, f"batch-{index:03d}", n_images, seed, max_image_id + 1, max_ann_id + 1
    )
    if unlabeled:
        withhold_labels(path)
    return path
