"""Validate a COCO instances document record by record, keeping what is usable.

A real annotation file has a few bad records among thousands; rejecting the whole file would
stop a pool's ingestion for one typo. So structural problems of the *file* raise
:class:`CocoFormatError`, while problems of single *records* become :class:`Reject` rows (what,
which id, why) and the record is left out. An id shared by several images rejects all of them
and their annotations: which image the annotations belong to cannot be known. Records that are
usable but look wrong (an ``area`` far larger than the box) are kept and reported as
:class:`RecordWarning`.

Kept records are the decoded ones, never copied: a batch of 200k images is ~2 GB of Python
objects, and one copy more is what put ingestion at 2x pycocotools' memory. A plainly valid
annotation (the common case) is recognised by a quick test; anything else goes through the
checks that name the problem, so both paths accept exactly the same records.
"""

from __future__ import annotations

import math
from array import array
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from al_assets.core.errors import CocoFormatError

AREA_TOLERANCE = 1.5  # COCO's area is the segmentation's, so at most the box's (+ tool slack)
_PLAIN_NUMBERS = frozenset({int, float})  # bool is neither (its type is bool)
_INF = math.inf
_INT64 = np.iinfo(np.int64)
Ids = Iterable[int] | np.ndarray | pa.Array | pa.ChunkedArray


@dataclass(frozen=True)
class Reject:
    record_type: str  # category | image | annotation
    record_id: int | None
    reason: str


@dataclass(frozen=True)
class RecordWarning:
    """A record that is kept but probably wrong: worth a look, not worth losing the record."""

    kind: str  # area_exceeds_bbox
    record_type: str
    record_id: int
    message: str


@dataclass
class ParsedCoco:
    """The usable part of one annotation file, in file order, plus what was left out."""

    source: str
    categories: dict[int, dict[str, Any]]  # valid categories by id
    images: list[dict[str, Any]]  # kept, in file order (``limit`` keeps the first ones)
    annotations: list[dict[str, Any]]  # kept, in file order
    boxes: np.ndarray  # (len(annotations), 4) float64 [x, y, w, h], clipped to the image
    listed_images: int  # images the file lists, kept or not
    rejects: list[Reject] = field(default_factory=list)
    warnings: list[RecordWarning] = field(default_factory=list)


def parse_coco(
    document: dict[str, Any],
    source: str,
    *,
    limit: int | None = None,
    known_image_ids: Ids = (),
) -> ParsedCoco:
    """Keep the valid categories, images (first ``limit``) and annotations.

    ``known_image_ids`` are the ids earlier batches hold (any order; a sorted int64 array or an
    Arrow column is used as it is, without a Python set of the pool).
    """
    rejects: list[Reject] = []
    warnings: list[RecordWarning] = []
    categories = _valid_categories(document["categories"], rejects)
    if not categories:
        raise CocoFormatError(f"{source}: no valid category; a detection dataset needs classes")
    records = document["images"]
    ids = [_int_field(record, "id") for record in records]
    duplicates = _duplicate_ids(ids)
    earlier = _already_ingested(ids, known_image_ids)
    images = _valid_images(records, ids, earlier, duplicates, source, rejects)
    if limit is not None:
        images = images[:limit]
    known = _Known({img["id"]: (img["width"], img["height"]) for img in images},
                   set(categories), set(duplicates))
    annotations, boxes = _valid_annotations(
        document.get("annotations", []), known, rejects, warnings)
    return ParsedCoco(source, categories, images, annotations, boxes, len(records), rejects,
                      warnings)


def drop_images(parsed: ParsedCoco, image_ids: dict[int, str]) -> None:
    """Remove images that failed later checks (missing/corrupt file) and their annotations."""
    if not image_ids:
        return
    dropped: dict[int, list[int]] = defaultdict(list)
    keep = np.ones(len(parsed.annotations), dtype=bool)
    for index, ann in enumerate(parsed.annotations):
        if ann["image_id"] in image_ids:
            dropped[ann["image_id"]].append(ann["id"])
            keep[index] = False
    for image_id, reason in image_ids.items():
        parsed.rejects.append(Reject("image", image_id, reason))
        parsed.rejects.extend(Reject("annotation", ann_id, f"its image {image_id} was rejected")
                              for ann_id in dropped.get(image_id, []))
    parsed.images = [img for img in parsed.images if img["id"] not in image_ids]
    parsed.annotations = [ann for ann, kept in zip(parsed.annotations, keep.tolist(),
                                                   strict=True) if kept]
    parsed.boxes = parsed.boxes[keep]


def sorted_ids(ids: Ids) -> np.ndarray:
    """Image ids as one sorted int64 array (8 bytes an id; a Python set of them takes ~60)."""
    if isinstance(ids, np.ndarray | pa.Array | pa.ChunkedArray):
        values = np.asarray(ids, dtype=np.int64)
    else:
        values = np.fromiter(ids, dtype=np.int64)
    if values.size > 1 and not (values[1:] >= values[:-1]).all():
        values = np.sort(values)
    return values


