"""Arrow tables back to a COCO instances document (round trips, subsets, exports)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def tables_to_coco(
    categories: pa.Table, images: pa.Table, annotations: pa.Table,
    *, info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A COCO dict that pycocotools loads; masks are written as compressed RLE."""
    return {
        "info": info or {"description": "exported by al_assets"},
        "licenses": [],
        "categories": [
            {"id": c["category_id"], "name": c["name"], "supercategory": c["supercategory"]}
            for c in categories.to_pylist()
        ],
        "images": [
            {
                "id": i["image_id"], "file_name": i["file_name"], "width": i["width"],
                "height": i["height"], "date_captured": i["date_captured"], "coco_url": i["uri"],
            }
            for i in images.to_pylist()
        ],
        "annotations": [_annotation(a) for a in annotations.to_pylist()],
    }


def _annotation(row: dict[str, Any]) -> dict[str, Any]:
    record = {
        "id": row["ann_id"],
        "image_id": row["image_id"],
        "category_id": row["category_id"],
        "bbox": [float(v) for v in row["bbox_xywh"]],
        "area": row["area"],
        "iscrowd": int(row["iscrowd"]),
    }
    if row.get("segmentation"):
        record["segmentation"] = dict(row["segmentation"])
    return record
