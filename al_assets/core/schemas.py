"""Arrow schemas of every table al_assets writes.

One module holds them all so that producers and consumers agree by construction, and the
README's schema section can be checked against the code. Boxes are always absolute pixel
coordinates of the original image, ``xmin <= xmax``, ``ymin <= ymax`` (the notebook's ``box2d``).
Category ids are the dataset's own (COCO ids, gaps allowed), never a model's contiguous index.
"""

from __future__ import annotations

import pyarrow as pa

BOX2D = pa.struct(
    [
        pa.field("xmin", pa.float32(), nullable=False),
        pa.field("ymin", pa.float32(), nullable=False),
        pa.field("xmax", pa.float32(), nullable=False),
        pa.field("ymax", pa.float32(), nullable=False),
    ]
)
"""Axis-aligned box in pixels, like the notebook's ``box2d``."""

RLE = pa.struct(
    [
        pa.field("size", pa.list_(pa.int32()), nullable=False),  # [height, width]
        pa.field("counts", pa.string(), nullable=False),  # compressed COCO RLE string
    ]
)
"""A COCO run-length-encoded mask (pycocotools ``frPyObjects``/``merge`` output, counts as text)."""

CATEGORIES = pa.schema(
    [
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("supercategory", pa.string()),
        pa.field("batch", pa.string(), nullable=False),
    ]
)

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("file_name", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),  # file:// path or s3:// key, never copied
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("date_captured", pa.string()),
        pa.field("batch", pa.string(), nullable=False),  # ingest batch = annotation file stem
        pa.field("shard", pa.string(), nullable=False),  # stable prediction shard key
    ]
)

ANNOTATIONS = pa.schema(
    [
        pa.field("ann_id", pa.int64(), nullable=False),
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("supercategory", pa.string()),
        pa.field("bbox", BOX2D, nullable=False),
        pa.field("bbox_xywh", pa.list_(pa.float32(), 4), nullable=False),  # COCO [x, y, w, h]
        pa.field("area", pa.float64(), nullable=False),
        pa.field("iscrowd", pa.bool_(), nullable=False),
        pa.field("segmentation", RLE),  # polygons are converted to RLE; null when absent
        pa.field("batch", pa.string(), nullable=False),
    ]
)

INGESTION_REJECTS = pa.schema(
    [
        pa.field("batch", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # file or object the record came from
        pa.field("record_type", pa.string(), nullable=False),  # image | annotation | category
        pa.field("record_id", pa.int64()),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

DETECTION = pa.struct(
    [
        pa.field("box", BOX2D, nullable=False),
        # The detector's own score for label_id (torchvision's softmax incl. background).
        pa.field("score", pa.float32(), nullable=False),
        pa.field("label_id", pa.int32(), nullable=False),
        # Top-k of the foreground distribution (background dropped, renormalized), descending.
        pa.field("label_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
        # Full foreground distribution in the model's category order; null unless configured.
        pa.field("distribution", pa.list_(pa.float32())),
    ]
)
"""One detection with its class distribution: the notebook's class-scores variant."""

PREDICTIONS = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        # One row per image; an image with no detection has an empty list (never a missing row).
        pa.field("detections", pa.list_(DETECTION), nullable=False),
    ]
)

PREDICTION_ERRORS = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # read | decode | predict
        pa.field("error", pa.string(), nullable=False),
    ]
)
