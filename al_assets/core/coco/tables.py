"""Turn a parsed COCO document into the Arrow tables of :mod:`al_assets.core.schemas`."""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterator
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

Mask = tuple[int, int, bytes]  # height, width, compressed RLE counts


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
    """Arrow tables of one batch; segmentations become RLE, bad ones become rejects.

    Consumes ``parsed``: each annotation's ``segmentation`` is removed once converted, so the
    polygons (most of a COCO file's memory) are freed while the tables are built.
    """
    rejects = list(parsed.rejects)
    annotations, bad_masks = _annotations_table(parsed, batch, rejects)
    return CocoTables(
        categories=_categories_table(parsed, batch),
        images=_images_table(parsed, batch, image_root, shard_size),
        annotations=annotations,
        rejects=rejects_table(rejects, batch, parsed.source),
        warnings=[w for w in parsed.warnings if w.record_id not in bad_masks],
    )


def _categories_table(parsed: ParsedCoco, batch: str) -> pa.Table:
    cats = sorted(parsed.categories.values(), key=lambda c: c["id"])
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
    images = parsed.images
    ids = np.array([img["id"] for img in images], dtype=np.int64)
    return pa.Table.from_pydict(
        {
            "image_id": ids,
            "file_name": [img["file_name"] for img in images],
            "uri": [join_uri(image_root, img["file_name"].replace("\\", "/")) for img in images],
            "width": [int(img["width"]) for img in images],
            "height": [int(img["height"]) for img in images],
            "date_captured": [_text_or_none(img.get("date_captured")) for img in images],
            "batch": pa.repeat(batch, len(images)),
            "shard": assign_shards(ids, batch, shard_size) if len(ids) else [],
        },
        schema=schemas.IMAGES,
    )


def _annotations_table(
    parsed: ParsedCoco, batch: str, rejects: list[Reject]
) -> tuple[pa.Table, set[Any]]:
    """The table and the ids rejected for their segmentation (rejects in file order)."""
    anns = parsed.annotations
    images = {img["id"]: img for img in parsed.images}
    masks, areas = _MaskColumn(), array("d")
    keep = np.ones(len(anns), dtype=bool)
    bad: set[Any] = set()
    for positions in _image_runs(anns):
        image = images[anns[positions[0]]["image_id"]]
        for i, mask in zip(positions, _run_masks(anns, positions, image), strict=True):
            if isinstance(mask, Exception):
                keep[i] = False
                bad.add(anns[i]["id"])
                rejects.append(Reject("annotation", anns[i]["id"],
                                      f"invalid segmentation ({stable_text(mask)})"))
                continue
            masks.add(mask)
            areas.append(_area(anns[i], mask, parsed.boxes[i]))
    kept = [a for a, k in zip(anns, keep.tolist(), strict=True) if k] if bad else anns
    table = _annotation_columns(kept, parsed.boxes[keep], areas, masks.column(),
                                parsed.categories, batch)
    return table, bad


def _annotation_columns(
    anns: list[dict[str, Any]], xywh: np.ndarray, areas: array, segmentation: pa.ChunkedArray,
    cats: dict[int, dict[str, Any]], batch: str,
) -> pa.Table:
    """Arrow columns one at a time (each Python list is freed before the next is built)."""
    x, y, w, h = xywh.T
    corners = [pa.array(v, pa.float32()) for v in (x, y, x + w, y + h)]
    labels = [cats[ann["category_id"]] for ann in anns]
    columns = {
        "ann_id": lambda: [ann["id"] for ann in anns],
        "image_id": lambda: [ann["image_id"] for ann in anns],
        "category_id": lambda: [ann["category_id"] for ann in anns],
        "label": lambda: [cat["name"] for cat in labels],
        "supercategory": lambda: [cat.get("supercategory") for cat in labels],
        "bbox": lambda: pa.StructArray.from_arrays(corners, fields=list(schemas.BOX2D)),
        "bbox_xywh": lambda: pa.FixedSizeListArray.from_arrays(
            pa.array(xywh.ravel(), pa.float32()), 4),
        "area": lambda: np.frombuffer(areas, dtype=np.float64),
        "iscrowd": lambda: [bool(ann.get("iscrowd", 0)) for ann in anns],
        "segmentation": lambda: segmentation,
        "batch": lambda: pa.repeat(batch, len(anns)),
    }
    arrays = [_as_arrow(build(), schemas.ANNOTATIONS.field(name).type)
              for name, build in columns.items()]
    return pa.Table.from_arrays(arrays, schema=schemas.ANNOTATIONS)


def _as_arrow(values: Any, type_: pa.DataType) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        return values
    array_ = values if isinstance(values, pa.Array) else pa.array(values, type_)
    return pa.chunked_array([array_], type_)


def _area(ann: dict[str, Any], mask: Mask | None, xywh: np.ndarray) -> float:
    """COCO's own area when valid, else the mask's, else the box's."""
    area = ann.get("area")
    if isinstance(area, int | float) and area > 0:
        return float(area)
    if mask is None:
        return float(xywh[2] * xywh[3])
    return float(mask_utils.area({"size": list(mask[:2]), "counts": mask[2]}))


