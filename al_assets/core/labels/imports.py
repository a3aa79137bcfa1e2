"""A labeling tool's export -> a new label batch: ANNOTATIONS, LABELED_IMAGES and rejects.

Two formats are accepted, told apart by the top-level JSON value:

* **Label Studio JSON export** (a list of tasks, each ``{"id", "data", "annotations"}``): a
  task is matched to a pool image by ``data.image_id`` (what ``label_studio_tasks`` exports),
  else by ``data.image``; both present and disagreeing is a reject. The latest non-cancelled
  annotation of a task counts; a task without one stays unlabeled (partial export). Each
  ``rectanglelabels`` result is one box, in percent of the image: pixels = percent / 100 * the
  pool image's size. Rotated boxes, boxes drawn on another image size, unknown labels and other
  result types are rejected. An annotation with an empty result labels the image as empty.
* **COCO instances** (an object with ``images`` and ``categories``) from any tool: the tool's
  ids are not ours, so images are matched by ``coco_url``/``uri`` then ``file_name``, and
  categories by name. Every matched image listed is labeled, one without annotations as empty.
  Segmentations are dropped: a label batch holds boxes.

Image references are matched by the exact uri, the local path of a ``file://`` uri, the
``file_name``, a ``/``-boundary suffix of the uri path (Label Studio's
``/data/local-files/?d=...``) or the ``file_name`` as a suffix (:mod:`.pool`). Boxes are
validated and clipped with ingestion's rules. Problems of the file raise
:class:`LabelImportError`; problems of one record become a reject row and the record is left
out. An image labeled twice keeps the later label (a reject row names the earlier record), and
an image whose every box was rejected stays unlabeled rather than becoming "empty".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from al_assets.core import schemas
from al_assets.core.coco.reader import REQUIRED_KEYS
from al_assets.core.coco.tables import rejects_table
from al_assets.core.labels.coco_labels import parse_coco_labels
from al_assets.core.labels.label_studio import parse_label_studio
from al_assets.core.labels.pool import Pool
from al_assets.core.labels.records import LabeledImage, LabelImportError, ParsedLabels

__all__ = ["LabelBatch", "LabelImportError", "import_labels", "ann_id"]

FORMATS = (
    "a Label Studio JSON export (a list of tasks with 'data' and 'annotations') or a COCO "
    "instances file (an object with 'images', 'annotations' and 'categories')"
)


@dataclass(frozen=True)
class LabelBatch:
    """One label file as tables of the label batch ``batch``."""

    annotations: pa.Table  # schemas.ANNOTATIONS; batch column = the label batch
    labeled_images: pa.Table  # schemas.LABELED_IMAGES, one row per pool image this file labels
    rejects: pa.Table  # schemas.INGESTION_REJECTS
    format: str  # "label_studio" | "coco"


def import_labels(
    data: bytes, source: str, batch: str, images: pa.Table, categories: pa.Table
) -> LabelBatch:
    """Read a label file (``source`` names it in messages) against the pool's tables."""
    document = _decode(data, source)
    pool = Pool(images, categories)
    if isinstance(document, list):
        fmt, parsed = "label_studio", parse_label_studio(document, pool, source)
    elif isinstance(document, dict) and all(key in document for key in REQUIRED_KEYS):
        fmt, parsed = "coco", parse_coco_labels(document, pool, source)
    else:
        raise LabelImportError(f"{source}: {_describe(document)}; expected {FORMATS}")
    _require_usable(parsed, source)
    return LabelBatch(
        annotations=annotations_table(parsed.labeled, batch),
        labeled_images=labeled_images_table(parsed.labeled, batch, source, fmt),
        rejects=rejects_table(parsed.rejects, batch, source),
        format=fmt,
    )


def _decode(data: bytes, source: str) -> Any:
    """JSON with the same messages as COCO ingestion's ``load_json``."""
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise LabelImportError(
            f"{source}: not UTF-8 text ({exc}); label exports are UTF-8 JSON"
        ) from None
    except json.JSONDecodeError as exc:
        raise LabelImportError(
            f"{source}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
            "export the labels again"
        ) from None


def _describe(document: Any) -> str:
    if isinstance(document, dict):
        keys = ", ".join(sorted(map(str, document))[:10]) or "nothing"
        return f"a JSON object with keys {keys}, neither format"
    return f"top level is a JSON {type(document).__name__}"


def _require_usable(parsed: ParsedLabels, source: str) -> None:
    if parsed.labeled:
        return
    reasons = "; ".join(r.reason for r in parsed.rejects[:3]) or "none given"
    raise LabelImportError(
        f"{source}: nothing usable: {parsed.n_records} {parsed.record_name}, first reasons: "
        f"{reasons}\nCheck that the export comes from this pool's labeling queue and is labeled."
    )


# -- tables ----------------------------------------------------------------------------------
def ann_id(batch: str, image_id: int, index: int) -> int:
    """A positive int63 from (batch, image, box index): stable across runs and files."""
    key = f"{batch}\x1f{image_id}\x1f{index}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & (2**63 - 1)
    return value or 1


def annotations_table(labeled: list[LabeledImage], batch: str) -> pa.Table:
    """ANNOTATIONS rows of the label batch, sorted by image_id then ann_id."""
    rows = sorted(
        ((image.image_id, ann_id(batch, image.image_id, k), box)
         for image in labeled for k, box in enumerate(image.boxes)),
        key=lambda row: (row[0], row[1]),
    )
    boxes = [box for _, _, box in rows]
    xywh = np.array([box.xywh for box in boxes], dtype=np.float64).reshape(-1, 4)
    x, y, w, h = xywh.T
    corners = [pa.array(v, pa.float32()) for v in (x, y, x + w, y + h)]
    return pa.Table.from_pydict(
        {
            "ann_id": [row[1] for row in rows],
            "image_id": [row[0] for row in rows],
            "category_id": [box.category_id for box in boxes],
            "label": [box.label for box in boxes],
            "supercategory": [box.supercategory for box in boxes],
            "bbox": pa.StructArray.from_arrays(corners, fields=list(schemas.BOX2D)),
            "bbox_xywh": pa.FixedSizeListArray.from_arrays(
                pa.array(xywh.ravel(), pa.float32()), 4),
            "area": pa.array(w * h, pa.float64()),
            "iscrowd": [box.iscrowd for box in boxes],
            "segmentation": _no_masks(len(boxes)),
            "batch": [batch] * len(boxes),
        },
        schema=schemas.ANNOTATIONS,
    )


def _no_masks(n: int) -> pa.StructArray:
    """Null RLE masks whose children hold placeholders: Parquet refuses nulls under the
    non-nullable ``size``/``counts`` fields even below a null struct."""
    return pa.StructArray.from_arrays(
        [pa.array([[]] * n, pa.list_(pa.int32())), pa.array([""] * n, pa.string())],
        fields=list(schemas.RLE), mask=pa.array([True] * n, pa.bool_()))


def labeled_images_table(
    labeled: list[LabeledImage], batch: str, source: str, fmt: str
) -> pa.Table:
    """LABELED_IMAGES: every image the file labels, empty ones included, by image_id."""
    ordered = sorted(labeled, key=lambda image: image.image_id)
    return pa.Table.from_pydict(
        {
            "image_id": [image.image_id for image in ordered],
            "batch": [batch] * len(ordered),
            "source": [source] * len(ordered),
            "record_id": [image.record_id for image in ordered],
            "n_boxes": [len(image.boxes) for image in ordered],
            "format": [fmt] * len(ordered),
        },
        schema=schemas.LABELED_IMAGES,
    )