# -- categories ------------------------------------------------------------------------------
def _valid_categories(records: list[Any], rejects: list[Reject]) -> dict[int, dict[str, Any]]:
    categories: dict[int, dict[str, Any]] = {}
    for record in records:
        cat_id = _int_field(record, "id")
        if cat_id is None:
            rejects.append(Reject("category", None, f"category without an integer id: {record!r:.120}"))
        elif not isinstance(record.get("name"), str) or not record["name"].strip():
            rejects.append(Reject("category", cat_id, "category without a name"))
        elif cat_id in categories:
            rejects.append(Reject("category", cat_id, f"duplicate category id {cat_id}"))
        else:
            categories[cat_id] = record
    return categories


# -- images ----------------------------------------------------------------------------------
def _duplicate_ids(ids: list[int | None]) -> dict[int, list[int]]:
    """``{image id: its positions in 'images'}`` for every id listed more than once."""
    seen: set[int | None] = set()
    repeated: set[int | None] = set()
    for image_id in ids:
        (repeated if image_id in seen else seen).add(image_id)
    repeated.discard(None)
    positions: dict[int, list[int]] = defaultdict(list)
    if repeated:
        for index, image_id in enumerate(ids):
            if image_id in repeated:
                positions[image_id].append(index)
    return dict(positions)


def _already_ingested(ids: list[int | None], known_image_ids: Ids) -> set[int]:
    """This batch's ids that earlier batches hold: only the batch's ids are looked up."""
    known = sorted_ids(known_image_ids)
    if not known.size:
        return set()
    mine = np.fromiter((i for i in ids if i is not None and _INT64.min <= i <= _INT64.max),
                       dtype=np.int64)
    found = known[np.minimum(np.searchsorted(known, mine), known.size - 1)] == mine
    return set(mine[found].tolist())


def _valid_images(
    records: list[Any],
    ids: list[int | None],
    earlier: set[int],
    duplicates: dict[int, list[int]],
    source: str,
    rejects: list[Reject],
) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = []
    for record, image_id in zip(records, ids, strict=True):
        if image_id in duplicates:
            reason: str | None = _duplicate_reason(image_id, duplicates[image_id], source)
        else:
            reason = _image_problem(record, image_id, earlier)
        if reason:
            rejects.append(Reject("image", image_id, reason))
            continue
        images.append(record)
    return images


def _duplicate_reason(image_id: int, positions: list[int], source: str) -> str:
    """All copies are rejected: keeping one would hand it the annotations of the others."""
    where = ", ".join(f"images[{i}]" for i in positions[:5]) + (", ..." if positions[5:] else "")
    return (
        f"image id {image_id} appears {len(positions)} times in {source} ({where}): ids must be "
        "unique; renumber the duplicates (and the image_id of their annotations)"
    )


def _image_problem(record: Any, image_id: int | None, known_ids: set[int]) -> str | None:
    if image_id is None:
        return f"image without an integer id: {record!r:.120}"
    if image_id in known_ids:
        return f"image id {image_id} was already ingested in an earlier batch"
    width, height = _int_field(record, "width"), _int_field(record, "height")
    if not width or not height or width <= 0 or height <= 0:
        return f"image {image_id}: width/height must be positive integers, got {width}x{height}"
    return file_name_problem(record.get("file_name"))


def file_name_problem(name: Any) -> str | None:
    """Why a file_name may not be joined onto the image root (path traversal, bad text)."""
    if type(name) is str and _plain_name(name):
        return None
    if not isinstance(name, str) or not name:
        return "missing file_name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"file_name {name!r} is not valid UTF-8 text"
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or "\x00" in name or ":" in path.parts[0]:
        return f"file_name {name!r} escapes the image root (absolute path or '..'); refused"
    return None


def _plain_name(name: str) -> bool:
    """A relative ASCII name with none of the characters the full check looks at."""
    return (bool(name) and name.isascii() and name[0] != "/" and "\\" not in name
            and ".." not in name and ":" not in name and "\x00" not in name)


# -- annotations -----------------------------------------------------------------------------
class _Known(NamedTuple):
    """What annotations may refer to."""

    image_sizes: dict[int, tuple[int, int]]  # kept images
    category_ids: set[int]
    ambiguous_images: set[int]  # ids listed more than once in 'images'


