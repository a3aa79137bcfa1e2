"""Invariants of a predictions partition, checked after it is written (asset checks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict


def schema_matches(table: pa.Table, expected: pa.Schema = schemas.DETECTIONS) -> CheckOutcome:
    ok = table.schema.equals(expected)
    diff = [] if ok else sorted(set(map(str, expected)) ^ set(map(str, table.schema)))
    return CheckOutcome(ok, "written file has the documented schema" if ok else
                        f"schema differs: {diff[:6]}", {"differences": len(diff)})


def distributions_sum_to_one(table: pa.Table, tolerance: float = 1e-3) -> CheckOutcome:
    """Every stored distribution (and top-k when complete) sums to 1 within ``tolerance``."""
    flat = pc.list_flatten(table["detections"])
    dist = pc.struct_field(flat, "distribution")
    dist = dist.filter(pc.is_valid(dist)) if len(dist) else dist
    if len(dist) == 0:
        return CheckOutcome(True, "no stored distributions to check", {"checked": 0})
    lengths = pc.list_value_length(dist).to_numpy()
    values = pc.list_flatten(dist).to_numpy(zero_copy_only=False).astype(np.float64)
    sums = np.add.reduceat(values, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    worst = float(np.max(np.abs(sums - 1.0)))
    bad = int(np.sum(np.abs(sums - 1.0) > tolerance))
    return CheckOutcome(bad == 0, f"{bad} of {len(sums)} distributions off 1 by > {tolerance}",
                        {"checked": len(sums), "bad": bad, "worst_deviation": worst})


def no_duplicate_detections(table: pa.Table) -> CheckOutcome:
    """An image appears once, and no image holds the same box with the same label twice."""
    ids = table["image_id"].to_numpy()
    repeated_images = int(len(ids) - len(np.unique(ids)))
    parents = pc.list_parent_indices(table["detections"]).to_numpy()
    flat = pc.list_flatten(table["detections"])
    box = pc.struct_field(flat, "box")
    keys = pa.table({
        "image": ids[parents] if len(parents) else np.zeros(0, np.int64),
        "label": pc.struct_field(flat, "label_id"),
        **{c: pc.struct_field(box, c) for c in ("xmin", "ymin", "xmax", "ymax")},
    })
    distinct = keys.group_by(keys.column_names).aggregate([]).num_rows if keys.num_rows else 0
    repeated_boxes = keys.num_rows - distinct
    ok = repeated_images == 0 and repeated_boxes == 0
    return CheckOutcome(ok, f"{repeated_images} repeated images, {repeated_boxes} repeated "
                        "detections", {"repeated_images": repeated_images,
                                       "repeated_detections": repeated_boxes})


def every_image_accounted_for(
    shard_image_ids: pa.Array, predictions: pa.Table, errors: pa.Table
) -> CheckOutcome:
    """Each image of the shard has a prediction row or an error row, never neither."""
    expected = set(shard_image_ids.to_pylist())
    seen = set(predictions["image_id"].to_pylist()) | set(errors["image_id"].to_pylist())
    missing = sorted(expected - seen)
    return CheckOutcome(not missing, f"{len(missing)} images without prediction or error row",
                        {"missing": len(missing), "first_missing": str(missing[:10])})
