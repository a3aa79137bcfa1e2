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
        pa.field("reason", pa.string(), nullable=False),  # names the record and the fix
    ]
)
"""Records left out of a batch, one row each; reasons are stable text (no addresses), so runs
compare. An image id listed more than once rejects every copy and the annotations of that id
(which image they belong to is ambiguous). Records kept but suspicious (an ``area`` over 1.5x its
box) are not rejects: they are counted in the ``annotations`` materialization's ``warnings``
metadata and logged."""

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
        # The detector's own view of the image (extractor.image_embeddings: pooled backbone
        # maps, L2-normalized), for diversity-aware selection; null where a model gave none.
        pa.field("embedding", pa.list_(pa.float32())),
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


# --- uncertainty scoring ---

BOX_SCORES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("det_index", pa.int32(), nullable=False),  # position in the image's detections
        pa.field("box", BOX2D, nullable=False),
        pa.field("label_id", pa.int32(), nullable=False),  # the detector's label and score
        pa.field("score", pa.float32(), nullable=False),
        # True: measures from the full `distribution`; False: from the top-k `scores`
        # (entropy then is a lower bound of the true entropy).
        pa.field("from_distribution", pa.bool_(), nullable=False),
        pa.field("p1", pa.float32(), nullable=False),  # top class probability, renormalized
        pa.field("p2", pa.float32(), nullable=False),  # second one; 0 when k == 1
        pa.field("first_label_id", pa.int32(), nullable=False),  # label_ids[0]
        pa.field("second_label_id", pa.int32()),  # label_ids[1]; null when k == 1
        # Measures (al_assets.core.scoring.measures); all high = uncertain except margin.
        pa.field("least_confidence", pa.float32(), nullable=False),  # 1 - p1
        pa.field("least_confidence_norm", pa.float32(), nullable=False),  # n/(n-1) (1 - p1)
        pa.field("margin", pa.float32(), nullable=False),  # p1 - p2; LOW = uncertain
        pa.field("margin_uncertainty", pa.float32(), nullable=False),  # 1 - (p1 - p2)
        pa.field("ratio", pa.float32(), nullable=False),  # p2 / p1
        pa.field("entropy", pa.float32(), nullable=False),  # nats, in [0, log n]
        pa.field("entropy_norm", pa.float32(), nullable=False),  # entropy / log n
    ]
)
"""One row per detection with its uncertainty measures; float32 like the detector's scores."""

IMAGE_SCORES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("measure", pa.string(), nullable=False),  # a BOX_SCORES measure, or p1/score
        pa.field("agg", pa.string(), nullable=False),  # max | mean | sum | topk_mean
        pa.field("top_k", pa.int32()),  # the k of topk_mean; null for the other aggregations
        # Aggregated uncertainty, higher = more uncertain whatever the measure (margin, p1 and
        # score are turned into 1 - value). Null for an image without detections.
        pa.field("uncertainty", pa.float64()),
        pa.field("n_detections", pa.int32(), nullable=False),
        pa.field("has_detections", pa.bool_(), nullable=False),
        # 1 = most uncertain; ties by image_id; images without detections placed by policy.
        pa.field("rank", pa.int64(), nullable=False),
    ]
)
"""One row per predicted image, sorted by rank: the input of the labeling queue."""


# --- labeling queue ---

LABELING_QUEUE = pa.schema(
    [
        pa.field("queue_rank", pa.int64(), nullable=False),  # 1 = label first
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),  # the IMAGE_SCORES measure
        pa.field("agg", pa.string(), nullable=False),  # the IMAGE_SCORES aggregation
        pa.field("uncertainty", pa.float64()),  # null for an image without detections
        pa.field("n_detections", pa.int32(), nullable=False),
        # Most frequent predicted label (ties: highest detection score, then lowest id);
        # null for an image without detections. The class that max_per_class balances.
        pa.field("top_label_id", pa.int32()),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),  # distinct label ids, ascending
        pa.field("score_rank", pa.int64(), nullable=False),  # IMAGE_SCORES rank; gaps = skipped
        pa.field("reason", pa.string(), nullable=False),  # e.g. "entropy max 0.93 over 4 boxes"
    ]
)
"""The images to label next, in order (al_assets.core.queue.select_queue); exports read it."""


# --- analysis ---

