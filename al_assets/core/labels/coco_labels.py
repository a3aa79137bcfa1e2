"""Read a COCO instances file from any labeling tool (CVAT, Roboflow, FiftyOne, ours).

The tool's image and category ids are its own: images are matched to the pool by
``coco_url``/``uri``, then ``file_name`` (see :mod:`.pool`), categories by name. Every matched
image the file lists is labeled, one without annotations as empty. Boxes are validated and
clipped with ingestion's rules; segmentations are dropped (the label batch holds boxes only).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from al_assets.core.coco.parse import Reject, int_value
from al_assets.core.labels.pool import Pool, PoolCategory
from al_assets.core.labels.records import (
    Box,
    LabeledImage,
    LabelImportError,
    ParsedLabels,
    pixel_box,
    shortlist,
)

IMAGE_REFERENCES = ("coco_url", "uri", "file_name")


@dataclass
class _Images:
    """The file's images matched to the pool: tool id -> pool id, winners and losers."""

    pool_ids: dict[int, int] = field(default_factory=dict)  # imported tool ids only
    superseded: set[int] = field(default_factory=set)  # tool ids another record overrides
    order: list[int] = field(default_factory=list)  # matched tool ids, file order

    def winners(self) -> list[int]:
        return [t for t in self.order if t not in self.superseded]


def parse_coco_labels(document: dict[str, Any], pool: Pool, source: str) -> ParsedLabels:
    """The labeled images of a COCO file; record-level problems become rejects."""
    _check_structure(document, source)
    rejects: list[Reject] = []
    categories = _categories(document["categories"], pool, source, rejects)
    images = _images(document["images"], pool, rejects)
    boxes, drawn = _annotations(document.get("annotations") or [], images, categories, pool,
                                rejects)
    labeled: list[LabeledImage] = []
    for tool_id in images.winners():
        if drawn[tool_id] and not boxes[tool_id]:
            rejects.append(Reject("image", tool_id, (
                f"none of the {drawn[tool_id]} annotations of image {tool_id} could be "
                "imported; the image stays unlabeled")))
            continue
        labeled.append(LabeledImage(images.pool_ids[tool_id], str(tool_id), boxes[tool_id]))
    return ParsedLabels(labeled, rejects, len(document["images"]), "images")


def _check_structure(document: dict[str, Any], source: str) -> None:
    for key in ("images", "categories", "annotations"):
        if key in document and not isinstance(document[key], list):
            raise LabelImportError(f"{source}: '{key}' must be a JSON list (COCO instances)")
    if not document["images"]:
        raise LabelImportError(
            f"{source}: empty COCO file (no image); export the labeled images from the tool"
        )


# -- categories ------------------------------------------------------------------------------
def _categories(
    records: list[Any], pool: Pool, source: str, rejects: list[Reject]
) -> dict[int, PoolCategory | str]:
    """Tool category id -> the pool category of the same name, or the unknown name."""
    found: dict[int, PoolCategory | str] = {}
    ids_by_name: dict[str, int] = {}
    for record in records:
        cat_id = int_value(record.get("id")) if isinstance(record, dict) else None
        name = record.get("name") if isinstance(record, dict) else None
        if cat_id is None:
            rejects.append(Reject("category", None, f"category without an integer id: "
                                  f"{record!r:.120}"))
        elif not isinstance(name, str) or not name.strip():
            rejects.append(Reject("category", cat_id, "category without a name"))
        elif cat_id in found:
            rejects.append(Reject("category", cat_id, f"duplicate category id {cat_id}"))
        elif name in ids_by_name:
            raise LabelImportError(
                f"{source}: category name {name!r} is used by ids {ids_by_name[name]} and "
                f"{cat_id}; categories match the pool by name, so merge them and export again"
            )
        else:
            ids_by_name[name] = cat_id
            found[cat_id] = pool.categories.get(name, name)
    return found


