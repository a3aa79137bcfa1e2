"""Predict one shard: stream decoded batches through the model, write row groups as they come.

Memory is bounded by ``batch_size`` x prefetch (decoded images) plus one row group of results
(``rows_per_group`` images), whatever the shard size. Images that fail to read, decode or predict become error rows; the
shard carries on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from al_assets.core import schemas
from al_assets.core.prediction.arrow import predictions_batch
from al_assets.core.prediction.loader import LoadedImage, ShardImages, make_loader
from al_assets.core.prediction.storage import KEEP_ALL, StoragePolicy, apply_policy
from al_assets.core.defaults import STORE_ROW_GROUP_IMAGES

Detect = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class PredictOptions:
    batch_size: int = 8
    num_workers: int = 0
    mixed_precision: bool = True  # float16 autocast, on CUDA only
    rows_per_group: int = 256  # images per Parquet row group (bounds the results held)
    storage: StoragePolicy = KEEP_ALL  # what is written; the prediction asset passes the default
    row_group_images: int = STORE_ROW_GROUP_IMAGES  # Parquet row group (lookups skip the rest)


def default_workers(requested: int | None, device: torch.device) -> int:
    """Decoding workers: as asked, else 2 on a GPU (decode overlaps the GPU) and 0 on the CPU
    (workers compete with the model for the same cores and fork a large process)."""
    if requested is not None:
        return requested
    return 2 if device.type == "cuda" else 0


@dataclass
class ShardStats:
    images: int = 0
    detections: int = 0  # stored
    detections_dropped: int = 0  # below the storage policy's floor or over its cap
    errors: int = 0
    seconds: float = 0.0
    error_rows: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class ShardRef:
    model_name: str
    model_version: int
    shard: str


def predict_shard(
    images: pa.Table,
    detect: Detect,
    writer: pq.ParquetWriter,
    ref: ShardRef,
    *,
    device: torch.device,
    options: PredictOptions = PredictOptions(),
    dataset: ShardImages | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ShardStats:
    """Run ``detect`` over every image row of ``images`` and write DETECTIONS row groups;
    ``progress(done, total)`` after every batch (a shard can take minutes)."""
    stats = ShardStats()
    loader = make_loader(
        dataset or ShardImages(images), batch_size=options.batch_size,
        num_workers=options.num_workers,
    )
    pending: list[pa.RecordBatch] = []
    start = time.perf_counter()
    for batch in loader:
        good = [item for item in batch if item.tensor is not None]
        stats.error_rows += [_error(images, item.index, ref, item.stage, item.error)
                             for item in batch if item.tensor is None]
        rows, outputs = _predict_isolating_failures(good, detect, device, options, images, ref, stats)
        if rows:
            batch = apply_policy(predictions_batch(
                images, rows, outputs, model_name=ref.model_name,
                model_version=ref.model_version, shard=ref.shard,
            ), options.storage)
            pending.append(batch)
            stats.images += len(rows)
            stored = _detection_count(batch)
            stats.detections += stored
            stats.detections_dropped += sum(int(o["boxes"].shape[0]) for o in outputs) - stored
        if progress is not None:
            progress(stats.images + len(stats.error_rows), images.num_rows)
        if sum(b.num_rows for b in pending) >= options.rows_per_group:
            writer.write_table(pa.Table.from_batches(pending, schemas.DETECTIONS),
                               row_group_size=options.row_group_images)
            pending = []
    if pending:
        writer.write_table(pa.Table.from_batches(pending, schemas.DETECTIONS),
                           row_group_size=options.row_group_images)
    stats.seconds = time.perf_counter() - start
    stats.errors = len(stats.error_rows)
    return stats


def _detection_count(batch: pa.RecordBatch) -> int:
    offsets = batch.column("detections").offsets
    return int(offsets[-1].as_py() - offsets[0].as_py())


def _predict_isolating_failures(
    items: Sequence[LoadedImage], detect: Detect, device: torch.device, options: PredictOptions,
    images: pa.Table, ref: ShardRef, stats: ShardStats,
) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    """Predict a batch; if it fails, retry image by image so only the culprit is lost."""
    if not items:
        return [], []
    try:
        return [i.index for i in items], _run(detect, [i.tensor for i in items], device, options)
    except (RuntimeError, ValueError) as exc:
        if len(items) == 1:
            stats.error_rows.append(_error(images, items[0].index, ref, "predict", str(exc)))
            return [], []
    rows: list[int] = []
    outputs: list[dict[str, torch.Tensor]] = []
    for item in items:
        r, o = _predict_isolating_failures([item], detect, device, options, images, ref, stats)
        rows += r
        outputs += o
    return rows, outputs


def _run(
    detect: Detect, tensors: list[torch.Tensor], device: torch.device, options: PredictOptions
) -> list[dict[str, torch.Tensor]]:
    batch = [t.to(device, non_blocking=True).float().div_(255) for t in tensors]
    autocast = device.type == "cuda" and options.mixed_precision
    with torch.inference_mode(), torch.autocast(device.type, enabled=autocast):
        outputs = detect(batch)
    return to_host(outputs)


def to_host(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The batch's outputs on the CPU, floats as float32, with one device-to-host copy per key
    rather than one per image and key: each copy waits for the GPU (8 keys x 64 images = 512
    waits per batch; benchmarks/README.md, "The GPU check")."""
    def host(v: torch.Tensor) -> torch.Tensor:
        return (v.float() if v.is_floating_point() else v).cpu()

    keys = list(outputs[0]) if outputs else []
    on_cpu = all(v.device.type == "cpu" for o in outputs for v in o.values())
    if on_cpu or any(list(o) != keys for o in outputs):
        return [{k: host(v) for k, v in o.items()} for o in outputs]
    return one_copy_per_key(outputs)


def one_copy_per_key(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """``to_host`` for outputs with the same keys: each key's tensors flattened, concatenated
    on the device, copied once and split back into views of their shapes."""
    moved: list[dict[str, torch.Tensor]] = [{} for _ in outputs]
    for key in outputs[0]:
        parts = [o[key].float() if o[key].is_floating_point() else o[key] for o in outputs]
        if len({t.dtype for t in parts}) > 1:
            chunks = [t.cpu() for t in parts]
        else:
            flat = torch.cat([t.reshape(-1) for t in parts]).cpu()
            chunks = [c.view(t.shape) for c, t in zip(flat.split([t.numel() for t in parts]),
                                                      parts, strict=True)]
        for out, chunk in zip(moved, chunks, strict=True):
            out[key] = chunk
    return moved


def _error(images: pa.Table, index: int, ref: ShardRef, stage: str, message: str) -> dict:
    return {
        "image_id": images["image_id"][index].as_py(),
        "uri": images["uri"][index].as_py(),
        "model_name": ref.model_name,
        "model_version": ref.model_version,
        "shard": ref.shard,
        "stage": stage,
        "error": message[:2000],
    }


def errors_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schemas.PREDICTION_ERRORS)
