"""Turn a parsed COCO document into the Arrow tables of :mod:`al_assets.core.schemas`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils

from al_assets.core import schemas
from al_assets.core.coco.parse import ParsedCoco, Reject
from al_assets.core.sharding import assign_shards
from al_assets.core.storage.objects import join_uri


@dataclass
class CocoTables:
    categories: pa.Table
    images: pa.Table
    annotations: pa.Table
    rejects: pa.Table


def build_tables(
    parsed: ParsedCoco, batch: str, image_root: str, shard_size: int
) -> CocoTables:
    """Arrow tables of one batch; segmentations become RLE, bad ones become rejects."""
    rejects = list(parsed.rejects)
    annotations = _annotations_table(parsed, batch, rejects)
    return CocoTables(
        categories=_categories_table(parsed, batch),
        images=_images_table(parsed, batch, image_root, shard_size),
        annotations=annotations,
        rejects=rejects_table(rejects, batch, parsed.source),
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
    coco = parsed.coco
    rows: dict[str, list[Any]] = {name: [] for name in schemas.ANNOTATIONS.names}
    for ann in coco.dataset["annotations"]:
        try:
            rle = _rle(coco, ann)
        except Exception as exc:  # pycocotools raises bare Exception/TypeError/IndexError
            rejects.append(Reject("annotation", ann["id"], f"invalid segmentation ({exc})"))
            continue
        _append_annotation(rows, ann, coco.cats[ann["category_id"]], rle, batch)
    return pa.Table.from_pydict(rows, schema=schemas.ANNOTATIONS)


def _append_annotation(
    rows: dict[str, list[Any]], ann: dict[str, Any], cat: dict[str, Any],
    rle: dict[str, Any] | None, batch: str,
) -> None:
    x, y, w, h = (float(v) for v in ann["bbox"])
    area = ann.get("area")
    if not isinstance(area, int | float) or area <= 0:
        area = float(mask_utils.area(rle)) if rle else w * h
    rows["ann_id"].append(ann["id"])
    rows["image_id"].append(ann["image_id"])
    rows["category_id"].append(ann["category_id"])
    rows["label"].append(cat["name"])
    rows["supercategory"].append(cat.get("supercategory"))
    rows["bbox"].append({"xmin": x, "ymin": y, "xmax": x + w, "ymax": y + h})
    rows["bbox_xywh"].append([x, y, w, h])
    rows["area"].append(float(area))
    rows["iscrowd"].append(bool(ann.get("iscrowd", 0)))
    rows["segmentation"].append(
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]} if rle else None
    )
    rows["batch"].append(batch)


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