# -- images ----------------------------------------------------------------------------------
def _images(records: list[Any], pool: Pool, rejects: list[Reject]) -> _Images:
    images = _Images()
    seen: set[int] = set()
    winner_of: dict[int, int] = {}  # pool id -> tool id
    for record in records:
        tool_id = int_value(record.get("id")) if isinstance(record, dict) else None
        if tool_id is None or tool_id in seen:
            reason = (f"duplicate image id {tool_id}" if tool_id is not None
                      else f"image without an integer id: {record!r:.120}")
            rejects.append(Reject("image", tool_id, reason))
            continue
        seen.add(tool_id)
        pool_id, problem = _match_image(record, tool_id, pool)
        if problem:
            rejects.append(Reject("image", tool_id, problem))
            continue
        if pool_id in winner_of:
            earlier = winner_of[pool_id]
            images.superseded.add(earlier)
            rejects.append(Reject("image", earlier, (
                f"pool image {pool_id} is listed again as image {tool_id}; the later one wins")))
        winner_of[pool_id] = tool_id
        images.pool_ids[tool_id] = pool_id
        images.order.append(tool_id)
    return images


def _match_image(record: dict[str, Any], tool_id: int, pool: Pool) -> tuple[int, str | None]:
    """The pool image of a tool's image record; it must have been labeled at the pool's size."""
    references = [record.get(k) for k in IMAGE_REFERENCES]
    references = [r for r in references if isinstance(r, str) and r.strip()]
    for reference in references:
        found = pool.match(reference)
        if len(found.image_ids) > 1:
            return -1, (f"image {tool_id}: {reference!r} matches {len(found.image_ids)} pool "
                        f"images {list(found.image_ids[:3])}; export with full paths or uris")
        if found.image_id is not None:
            return found.image_id, _size_problem(record, tool_id, pool, found.image_id)
    shown = references[0] if references else None
    return -1, (f"image {tool_id} ({shown!r}) is not in the pool; no coco_url, uri, file_name "
                "or path suffix matches")


def _size_problem(record: dict[str, Any], tool_id: int, pool: Pool, pool_id: int) -> str | None:
    image = pool.images[pool_id]
    width, height = record.get("width"), record.get("height")
    if (width is not None and width != image.width) or (
        height is not None and height != image.height
    ):
        return (f"image {tool_id}: labeled on {width}x{height} but the pool image {pool_id} is "
                f"{image.width}x{image.height}")
    return None


# -- annotations -----------------------------------------------------------------------------
def _annotations(
    records: list[Any],
    images: _Images,
    categories: dict[int, PoolCategory | str],
    pool: Pool,
    rejects: list[Reject],
) -> tuple[dict[int, list[Box]], dict[int, int]]:
    """Boxes per winning tool image id, and how many annotations each one had."""
    boxes: dict[int, list[Box]] = defaultdict(list)
    drawn: dict[int, int] = defaultdict(int)
    seen: set[int] = set()
    for record in records:
        ann_id = int_value(record.get("id")) if isinstance(record, dict) else None
        tool_image = int_value(record.get("image_id")) if isinstance(record, dict) else None
        if tool_image in images.superseded:
            continue  # the later listing of its image wins; that reject explains it
        if tool_image in images.pool_ids:
            drawn[tool_image] += 1
        box, problem = _box(record, ann_id, tool_image, seen, images, categories, pool)
        if box is None:
            rejects.append(Reject("annotation", ann_id, problem or "invalid annotation"))
            continue
        if ann_id is not None:
            seen.add(ann_id)
        boxes[tool_image].append(box)
    return boxes, drawn


def _box(
    record: Any,
    ann_id: int | None,
    tool_image: int | None,
    seen: set[int],
    images: _Images,
    categories: dict[int, PoolCategory | str],
    pool: Pool,
) -> tuple[Box | None, str | None]:
    if not isinstance(record, dict):
        return None, f"annotation is not a JSON object: {record!r:.80}"
    if ann_id is not None and ann_id in seen:
        return None, f"duplicate annotation id {ann_id}"
    if tool_image not in images.pool_ids:
        return None, f"its image {record.get('image_id')!r} is unknown or was not imported"
    category_id = int_value(record.get("category_id"))
    category = categories.get(category_id) if category_id is not None else None
    if category is None:
        return None, f"unknown category_id {record.get('category_id')!r}"
    if isinstance(category, str):
        return None, (f"category {category!r} is not a pool category (known: "
                      f"{shortlist(pool.category_names)})")
    image = pool.images[images.pool_ids[tool_image]]
    xywh, problem = pixel_box(record.get("bbox"), (image.width, image.height))
    if xywh is None:
        return None, problem
    crowd = bool(record.get("iscrowd", 0))
    return Box(category.category_id, category.name, category.supercategory, xywh, crowd), None
