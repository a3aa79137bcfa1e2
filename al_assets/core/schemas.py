"""Arrow schemas of every table al_assets writes.

One module holds them all so that producers and consumers agree by construction, and the
README's schema section can be checked against the code. Boxes are always absolute pixel
coordinates of the original image, ``xmin <= xmax``, ``ymin <= ymax`` (the notebook's ``box2d``).
Category ids are the dataset's own (COCO ids, gaps allowed), never a model's contiguous index.

Each column's description is Arrow field metadata (``description``), not a comment: Parquet
keeps it with the data, and the Dagster UI shows it (``dagster/column_schema``).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

DESCRIPTION = b"description"


def _f(name: str, type_: pa.DataType, doc: str, *, nullable: bool = True) -> pa.Field:
    """A field that carries its description, so the documentation travels with the data."""
    return pa.field(name, type_, nullable=nullable, metadata={DESCRIPTION: doc})


def description(field: pa.Field) -> str | None:
    """The ``description`` metadata of a field; None for an undocumented one."""
    text = (field.metadata or {}).get(DESCRIPTION)
    return text.decode("utf-8") if text else None


BOX2D = pa.struct(
    [
        _f("xmin", pa.float32(), "left edge, pixels", nullable=False),
        _f("ymin", pa.float32(), "top edge, pixels", nullable=False),
        _f("xmax", pa.float32(), "right edge, pixels (>= xmin)", nullable=False),
        _f("ymax", pa.float32(), "bottom edge, pixels (>= ymin)", nullable=False),
    ]
)
"""Axis-aligned box in pixels, like the notebook's ``box2d``."""

RLE = pa.struct(
    [
        _f("size", pa.list_(pa.int32()), "[height, width] of the mask", nullable=False),
        _f("counts", pa.string(), "compressed COCO RLE string", nullable=False),
    ]
)
"""A COCO run-length-encoded mask (pycocotools ``frPyObjects``/``merge`` output, counts as text)."""

CATEGORIES = pa.schema(
    [
        _f("category_id", pa.int32(), "the dataset's category id (COCO id)", nullable=False),
        _f("name", pa.string(), "category name", nullable=False),
        _f("supercategory", pa.string(), "COCO supercategory; null when absent"),
        _f("batch", pa.string(), "ingest batch = annotation file stem", nullable=False),
    ]
)

IMAGES = pa.schema(
    [
        _f("image_id", pa.int64(), "the dataset's image id", nullable=False),
        _f("file_name", pa.string(), "COCO file_name, relative to the images folder",
           nullable=False),
        _f("uri", pa.string(), "file:// path or s3:// key of the image, never copied",
           nullable=False),
        _f("width", pa.int32(), "pixels", nullable=False),
        _f("height", pa.int32(), "pixels", nullable=False),
        _f("date_captured", pa.string(), "as given in the annotation file; null when absent"),
        _f("batch", pa.string(), "ingest batch = annotation file stem", nullable=False),
        _f("shard", pa.string(), "stable prediction shard key", nullable=False),
    ]
)

ANNOTATIONS = pa.schema(
    [
        _f("ann_id", pa.int64(), "annotation id in its file", nullable=False),
        _f("image_id", pa.int64(), "the annotated image", nullable=False),
        _f("category_id", pa.int32(), "the dataset's category id", nullable=False),
        _f("label", pa.string(), "category name", nullable=False),
        _f("supercategory", pa.string(), "COCO supercategory; null when absent"),
        _f("bbox", BOX2D, "box in pixels, corners", nullable=False),
        _f("bbox_xywh", pa.list_(pa.float32(), 4), "COCO [x, y, w, h]", nullable=False),
        _f("area", pa.float64(), "COCO area (of the mask when there is one)", nullable=False),
        _f("iscrowd", pa.bool_(), "COCO crowd region (left out of matching and counts)",
           nullable=False),
        _f("segmentation", RLE, "mask; polygons are converted to RLE; null when absent"),
        _f("batch", pa.string(), "ingest or label batch", nullable=False),
    ]
)