# -- segmentations ---------------------------------------------------------------------------
class _MaskColumn:
    """The RLE column, built from byte buffers: 1M ``str`` counts (~200 bytes each) would be
    ~260 MB of Python objects next to the document; packed, they are the bytes alone, in
    chunks of at most ``CHUNK_BYTES`` (int32 offsets, and no large buffer ever regrown)."""

    CHUNK_BYTES = 64 * 1024**2

    def __init__(self) -> None:
        self.chunks: list[pa.StructArray] = []
        self._start()

    def _start(self) -> None:
        self.data, self.offsets = bytearray(), array("i", [0])
        self.sizes, self.null = array("i"), bytearray()

    def add(self, mask: Mask | None) -> None:
        if mask is not None and len(self.data) + len(mask[2]) > self.CHUNK_BYTES:
            self._finish()
        height, width, counts = mask if mask is not None else (0, 0, b"")
        self.data += counts
        self.offsets.append(len(self.data))
        self.sizes.extend((height, width))
        self.null.append(mask is None)

    def column(self) -> pa.ChunkedArray:
        self._finish()
        return pa.chunked_array(self.chunks, schemas.RLE)

    def _finish(self) -> None:
        n = len(self.null)
        if n == 0 and self.chunks:
            return
        counts = pa.StringArray.from_buffers(n, pa.py_buffer(self.offsets),
                                             pa.py_buffer(self.data))
        sizes = pa.ListArray.from_arrays(np.arange(0, 2 * n + 1, 2, dtype=np.int32),
                                         np.frombuffer(self.sizes, dtype=np.int32))
        null = np.frombuffer(self.null, dtype=np.bool_)
        self.chunks.append(pa.StructArray.from_arrays(
            [sizes, counts], fields=list(schemas.RLE),
            mask=pa.array(null) if null.any() else None))
        self._start()


def _image_runs(anns: list[dict[str, Any]]) -> Iterator[list[int]]:
    """Positions of consecutive annotations of one image (COCO files list most together)."""
    for _, run in itertools.groupby(range(len(anns)), key=lambda i: anns[i]["image_id"]):
        yield list(run)


def _run_masks(
    anns: list[dict[str, Any]], positions: list[int], image: dict[str, Any]
) -> list[Mask | None | Exception]:
    """One mask per annotation: None without a segmentation, the exception when pycocotools
    cannot convert it (it raises bare Exception/TypeError/IndexError).

    The polygons of the run go to ``mask.frPyObjects`` in one call (its per-call cost was a
    third of the conversion); a failing call is redone annotation by annotation, so each bad
    one is found and named. Each segmentation is removed from its record once converted.
    """
    height, width = image["height"], image["width"]  # as annToRLE passes them
    segmentations = [anns[i].pop("segmentation", None) for i in positions]
    batched = [s for s in segmentations if _polygons_only(s)]
    rles = _frpoly(batched, height, width)
    if rles is None:
        return [_mask(s, height, width) for s in segmentations]
    masks: list[Mask | None | Exception] = []
    first = 0
    for segmentation in segmentations:
        if not _polygons_only(segmentation):
            masks.append(_mask(segmentation, height, width))
            continue
        parts = rles[first:first + len(segmentation)]
        first += len(segmentation)
        masks.append(_packed(parts[0] if len(parts) == 1 else mask_utils.merge(parts)))
    return masks


def _frpoly(segmentations: list[list[Any]], height: Any, width: Any) -> list[dict] | None:
    """RLEs of all the polygons in one call; None when one of them fails."""
    polygons = [polygon for segmentation in segmentations for polygon in segmentation]
    if not polygons:
        return []
    try:
        return mask_utils.frPyObjects(polygons, height, width)
    except Exception:  # pycocotools raises bare Exception/TypeError/IndexError
        return None


def _polygons_only(segmentation: Any) -> bool:
    """Polygons that annToRLE would hand to frPoly too (a 4-value first entry is a box)."""
    return (type(segmentation) is list and bool(segmentation)
            and all(type(p) is list and len(p) > 4 for p in segmentation))


def _mask(segmentation: Any, height: Any, width: Any) -> Mask | None | Exception:
    """``COCO.annToRLE`` for one segmentation, compressed."""
    if segmentation in (None, [], {}):
        return None
    try:
        if type(segmentation) is list:  # polygons: one RLE each, merged
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif type(segmentation["counts"]) is list:  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:  # compressed RLE, kept as given
            rle = segmentation
        return _packed(rle)
    except Exception as exc:  # pycocotools raises bare Exception/TypeError/IndexError
        return exc


def _packed(rle: dict[str, Any]) -> Mask:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    if not isinstance(counts, bytes):
        raise TypeError(f"RLE counts must be text or a list of run lengths, got {counts!r:.40}")
    height, width = (int(v) for v in rle["size"])
    return height, width, counts


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
