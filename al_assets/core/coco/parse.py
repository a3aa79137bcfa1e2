"""Validate a COCO instances document record by record, keeping what is usable.

A real annotation file has a few bad records among thousands; rejecting the whole file would
stop a pool's ingestion for one typo. So structural problems of the *file* raise
:class:`CocoFormatError`, while problems of single *records* become :class:`Reject` rows (what,
which id, why) and the record is left out. An id shared by several images rejects all of them
and their annotations: which image the annotations belong to cannot be known. Records that are
usable but look wrong (an ``area`` far larger than the box) are kept and reported as
:class:`RecordWarning`. The survivors are indexed with pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from pycocotools.coco import COCO

from al_assets.core.errors import CocoFormatError

REQUIRED_KEYS = ("images", "categories")
AREA_TOLERANCE = 1.5  # COCO's area is the segmentation's, so at most the box's (+ tool slack)


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
    """The usable part of one annotation file, indexed by pycocotools, plus what was left out."""

    source: str
    coco: COCO
    image_order: list[int]  # image ids in file order (``limit`` keeps the first ones)
    rejects: list[Reject] = field(default_factory=list)
    warnings: list[RecordWarning] = field(default_factory=list)


def load_json(data: bytes, source: str) -> dict[str, Any]:
    """Decode and check the top-level COCO structure; errors name the file and the fix."""
    try:
        document = json.loads(data)
    except UnicodeDecodeError as exc:
        raise CocoFormatError(f"{source}: not UTF-8 text ({exc}); COCO files are UTF-8 JSON")
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            f"{source}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(document, dict):
        raise CocoFormatError(
            f"{source}: top level is a JSON {type(document).__name__}, expected an object with "
            f"'images', 'annotations' and 'categories' (COCO instances format)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise CocoFormatError(
            f"{source}: not a COCO instances file, missing key(s) {', '.join(missing)} "
            f"(found: {', '.join(sorted(document)) or 'nothing'})"
        )
    for key in (*REQUIRED_KEYS, "annotations"):
        if key in document and not isinstance(document[key], list):
            raise CocoFormatError(f"{source}: '{key}' must be a JSON list")
    return document


def parse_coco(
    document: dict[str, Any],
    source: str,
    *,
    limit: int | None = None,
    known_image_ids: Iterable[int] = (),
) -> ParsedCoco:
    """Keep the valid categories, images (first ``limit``) and annotations, index them."""
    rejects: list[Reject] = []
    warnings: list[RecordWarning] = []
    categories = _valid_categories(document["categories"], rejects)
    if not categories:
        raise CocoFormatError(f"{source}: no valid category; a detection dataset needs classes")
    duplicates = _duplicate_ids(document["images"])
    images = _valid_images(document["images"], set(known_image_ids), duplicates, source, rejects)
    if limit is not None:
        images = images[:limit]
    known = _Known({img["id"]: (img["width"], img["height"]) for img in images},
                   set(categories), set(duplicates))
    annotations = _valid_annotations(document.get("annotations", []), known, rejects, warnings)
    coco = _index(document, categories.values(), images, annotations)
    return ParsedCoco(source, coco, [img["id"] for img in images], rejects, warnings)


def drop_images(parsed: ParsedCoco, image_ids: dict[int, str]) -> None:
    """Remove images that failed later checks (missing/corrupt file) and their annotations."""
    if not image_ids:
        return
    coco = parsed.coco
    for image_id, reason in image_ids.items():
        parsed.rejects.append(Reject("image", image_id, reason))
        for ann in coco.imgToAnns.get(image_id, []):
            parsed.rejects.append(
                Reject("annotation", ann["id"], f"its image {image_id} was rejected")
            )
    parsed.image_order = [i for i in parsed.image_order if i not in image_ids]
    keep_images = [coco.imgs[i] for i in parsed.image_order]
    keep_anns = [a for a in coco.dataset["annotations"] if a["image_id"] not in image_ids]
    parsed.coco = _index(coco.dataset, coco.dataset["categories"], keep_images, keep_anns)


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
def _duplicate_ids(records: list[Any]) -> dict[int, list[int]]:
    """``{image id: its positions in 'images'}`` for every id listed more than once."""
    positions: dict[int, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        image_id = _int_field(record, "id")
        if image_id is not None:
            positions[image_id].append(index)
    return {image_id: where for image_id, where in positions.items() if len(where) > 1}


def _valid_images(
    records: list[Any],
    known_ids: set[int],
    duplicates: dict[int, list[int]],
    source: str,
    rejects: list[Reject],
) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = []
    for record in records:
        image_id = _int_field(record, "id")
        if image_id in duplicates:
            reason: str | None = _duplicate_reason(image_id, duplicates[image_id], source)
        else:
            reason = _image_problem(record, image_id, known_ids)
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


# -- annotations -----------------------------------------------------------------------------
class _Known(NamedTuple):
    """What annotations may refer to."""

    image_sizes: dict[int, tuple[int, int]]  # kept images
    category_ids: set[int]
    ambiguous_images: set[int]  # ids listed more than once in 'images'


def _valid_annotations(
    records: list[Any], known: _Known, rejects: list[Reject], warnings: list[RecordWarning]
) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    seen: set[int] = set()
    for record in records:
        ann_id = _int_field(record, "id")
        reason = _annotation_problem(record, ann_id, seen, known)
        if reason:
            rejects.append(Reject("annotation", ann_id, reason))
            continue
        seen.add(ann_id)
        if message := _area_problem(record):  # on the box as drawn, before clipping
            warnings.append(RecordWarning("area_exceeds_bbox", "annotation", ann_id, message))
        kept.append(_clipped(record, known.image_sizes[record["image_id"]]))
    return kept


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


def _clipped(record: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Clip a box that sticks out of the image (annotation tools allow it; models do not)."""
    x, y, w, h = (float(v) for v in record["bbox"])
    width, height = size
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if (x0, y0, x1, y1) == (x, y, x + w, y + h):
        return record
    return {**record, "bbox": [x0, y0, x1 - x0, y1 - y0]}


# -- indexing --------------------------------------------------------------------------------
def _index(
    document: dict[str, Any],
    categories: Iterable[dict[str, Any]],
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
) -> COCO:
    coco = COCO()
    coco.dataset = {
        "info": document.get("info", {}),
        "licenses": document.get("licenses", []),
        "categories": list(categories),
        "images": images,
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


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