CONFUSED_PAIRS = pa.schema(
    [
        # (label_ids[0], label_ids[1]) of the grouped detections; when `unordered` the pair
        # (a, b) and (b, a) are merged and first_label_id < second_label_id.
        pa.field("first_label_id", pa.int32(), nullable=False),
        pa.field("first_name", pa.string(), nullable=False),
        pa.field("second_label_id", pa.int32(), nullable=False),
        pa.field("second_name", pa.string(), nullable=False),
        pa.field("unordered", pa.bool_(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),  # detections of the pair
        pa.field("n_images", pa.int64(), nullable=False),  # distinct images among them
        pa.field("avg_margin", pa.float64(), nullable=False),
        pa.field("min_margin", pa.float64(), nullable=False),
        pa.field("median_margin", pa.float64(), nullable=False),  # exact, not approximate
    ]
)
"""Confused class pairs, sorted by count desc then avg_margin asc (al_assets.core.analysis)."""

CLASS_FREQUENCY = pa.schema(
    [
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("predicted_count", pa.int64(), nullable=False),  # detections, score >= thresh
        pa.field("predicted_share", pa.float64()),  # of all detections; null when there is none
        # max predicted_count / this class's count; null when this class's count is 0.
        pa.field("predicted_imbalance", pa.float64()),
        pa.field("gt_count", pa.int64()),  # non-crowd annotations; null: no ground truth given
        pa.field("gt_share", pa.float64()),
        pa.field("gt_imbalance", pa.float64()),
    ]
)
"""One row per category (zero counts included), sorted by predicted_count desc."""

DETECTION_MATCHES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("det_index", pa.int32()),  # position in the image's detections; null: missed
        pa.field("ann_id", pa.int64()),  # matched annotation; null: false positive
        pa.field("gt_category_id", pa.int32()),  # null = background (false positive)
        pa.field("pred_category_id", pa.int32()),  # null = missed (false negative)
        pa.field("iou", pa.float64()),  # IoU of the matched pair; null when unmatched
        pa.field("score", pa.float32()),  # detector score; null for a missed annotation
        pa.field("outcome", pa.string(), nullable=False),  # correct|confused|false_positive|missed
    ]
)
"""Class-agnostic greedy matching of detections to ground truth (crowd matches left out)."""

CONFUSION_MATRIX = pa.schema(
    [
        pa.field("gt_category_id", pa.int32()),  # null = background
        pa.field("gt_name", pa.string(), nullable=False),  # "background" for null
        pa.field("pred_category_id", pa.int32()),  # null = background (missed)
        pa.field("pred_name", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),  # > 0: only non-empty cells are rows
    ]
)
"""The confusion matrix in long form, sorted by gt then predicted category id (background last)."""

MODEL_EVALUATION = pa.schema(
    [
        pa.field("category_id", pa.int32()),  # null: the row of all categories
        pa.field("name", pa.string(), nullable=False),  # "all" for the overall row
        pa.field("ap", pa.float64()),  # COCO AP@[.5:.95]; null: no ground truth of the class
        pa.field("ap50", pa.float64()),
        pa.field("ap75", pa.float64()),
        pa.field("num_gt", pa.int64(), nullable=False),  # non-crowd annotations evaluated
    ]
)
"""COCOeval of stored predictions against the ground-truth tables, overall row first."""


# --- the loop: labels back, fixed split, model versions ---

LABELED_IMAGES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),  # the pool's image id
        pa.field("batch", pa.string(), nullable=False),  # label batch = label file stem
        pa.field("source", pa.string(), nullable=False),  # the label file
        pa.field("record_id", pa.string(), nullable=False),  # LS task id or COCO image id there
        pa.field("n_boxes", pa.int32(), nullable=False),  # 0 = labeled as containing nothing
        pa.field("format", pa.string(), nullable=False),  # label_studio | coco
    ]
)
"""One row per image a label file labels (its boxes are ANNOTATIONS rows of the same batch).

ANNOTATIONS alone cannot tell an image labeled empty from an unlabeled one; this table can.
"""

SPLITS = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | heldout
        pa.field("labeled", pa.bool_(), nullable=False),  # has ground truth (ingested or imported)
        pa.field("label_batch", pa.string()),  # batch of its effective labels; null: unlabeled
        pa.field("n_boxes", pa.int32(), nullable=False),  # effective non-crowd boxes
    ]
)
"""Every pool image's split, a pure function of its id (al_assets.core.splits), never moved."""

MODEL_VERSIONS = pa.schema(
    [
        pa.field("evaluated_at", pa.string(), nullable=False),  # ISO 8601 UTC
        pa.field("model_version", pa.string(), nullable=False),  # challenger partition key
        pa.field("champion_version", pa.string()),  # the champion it was compared with
        pa.field("label_batches", pa.list_(pa.string()), nullable=False),  # training lineage
        pa.field("train_images", pa.int64(), nullable=False),
        pa.field("train_boxes", pa.int64(), nullable=False),
        pa.field("heldout_images", pa.int64(), nullable=False),
        pa.field("map", pa.float64()),  # challenger COCO mAP on the held-out split
        pa.field("map_low", pa.float64()),  # bootstrap interval over held-out images
        pa.field("map_high", pa.float64()),
        pa.field("champion_map", pa.float64()),
        pa.field("delta_map", pa.float64()),  # challenger - champion
        pa.field("delta_low", pa.float64()),  # paired bootstrap interval of the delta
        pa.field("delta_high", pa.float64()),
        pa.field("ap50", pa.float64()),
        pa.field("promoted", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # why promoted or kept
    ]
)
"""One row per evaluation-gate decision, oldest first: the loop's history for the report."""

GATE_CLASS_DELTAS = pa.schema(
    [
        pa.field("model_version", pa.string(), nullable=False),  # the challenger
        pa.field("champion_version", pa.string()),
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("champion_ap", pa.float64()),  # COCO AP on the held-out split
        pa.field("challenger_ap", pa.float64()),
        pa.field("delta", pa.float64()),  # challenger - champion; null when either is
    ]
)
"""The last gate decision per class, worst change first: what the last round's labels changed."""