INGESTION_REJECTS = pa.schema(
    [
        _f("batch", pa.string(), "the batch the record was left out of", nullable=False),
        _f("source", pa.string(), "file or object the record came from", nullable=False),
        _f("record_type", pa.string(), "image | annotation | category", nullable=False),
        _f("record_id", pa.int64(), "the record's id; null when it has none"),
        _f("reason", pa.string(), "names the record and the fix (stable text)", nullable=False),
    ]
)
"""Records left out of a batch, one row each; reasons are stable text (no addresses), so runs
compare. An image id listed more than once rejects every copy and the annotations of that id
(which image they belong to is ambiguous). Records kept but suspicious (an ``area`` over 1.5x its
box) are not rejects: they are counted in the ``annotations`` materialization's ``warnings``
metadata and logged."""

DETECTION = pa.struct(
    [
        _f("box", BOX2D, "box in pixels", nullable=False),
        _f("score", pa.float32(),
           "the detector's own score for label_id (torchvision's softmax incl. background)",
           nullable=False),
        _f("label_id", pa.int32(), "the detector's label (a category id)", nullable=False),
        _f("label_ids", pa.list_(pa.int32()),
           "top-k of the foreground distribution, descending", nullable=False),
        _f("scores", pa.list_(pa.float32()),
           "their probabilities (background dropped, renormalized)", nullable=False),
        _f("distribution", pa.list_(pa.float32()),
           "full foreground distribution in the model's category order; stored by default, "
           "null with store_distribution: false (entropy then uses the top-k)"),
    ]
)
"""One detection with its class distribution: the notebook's class-scores variant."""

DETECTIONS = pa.schema(
    [
        _f("image_id", pa.int64(), "the pool's image id", nullable=False),
        _f("uri", pa.string(), "the image read", nullable=False),
        _f("width", pa.int32(), "pixels", nullable=False),
        _f("height", pa.int32(), "pixels", nullable=False),
        _f("model_name", pa.string(), "registered model name", nullable=False),
        _f("model_version", pa.int32(), "registered model version", nullable=False),
        _f("shard", pa.string(), "prediction shard key", nullable=False),
        _f("detections", pa.list_(DETECTION),
           "one row per image; an image with no detection has an empty list", nullable=False),
        _f("embedding", pa.list_(pa.float32()),
           "pooled, L2-normalized backbone features for diversity-aware selection; "
           "null where a model gave none"),
    ]
)

PREDICTIONS = DETECTIONS
"""Deprecated alias of DETECTIONS (the schema's name until 2026-12-03, when it took the name of
the asset it describes, as every other schema here does); to be removed in a later release."""

PREDICTION_ERRORS = pa.schema(
    [
        _f("image_id", pa.int64(), "the image that failed", nullable=False),
        _f("uri", pa.string(), "its location", nullable=False),
        _f("model_name", pa.string(), "registered model name", nullable=False),
        _f("model_version", pa.int32(), "registered model version", nullable=False),
        _f("shard", pa.string(), "prediction shard key", nullable=False),
        _f("stage", pa.string(), "read | decode | predict", nullable=False),
        _f("error", pa.string(), "what went wrong (stable text)", nullable=False),
    ]
)


# --- uncertainty scoring ---

