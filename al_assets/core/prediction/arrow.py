"""Detector outputs -> the DETECTIONS table, column-wise (no Python loop over boxes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from al_assets.core import schemas


def detections_array(outputs: Sequence[dict[str, torch.Tensor]]) -> pa.ListArray:
    """``list<DETECTION>`` with one list per image, built from concatenated tensors."""
    counts = [int(o["boxes"].shape[0]) for o in outputs]
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    cat = {key: _cat(outputs, key) for key in ("boxes", "scores", "labels", "topk_labels", "topk_scores")}
    boxes = cat["boxes"].astype(np.float32).reshape(-1, 4)
    box = pa.StructArray.from_arrays(
        [pa.array(boxes[:, i]) for i in range(4)], fields=list(schemas.BOX2D)
    )
    fields = [
        box,
        pa.array(cat["scores"].astype(np.float32)),
        pa.array(cat["labels"].astype(np.int32)),
        _fixed_lists(cat["topk_labels"].astype(np.int32)),
        _fixed_lists(cat["topk_scores"].astype(np.float32)),
        _distribution(outputs),
    ]
    struct = pa.StructArray.from_arrays(fields, fields=list(schemas.DETECTION))
    return pa.ListArray.from_arrays(offsets, struct, type=pa.list_(schemas.DETECTION))


def embeddings_array(outputs: Sequence[dict[str, torch.Tensor]]) -> pa.ListArray:
    """One ``embedding`` list per image (null for outputs without one)."""
    if not outputs or any("embedding" not in o for o in outputs):
        return pa.nulls(len(outputs), type=pa.list_(pa.float32()))
    return _fixed_lists(np.stack([o["embedding"].detach().float().cpu().numpy()
                                  for o in outputs]).astype(np.float32))


def _cat(outputs: Sequence[dict[str, torch.Tensor]], key: str) -> np.ndarray:
    parts = [o[key].detach().float().cpu().numpy() if o[key].is_floating_point()
             else o[key].detach().cpu().numpy() for o in outputs]
    return np.concatenate(parts) if parts else np.zeros((0,))


def _fixed_lists(values: np.ndarray) -> pa.ListArray:
    """Rows of a 2-D array as Arrow lists (all the same length)."""
    rows, width = values.shape if values.ndim == 2 else (0, 0)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))


def _distribution(outputs: Sequence[dict[str, torch.Tensor]]) -> pa.Array:
    n = sum(int(o["boxes"].shape[0]) for o in outputs)
    if not outputs or "distribution" not in outputs[0]:
        return pa.nulls(n, type=pa.list_(pa.float32()))
    return _fixed_lists(_cat(outputs, "distribution").astype(np.float32))


def predictions_batch(
    images: pa.Table,
    rows: Sequence[int],
    outputs: Sequence[dict[str, torch.Tensor]],
    *,
    model_name: str,
    model_version: int,
    shard: str,
) -> pa.RecordBatch:
    """One DETECTIONS record batch for the image rows ``rows`` and their outputs."""
    picked = images.take(pa.array(rows, type=pa.int64()))
    n = len(rows)
    return pa.RecordBatch.from_arrays(
        [
            picked["image_id"].combine_chunks(),
            picked["uri"].combine_chunks(),
            picked["width"].combine_chunks(),
            picked["height"].combine_chunks(),
            pa.array([model_name] * n, pa.string()),
            pa.array([model_version] * n, pa.int32()),
            pa.array([shard] * n, pa.string()),
            detections_array(outputs),
            embeddings_array(outputs),
        ],
        schema=schemas.DETECTIONS,
    )


def confident_detections(predictions: pa.Table, min_score: float) -> pa.Table:
    """DETECTIONS with each image's detections below ``min_score`` removed (rows all kept).

    Column-wise: the flattened detections are filtered once and the lists rebuilt from the
    surviving counts per image, so the cost does not depend on Python loops over boxes.
    """
    if min_score <= 0 or predictions.num_rows == 0:
        return predictions
    lists = predictions.column("detections").combine_chunks()
    flat = pc.list_flatten(lists)
    keep = pc.greater_equal(pc.struct_field(flat, "score"), pa.scalar(min_score, pa.float32()))
    parents = pc.list_parent_indices(lists).to_numpy()
    counts = np.bincount(parents[keep.to_numpy(zero_copy_only=False)],
                         minlength=predictions.num_rows)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    kept = pa.ListArray.from_arrays(offsets, flat.filter(keep), type=lists.type)
    index = predictions.schema.get_field_index("detections")
    return predictions.set_column(index, predictions.schema.field(index), kept)
