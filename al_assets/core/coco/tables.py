"""Turn a parsed COCO document into the Arrow tables of :mod:`al_assets.core.schemas`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils

from al_assets.core import schemas
from al_assets.core.coco.parse import ParsedCoco, RecordWarning, Reject
from al_assets.core.errors import stable_text
from al_assets.core.sharding import assign_shards
from al_assets.core.storage.objects import join_uri


@dataclass
class CocoTables:
    categories: pa.Table
    images: pa.Table
    annotations: pa.Table
    rejects: pa.Table
    warnings: list[RecordWarning] = field(default_factory=list)  # of kept records only


def build_tables(
    parsed: ParsedCoco, batch: str, image_root: str, shard_size: int
) -> CocoTables:
    """Arrow tables of one batch; segmentations become RLE, bad ones become rejects."""
    rejects = list(parsed.rejects)
    annotations = _annotations_table(parsed, batch, rejects)
    kept = set(annotations["ann_id"].to_pylist())
    return CocoTables(
        categories=_categories_table(parsed, batch),
        images=_images_table(parsed, batch, image_root, shard_size),
        annotations=annotations,
        rejects=rejects_table(rejects, batch, parsed.source),
        warnings=[w for w in parsed.warnings if w.record_id in kept],
    )


def _categories_table(parsed: ParsedCoco, batch: str) -> pa.Table:
    cats = sorted(parsed.coco.cats.values(), key=lambda c: c["id"])
    return pa.Table.from_pydict(
        {
            "category_id": [c["id"] for c in cats],
            "name": [c["name"] for c in cats],
            "supercategory": [c.get("supercategory") for c in cats],
            "batch": [batch] * len(cats),
        },
        schema=schemas.CATEGORIES,
    )


def _images_table(parsed: ParsedCoco, batch: str, image_root: str, shard_size: int) -> pa.Table:
    images = [parsed.coco.imgs[i] for i in parsed.image_order]
    ids = np.array([img["id"] for img in images], dtype=np.int64)
    return pa.Table.from_pydict(
        {
            "image_id": ids,
            "file_name": [img["file_name"] for img in images],
            "uri": [join_uri(image_root, img["file_name"].replace("\\", "/")) for img in images],
            "width": [int(img["width"]) for img in images],
            "height": [int(img["height"]) for img in images],
            "date_captured": [_text_or_none(img.get("date_captured")) for img in images],
            "batch": [batch] * len(images),
            "shard": assign_shards(ids, batch, shard_size) if len(ids) else [],
        },
        schema=schemas.IMAGES,
    )


def _annotations_table(parsed: ParsedCoco, batch: str, rejects: list[Reject]) -> pa.Table:
    """Column-wise: per-annotation Python work is only the RLE conversion (the costly part)."""
    coco = parsed.coco
    kept: list[dict[str, Any]] = []
    rles: list[dict[str, Any] | None] = []
    for ann in coco.dataset["annotations"]:
        try:
            rles.append(_rle(coco, ann))
        except Exception as exc:  # pycocotools raises bare Exception/TypeError/IndexError
            reason = f"invalid segmentation ({stable_text(exc)})"
            rejects.append(Reject("annotation", ann["id"], reason))
            continue
        kept.append(ann)
    return _annotation_columns(kept, rles, coco.cats, batch)


def _annotation_columns(
    anns: list[dict[str, Any]], rles: list[dict[str, Any] | None],
    cats: dict[int, dict[str, Any]], batch: str,
) -> pa.Table:
    xywh = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
    x, y, w, h = xywh.T
    corners = [pa.array(v, pa.float32()) for v in (x, y, x + w, y + h)]
    labels = [cats[ann["category_id"]] for ann in anns]
    columns = {
        "ann_id": [ann["id"] for ann in anns],
        "image_id": [ann["image_id"] for ann in anns],
        "category_id": [ann["category_id"] for ann in anns],
        "label": [cat["name"] for cat in labels],
        "supercategory": [cat.get("supercategory") for cat in labels],
        "bbox": pa.StructArray.from_arrays(corners, fields=list(schemas.BOX2D)),
        "bbox_xywh": pa.FixedSizeListArray.from_arrays(
            pa.array(xywh.ravel(), pa.float32()), 4),
        "area": [_area(ann, rle, width * height)
                 for ann, rle, width, height in zip(anns, rles, w, h, strict=True)],
        "iscrowd": [bool(ann.get("iscrowd", 0)) for ann in anns],
        "segmentation": [
            {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]} if rle else None
            for rle in rles
        ],
        "batch": [batch] * len(anns),
    }
    return pa.Table.from_pydict(columns, schema=schemas.ANNOTATIONS)


def _area(ann: dict[str, Any], rle: dict[str, Any] | None, box_area: float) -> float:
    """COCO's own area when valid, else the mask's, else the box's."""
    area = ann.get("area")
    if isinstance(area, int | float) and area > 0:
        return float(area)
    return float(mask_utils.area(rle)) if rle else float(box_area)


def _rle(coco: Any, ann: dict[str, Any]) -> dict[str, Any] | None:
    """Compressed RLE with text counts (polygons and uncompressed RLE converted)."""
    if ann.get("segmentation") in (None, [], {}):
        return None
    rle = coco.annToRLE(ann)
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def rejects_table(rejects: list[Reject], batch: str, source: str) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "batch": [batch] * len(rejects),
            "source": [source] * len(rejects),
            "record_type": [r.record_type for r in rejects],
            "record_id": [r.record_id for r in rejects],
            "reason": [r.reason for r in rejects],
        },
        schema=schemas.INGESTION_REJECTS,
    )


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