BOX_SCORES = pa.schema(
    [
        _f("image_id", pa.int64(), "the pool's image id", nullable=False),
        _f("uri", pa.string(), "the image", nullable=False),
        _f("model_name", pa.string(), "registered model name", nullable=False),
        _f("model_version", pa.int32(), "registered model version", nullable=False),
        _f("shard", pa.string(), "prediction shard key", nullable=False),
        _f("det_index", pa.int32(), "position in the image's detections", nullable=False),
        _f("box", BOX2D, "box in pixels", nullable=False),
        _f("label_id", pa.int32(), "the detector's label", nullable=False),
        _f("score", pa.float32(), "the detector's score", nullable=False),
        _f("from_distribution", pa.bool_(),
           "true: measures from the full distribution; false: from the top-k scores "
           "(entropy then is a lower bound)", nullable=False),
        _f("p1", pa.float32(), "top class probability, renormalized", nullable=False),
        _f("p2", pa.float32(), "second class probability; 0 when k == 1", nullable=False),
        _f("first_label_id", pa.int32(), "label_ids[0]: the most likely class", nullable=False),
        _f("second_label_id", pa.int32(), "label_ids[1]; null when k == 1"),
        _f("least_confidence", pa.float32(), "1 - p1 (high = uncertain)", nullable=False),
        _f("least_confidence_norm", pa.float32(), "n/(n-1) (1 - p1), in [0, 1]",
           nullable=False),
        _f("margin", pa.float32(), "p1 - p2; LOW = uncertain", nullable=False),
        _f("margin_uncertainty", pa.float32(), "1 - (p1 - p2) (high = uncertain)",
           nullable=False),
        _f("ratio", pa.float32(), "p2 / p1 (high = uncertain)", nullable=False),
        _f("entropy", pa.float32(), "nats, in [0, log n] (high = uncertain)", nullable=False),
        _f("entropy_norm", pa.float32(), "entropy / log n, in [0, 1]", nullable=False),
    ]
)
"""One row per detection with its uncertainty measures; float32 like the detector's scores."""

IMAGE_SCORES = pa.schema(
    [
        _f("image_id", pa.int64(), "the pool's image id", nullable=False),
        _f("uri", pa.string(), "the image", nullable=False),
        _f("measure", pa.string(), "a box_scores measure, or p1/score", nullable=False),
        _f("agg", pa.string(), "max | mean | sum | topk_mean", nullable=False),
        _f("top_k", pa.int32(), "the k of topk_mean; null for the other aggregations"),
        _f("uncertainty", pa.float64(),
           "aggregated uncertainty, higher = more uncertain whatever the measure; null for "
           "an image without detections"),
        _f("n_detections", pa.int32(), "detections aggregated", nullable=False),
        _f("has_detections", pa.bool_(), "false: nothing detected", nullable=False),
        _f("rank", pa.int64(),
           "1 = most uncertain; ties by image_id; images without detections placed by policy",
           nullable=False),
    ]
)
"""One row per predicted image, sorted by rank: the input of the labeling queue."""


# --- labeling queue ---

LABELING_QUEUE = pa.schema(
    [
        _f("queue_rank", pa.int64(), "1 = label first", nullable=False),
        _f("image_id", pa.int64(), "the pool's image id", nullable=False),
        _f("uri", pa.string(), "the image", nullable=False),
        _f("strategy", pa.string(), "the image_scores measure", nullable=False),
        _f("agg", pa.string(), "the image_scores aggregation", nullable=False),
        _f("uncertainty", pa.float64(), "higher = more uncertain; null without detections"),
        _f("n_detections", pa.int32(), "confident detections", nullable=False),
        _f("top_label_id", pa.int32(),
           "most frequent predicted label (ties: highest score, then lowest id), the class "
           "max_per_class balances; null without detections"),
        _f("labels", pa.list_(pa.int32()), "distinct predicted label ids, ascending",
           nullable=False),
        _f("score_rank", pa.int64(), "image_scores rank; gaps = skipped images",
           nullable=False),
        _f("reason", pa.string(), "why it was picked, e.g. 'entropy max 0.93 over 4 boxes'",
           nullable=False),
    ]
)
"""The images to label next, in order (al_assets.core.queue.select_queue); exports read it."""


# --- analysis ---