def _valid_annotations(
    records: list[Any], known: _Known, rejects: list[Reject], warnings: list[RecordWarning]
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The kept records and their clipped boxes (float64 [x, y, w, h], one row each)."""
    kept: list[dict[str, Any]] = []
    boxes = array("d")
    seen: set[int] = set()
    for record in records:
        xywh = _plain_xywh(record, known, seen)
        if xywh is None:
            ann_id = _int_field(record, "id")
            reason = _annotation_problem(record, ann_id, seen, known)
            if reason:
                rejects.append(Reject("annotation", ann_id, reason))
                continue
            xywh = tuple(float(v) for v in record["bbox"])
        else:
            ann_id = record["id"]
        seen.add(ann_id)
        if _area_may_exceed(record.get("area"), xywh) and (message := _area_problem(record)):
            warnings.append(RecordWarning("area_exceeds_bbox", "annotation", ann_id, message))
        kept.append(record)
        boxes.extend(_clip(xywh, known.image_sizes[record["image_id"]]))
    return kept, np.frombuffer(boxes, dtype=np.float64).reshape(-1, 4)


def _plain_xywh(
    record: Any, known: _Known, seen: set[int]
) -> tuple[float, float, float, float] | None:
    """The box of a record that passes every check of ``_annotation_problem``, tested the quick
    way (plain ints, a list of 4 plain numbers well inside the image); None when unsure."""
    if type(record) is not dict:
        return None
    ann_id, image_id = record.get("id"), record.get("image_id")
    category_id, bbox = record.get("category_id"), record.get("bbox")
    if not (type(ann_id) is int and type(image_id) is int and type(category_id) is int
            and type(bbox) is list and len(bbox) == 4 and ann_id not in seen
            and category_id in known.category_ids):
        return None
    size = known.image_sizes.get(image_id)
    x, y, w, h = bbox
    if size is None or not (type(x) in _PLAIN_NUMBERS and type(y) in _PLAIN_NUMBERS
                            and type(w) in _PLAIN_NUMBERS and type(h) in _PLAIN_NUMBERS):
        return None
    try:
        x, y, w, h = float(x), float(y), float(w), float(h)
    except OverflowError:  # an int too large for a float: the full check reports it
        return None
    width, height = size
    if 0.0 < w < _INF and 0.0 < h < _INF and x < width and y < height and x + w > 0 and y + h > 0:
        return x, y, w, h  # finite too: nan fails every comparison, inf fails the bounds
    return None


def _annotation_problem(
    record: Any, ann_id: int | None, seen: set[int], known: _Known
) -> str | None:
    if ann_id is None:
        return f"annotation without an integer id: {record!r:.120}"
    if ann_id in seen:
        return f"duplicate annotation id {ann_id}"
    image_id, category_id = _int_field(record, "image_id"), _int_field(record, "category_id")
    if image_id in known.ambiguous_images:
        return (
            f"its image id {image_id} is shared by several images (all rejected), so which one "
            "it belongs to is ambiguous; renumber the images and fix this image_id"
        )
    if image_id not in known.image_sizes:
        return f"unknown or rejected image_id {record.get('image_id')!r}"
    if category_id not in known.category_ids:
        return (
            f"unknown category_id {record.get('category_id')!r}; "
            f"known ids: {sorted(known.category_ids)}"
        )
    return _bbox_problem(record.get("bbox"), known.image_sizes[image_id])


def _bbox_problem(bbox: Any, size: tuple[int, int]) -> str | None:
    if not isinstance(bbox, list) or len(bbox) != 4:
        return f"bbox must be [x, y, width, height], got {bbox!r:.80}"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return f"bbox has non-numeric values {bbox!r:.80}"
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox has non-finite values {bbox!r}"
    if w <= 0 or h <= 0:
        return f"zero-size or negative bbox {bbox!r} (width and height must be > 0)"
    width, height = size
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return f"bbox {bbox!r} lies entirely outside the {width}x{height} image"
    return None


def _area_may_exceed(area: Any, xywh: tuple[float, ...]) -> bool:
    """False when ``_area_problem`` surely finds nothing (a plain number within the bound)."""
    return not (type(area) in _PLAIN_NUMBERS and area <= AREA_TOLERANCE * xywh[2] * xywh[3] + 1)


def _area_problem(record: dict[str, Any]) -> str | None:
    """Why a given ``area`` cannot be right: it exceeds the box (COCO eval sizes rely on it)."""
    area = record.get("area")
    if not isinstance(area, int | float) or isinstance(area, bool) or not math.isfinite(area):
        return None
    w, h = (float(v) for v in record["bbox"][2:])
    if area <= AREA_TOLERANCE * w * h + 1:
        return None
    return (
        f"area {area:g} is {area / (w * h):.1f}x its bbox {w:g}x{h:g}, but a segmentation's "
        "area cannot exceed its box; check area and bbox (kept as given)"
    )


def _clip(xywh: tuple[float, ...], size: tuple[int, int]) -> tuple[float, ...]:
    """Clip a box that sticks out of the image (annotation tools allow it; models do not)."""
    x, y, w, h = xywh
    width, height = size
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return xywh
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    return x0, y0, x1 - x0, y1 - y0


def _clipped(record: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """``record`` with its bbox clipped to the image (a copy only when it changes)."""
    xywh = tuple(float(v) for v in record["bbox"])
    box = _clip(xywh, size)
    return record if box is xywh else {**record, "bbox": list(box)}


def _int_field(record: Any, key: str) -> int | None:
    return int_value(record.get(key)) if isinstance(record, dict) else None


def int_value(value: Any) -> int | None:
    """An integer id from JSON (ints and integral floats; never bools)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
