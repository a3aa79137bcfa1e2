"""Train a challenger on every labeled train-split image: the one training path of the loop.

The training asset and the simulation both call :func:`train_challenger`. The labeled set is
given as tables (IMAGES rows and the effective ANNOTATIONS), turned into one COCO document
whose ``file_name`` entries are the images' own URIs, so images may live in several folders or
in S3. ``train_detector`` checkpoints its state in ``workdir``: a run killed mid-training
resumes there from the last checkpoint (same inputs) or restarts cleanly (changed inputs), and
the final checkpoint is written only once every step is done, so nothing half-trained is ever
registered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.defaults import DEFAULT_ARCH
from al_assets.core.detection.categories import CategoryMap
from al_assets.core.detection.factory import save_checkpoint
from al_assets.core.detection.training import train_detector
from al_assets.core.loop.settings import LoopError, TrainSettings
from al_assets.core.storage.files import write_bytes_atomic
from al_assets.core.storage.objects import ObjectStore


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    images: int
    boxes: int
    seconds: float
    losses: list[dict]


def categories_map(categories: pa.Table) -> CategoryMap:
    """The pool's CATEGORIES as the model's category order (sorted by id)."""
    rows = {r["category_id"]: r["name"] for r in categories.select(["category_id", "name"])
            .to_pylist()}
    return CategoryMap.from_coco_categories({"id": i, "name": n} for i, n in rows.items())


def training_document(images: pa.Table, annotations: pa.Table, categories: pa.Table) -> dict:
    """A COCO instances document of ``images`` (IMAGES rows) with their ``annotations``."""
    wanted = pa.array(images["image_id"].to_pylist(), pa.int64())
    boxes = annotations.filter(pc.is_in(annotations["image_id"], wanted))
    cmap = categories_map(categories)
    records = boxes.select(["ann_id", "image_id", "category_id", "bbox_xywh", "area",
                            "iscrowd"]).to_pylist()
    return {
        "images": [{"id": r["image_id"], "file_name": r["uri"], "width": r["width"],
                    "height": r["height"]}
                   for r in images.select(["image_id", "uri", "width", "height"]).to_pylist()],
        "annotations": [{"id": r["ann_id"], "image_id": r["image_id"],
                         "category_id": r["category_id"], "bbox": r["bbox_xywh"],
                         "area": r["area"], "iscrowd": int(r["iscrowd"])} for r in records],
        "categories": [{"id": i, "name": n} for i, n in
                       zip(cmap.category_ids, cmap.names, strict=True)],
    }


def train_challenger(
    images: pa.Table,
    annotations: pa.Table,
    categories: pa.Table,
    *,
    init_checkpoint: Path | None,
    settings: TrainSettings,
    workdir: Path,
    arch: str = DEFAULT_ARCH,
    objects: ObjectStore | None = None,
    log: Callable[[dict], None] | None = None,
    meta: dict | None = None,
) -> TrainResult:
    """Fine-tune ``init_checkpoint`` (None: from scratch) on ``images`` and their labels."""
    if images.num_rows == 0:
        raise LoopError("no labeled train-split image to train on: import labels first "
                        "(drop a label file into <source>/labels/)")
    workdir.mkdir(parents=True, exist_ok=True)
    document = training_document(images, annotations, categories)
    coco_json = write_bytes_atomic(workdir / "train.json", json.dumps(document).encode())
    losses: list[dict] = []

    def record(entry: dict) -> None:
        losses.append(entry)
        if log is not None:
            log(entry)

    started = time.perf_counter()
    model = train_detector(
        coco_json, Path("/"), arch=arch, steps=settings.steps, batch_size=settings.batch_size,
        lr=settings.lr, seed=settings.seed, init_checkpoint=init_checkpoint, log=record,
        log_every=1, checkpoint_dir=workdir / "state",
        checkpoint_every=settings.checkpoint_every, objects=objects or ObjectStore(),
    )
    seconds = time.perf_counter() - started
    checkpoint = save_checkpoint(workdir / "challenger.pt", model, arch=arch,
                                 categories=categories_map(categories),
                                 meta={**(meta or {}), "train": settings.params()})
    n_boxes = sum(1 for a in document["annotations"] if not a["iscrowd"])
    return TrainResult(checkpoint, images.num_rows, n_boxes, seconds, losses)