CONFUSED_PAIRS = pa.schema(
    [
        _f("first_label_id", pa.int32(),
           "label_ids[0] of the grouped detections (the smaller id when unordered)",
           nullable=False),
        _f("first_name", pa.string(), "its category name", nullable=False),
        _f("second_label_id", pa.int32(), "label_ids[1] (the larger id when unordered)",
           nullable=False),
        _f("second_name", pa.string(), "its category name", nullable=False),
        _f("unordered", pa.bool_(), "true: (a, b) and (b, a) merged", nullable=False),
        _f("count", pa.int64(), "detections of the pair", nullable=False),
        _f("n_images", pa.int64(), "distinct images among them", nullable=False),
        _f("avg_margin", pa.float64(), "mean p1 - p2", nullable=False),
        _f("min_margin", pa.float64(), "smallest p1 - p2", nullable=False),
        _f("median_margin", pa.float64(), "median p1 - p2, exact", nullable=False),
    ]
)
"""Confused class pairs, sorted by count desc then avg_margin asc (al_assets.core.analysis)."""

CLASS_FREQUENCY = pa.schema(
    [
        _f("category_id", pa.int32(), "the dataset's category id", nullable=False),
        _f("name", pa.string(), "category name", nullable=False),
        _f("predicted_count", pa.int64(), "detections at or above the score threshold",
           nullable=False),
        _f("predicted_share", pa.float64(), "of all detections; null when there is none"),
        _f("predicted_imbalance", pa.float64(),
           "max predicted_count / this class's count; null when this class's count is 0"),
        _f("gt_count", pa.int64(), "non-crowd annotations; null: no ground truth given"),
        _f("gt_share", pa.float64(), "of all annotations"),
        _f("gt_imbalance", pa.float64(), "max gt_count / this class's gt_count"),
    ]
)
"""One row per category (zero counts included), sorted by predicted_count desc."""

DETECTION_MATCHES = pa.schema(
    [
        _f("image_id", pa.int64(), "the pool's image id", nullable=False),
        _f("det_index", pa.int32(), "position in the image's detections; null: missed"),
        _f("ann_id", pa.int64(), "matched annotation; null: false positive"),
        _f("gt_category_id", pa.int32(), "ground-truth class; null = background"),
        _f("pred_category_id", pa.int32(), "predicted class; null = missed"),
        _f("iou", pa.float64(), "IoU of the matched pair; null when unmatched"),
        _f("score", pa.float32(), "detector score; null for a missed annotation"),
        _f("outcome", pa.string(), "correct | confused | false_positive | missed",
           nullable=False),
    ]
)
"""Class-agnostic greedy matching of detections to ground truth (crowd matches left out)."""

CONFUSION_MATRIX = pa.schema(
    [
        _f("gt_category_id", pa.int32(), "ground-truth class; null = background"),
        _f("gt_name", pa.string(), "its name; 'background' for null", nullable=False),
        _f("pred_category_id", pa.int32(), "predicted class; null = background (missed)"),
        _f("pred_name", pa.string(), "its name; 'background' for null", nullable=False),
        _f("count", pa.int64(), "matched boxes (> 0: only non-empty cells are rows)",
           nullable=False),
    ]
)
"""The confusion matrix in long form, sorted by gt then predicted category id (background last)."""

MODEL_EVALUATION = pa.schema(
    [
        _f("category_id", pa.int32(), "the class; null: the row of all categories"),
        _f("name", pa.string(), "category name; 'all' for the overall row", nullable=False),
        _f("ap", pa.float64(), "COCO AP@[.5:.95]; null: no ground truth of the class"),
        _f("ap50", pa.float64(), "COCO AP at IoU 0.5"),
        _f("ap75", pa.float64(), "COCO AP at IoU 0.75"),
        _f("num_gt", pa.int64(), "non-crowd annotations evaluated", nullable=False),
        _f("model_version", pa.string(), "the evaluated model version (partition key)",
           nullable=False),
    ]
)
"""COCOeval of stored predictions against the ground-truth tables: per model version, overall
row first (al_assets.core.analysis.evaluation.version_comparison puts versions side by side)."""


# --- the loop: labels back, fixed split, model versions ---

