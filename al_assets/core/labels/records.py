"""What both label formats parse into: labeled pool images with pixel boxes, plus rejects.

The format readers (:mod:`.label_studio`, :mod:`.coco_labels`) only decide *which* pool image a
record labels and *which* boxes it has; table building, ids and ordering live in one place
(:mod:`.imports`) so the two formats produce identical tables for identical labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from al_assets.core.coco.parse import Reject, _bbox_problem, _clipped
from al_assets.core.errors import CocoFormatError


class LabelImportError(CocoFormatError):
    """A label file as a whole is unusable (not JSON, wrong format, empty, nothing matches)."""


@dataclass(frozen=True)
class Box:
    """One imported box in pool pixels, already clipped to the image."""

    category_id: int
    label: str
    supercategory: str | None
    xywh: tuple[float, float, float, float]
    iscrowd: bool = False


@dataclass
class LabeledImage:
    """A pool image labeled by one record of the file (LS task id or the tool's image id)."""

    image_id: int
    record_id: str
    boxes: list[Box] = field(default_factory=list)


@dataclass
class ParsedLabels:
    """The usable part of one label file and the reasons for everything left out."""

    labeled: list[LabeledImage]
    rejects: list[Reject]
    n_records: int  # tasks or images in the file, for the "nothing usable" message
    record_name: str  # "tasks" | "images"


def pixel_box(bbox: Any, size: tuple[int, int]) -> tuple[tuple[float, ...] | None, str | None]:
    """Validate a COCO ``[x, y, w, h]`` like ingestion does: reject bad boxes, clip the rest.

    Returns ``(xywh, None)`` for a usable box or ``(None, reason)``.
    """
    try:
        problem = _bbox_problem(bbox, size)
    except OverflowError:  # an integer too large for a float
        problem = f"bbox has out-of-range values {bbox!r:.80}"
    if problem:
        return None, problem
    clipped = _clipped({"bbox": bbox}, size)["bbox"]
    return tuple(float(v) for v in clipped), None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)




def shortlist(names: list[str], limit: int = 20) -> str:
    """The known names for a message, cut after ``limit`` so a reason stays one line."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