LABELED_IMAGES = pa.schema(
    [
        _f("image_id", pa.int64(), "the pool's image id", nullable=False),
        _f("batch", pa.string(), "label batch = label file stem", nullable=False),
        _f("source", pa.string(), "the label file", nullable=False),
        _f("record_id", pa.string(), "Label Studio task id or COCO image id in that file",
           nullable=False),
        _f("n_boxes", pa.int32(), "boxes labeled; 0 = labeled as containing nothing",
           nullable=False),
        _f("format", pa.string(), "label_studio | coco", nullable=False),
    ]
)
"""One row per image a label file labels (its boxes are ANNOTATIONS rows of the same batch).

ANNOTATIONS alone cannot tell an image labeled empty from an unlabeled one; this table can.
"""

SPLITS = pa.schema(
    [
        _f("image_id", pa.int64(), "the pool's image id", nullable=False),
        _f("split", pa.string(), "train | heldout", nullable=False),
        _f("labeled", pa.bool_(), "has ground truth (ingested or imported)", nullable=False),
        _f("label_batch", pa.string(), "batch of its effective labels; null: unlabeled"),
        _f("n_boxes", pa.int32(), "effective non-crowd boxes", nullable=False),
    ]
)
"""Every pool image's split, a pure function of its id (al_assets.core.splits), never moved."""

MODEL_VERSIONS = pa.schema(
    [
        _f("evaluated_at", pa.string(), "ISO 8601 UTC", nullable=False),
        _f("model_version", pa.string(), "challenger partition key", nullable=False),
        _f("champion_version", pa.string(), "the champion it was compared with; null: none"),
        _f("label_batches", pa.list_(pa.string()), "training lineage: label batches used",
           nullable=False),
        _f("train_images", pa.int64(), "training images", nullable=False),
        _f("train_boxes", pa.int64(), "training boxes", nullable=False),
        _f("heldout_images", pa.int64(), "labeled held-out images evaluated", nullable=False),
        _f("map", pa.float64(), "challenger COCO mAP on the held-out split"),
        _f("map_low", pa.float64(), "bootstrap interval over held-out images, low end"),
        _f("map_high", pa.float64(), "bootstrap interval, high end"),
        _f("champion_map", pa.float64(), "champion COCO mAP on the same images"),
        _f("delta_map", pa.float64(), "challenger - champion"),
        _f("delta_low", pa.float64(), "paired bootstrap interval of the delta, low end"),
        _f("delta_high", pa.float64(), "paired bootstrap interval of the delta, high end"),
        _f("ap50", pa.float64(), "challenger COCO AP at IoU 0.5"),
        _f("promoted", pa.bool_(), "the challenger became champion", nullable=False),
        _f("reason", pa.string(), "why promoted or kept", nullable=False),
    ]
)
"""One row per evaluation-gate decision, oldest first: the loop's history for the report."""

GATE_CLASS_DELTAS = pa.schema(
    [
        _f("model_version", pa.string(), "the challenger", nullable=False),
        _f("champion_version", pa.string(), "the champion; null: none"),
        _f("category_id", pa.int32(), "the class", nullable=False),
        _f("name", pa.string(), "category name", nullable=False),
        _f("champion_ap", pa.float64(), "champion COCO AP on the held-out split"),
        _f("challenger_ap", pa.float64(), "challenger COCO AP on the held-out split"),
        _f("delta", pa.float64(), "challenger - champion; null when either is"),
    ]
)
"""The last gate decision per class, worst change first: what the last round's labels changed."""


def require_columns(table: pa.Table, names: Iterable[str], what: str, schema: str) -> None:
    """Fail early, naming the table and the schema it should follow, instead of a KeyError
    deep inside a core function."""
    missing = [name for name in names if name not in table.schema.names]
    if missing:
        raise ValueError(f"{what} has no column(s) {missing}; expected the {schema} schema "
                         "(al_assets.core.schemas)")
