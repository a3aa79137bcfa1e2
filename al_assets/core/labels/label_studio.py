"""Read a Label Studio JSON export (a list of tasks) into labeled pool images.

A task is matched to a pool image by ``data.image_id`` (what :func:`label_studio_tasks`
exports) and/or ``data.image`` (see :mod:`.pool`); both present and disagreeing is a reject.
Of a task's annotations the latest non-cancelled one counts (the others are its history); a
task without one is unlabeled. Each ``rectanglelabels`` result becomes a box: percent of the
image times the pool image's size, validated and clipped like ingestion does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from al_assets.core.coco.parse import Reject, int_value
from al_assets.core.labels.pool import Pool, PoolImage
from al_assets.core.labels.records import (
    Box,
    LabeledImage,
    LabelImportError,
    ParsedLabels,
    is_number,
    pixel_box,
    shortlist,
)

BOX_TYPE = "rectanglelabels"


@dataclass
class _Task:
    """One task of the file, in file order, with what was decided about it."""

    position: int
    task_id: int | None
    image_id: int | None = None
    annotation: dict[str, Any] | None = None
    stamp: float | None = None  # the chosen annotation's updated_at (or created_at)
    superseded: bool = False
    rejects: list[Reject] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"task {self.task_id}" if self.task_id is not None else f"task #{self.position + 1}"

    @property
    def record_id(self) -> str:
        return str(self.task_id) if self.task_id is not None else f"#{self.position + 1}"

    def reject(self, reason: str, record_type: str = "task") -> None:
        self.rejects.append(Reject(record_type, self.task_id, reason))


def parse_label_studio(tasks: list[Any], pool: Pool, source: str) -> ParsedLabels:
    """The labeled images of an export; record-level problems become rejects."""
    _check_export(tasks, source)
    read = [_read_task(task, position, pool) for position, task in enumerate(tasks)]
    _resolve_duplicates(read)
    labeled: list[LabeledImage] = []
    rejects: list[Reject] = []
    for task in read:
        rejects.extend(task.rejects)
        if task.annotation is None or task.image_id is None or task.superseded:
            continue
        boxes, box_rejects = _boxes(task, pool.images[task.image_id], pool)
        rejects.extend(box_rejects)
        if boxes is not None:
            labeled.append(LabeledImage(task.image_id, task.record_id, boxes))
    return ParsedLabels(labeled, rejects, len(tasks), "tasks")


def _check_export(tasks: list[Any], source: str) -> None:
    """File-level checks: an empty list, or a list that is not an export of annotated tasks."""
    if not tasks:
        raise LabelImportError(
            f"{source}: empty Label Studio export (no task); export the project again after "
            "labeling (Export -> JSON)"
        )
    objects = [t for t in tasks if isinstance(t, dict)]
    if not any(isinstance(t.get("data"), dict) for t in objects):
        raise LabelImportError(
            f"{source}: a JSON list but not a Label Studio JSON export (no task has a 'data' "
            "object); export with the 'JSON' format, not 'JSON-MIN' or CSV, or give a COCO file"
        )
    if not any("annotations" in t for t in objects):
        raise LabelImportError(
            f"{source}: Label Studio tasks without 'annotations' (an import file, not an "
            "export); label them, then export the project (Export -> JSON)"
        )


# -- per task --------------------------------------------------------------------------------
def _read_task(raw: Any, position: int, pool: Pool) -> _Task:
    task = _Task(position, int_value(raw.get("id")) if isinstance(raw, dict) else None)
    if not isinstance(raw, dict):
        task.reject(f"{task.name} is not a JSON object: {raw!r:.80}")
        return task
    data = raw.get("data")
    if not isinstance(data, dict):
        task.reject(f"{task.name} has no 'data' object")
        return task
    image_id, problem = _match(data, pool, task.name)
    if problem:
        task.reject(problem)
        return task
    task.image_id = image_id
    _choose_annotation(task, raw.get("annotations"))
    return task


def _match(data: dict[str, Any], pool: Pool, name: str) -> tuple[int | None, str | None]:
    """The pool image of a task: ``data.image_id`` and ``data.image`` must not disagree."""
    image_id = _data_image_id(data.get("image_id"))
    reference = data.get("image")
    found = pool.match(reference) if isinstance(reference, str) and reference else None
    if image_id is not None and image_id in pool.images:
        if found is not None and found.image_ids and image_id not in found.image_ids:
            return None, _mismatch(name, image_id, reference, found.image_ids)
        return image_id, None
    if found is None:
        known = "" if image_id is None else f"; data.image_id {image_id} is not a pool image"
        return None, f"{name} has no data.image reference{known}"
    if found.image_id is not None and image_id is not None:
        return None, _mismatch(name, image_id, reference, found.image_ids)
    if found.image_id is not None:
        return found.image_id, None
    if found.image_ids:
        return None, (
            f"{name}: image {reference!r} matches {len(found.image_ids)} pool images "
            f"{list(found.image_ids[:3])}; add data.image_id or use the full uri"
        )
    also = "" if image_id is None else f" (nor is its data.image_id {image_id})"
    return None, (
        f"{name}: image {reference!r} is not in the pool{also}; no uri, local path, "
        "local-files path or file_name matches"
    )


def _mismatch(name: str, image_id: int, reference: str, ids: tuple[int, ...]) -> str:
    return (
        f"{name}: data.image_id {image_id} disagrees with data.image {reference!r}, which is "
        f"pool image {ids[0] if len(ids) == 1 else list(ids[:3])}; fix one of them"
    )


def _data_image_id(value: Any) -> int | None:
    """Our exported id; tasks imported from CSV may carry it as a digit string."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return int_value(value)


def _choose_annotation(task: _Task, annotations: Any) -> None:
    """The latest non-cancelled annotation; the rest is Label Studio's history of the task."""
    done = [
        a for a in (annotations if isinstance(annotations, list) else [])
        if isinstance(a, dict) and not a.get("was_cancelled")
    ]
    if not done:
        task.reject(f"{task.name} not labeled (partial export); it stays unlabeled")
        return
    latest = max(enumerate(done), key=lambda pair: _recency(pair[1], pair[0]))[1]
    if len(done) > 1:
        task.reject(
            f"{task.name} has {len(done)} annotations; the latest (id {latest.get('id')}) was used"
        )
    task.annotation = latest
    updated = _timestamp(latest.get("updated_at"))
    task.stamp = updated if updated is not None else _timestamp(latest.get("created_at"))


def _recency(annotation: dict[str, Any], index: int) -> tuple[float, float, float, int]:
    """Sort key: updated_at, then created_at, then id, then position (missing = oldest)."""
    def known(value: float | None) -> float:
        return -math.inf if value is None else value

    ann_id = int_value(annotation.get("id"))
    return (
        known(_timestamp(annotation.get("updated_at"))),
        known(_timestamp(annotation.get("created_at"))),
        known(None if ann_id is None else float(ann_id)),
        index,
    )


def _timestamp(value: Any) -> float | None:
    """Seconds of an ISO 8601 time (Label Studio writes UTC, sometimes without a zone)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _resolve_duplicates(tasks: list[_Task]) -> None:
    """One label per pool image: the later task wins (by updated_at when both have one)."""
    winners: dict[int, _Task] = {}
    for task in tasks:
        if task.annotation is None or task.image_id is None:
            continue
        current = winners.get(task.image_id)
        if current is None:
            winners[task.image_id] = task
            continue
        newer = current.stamp is None or task.stamp is None or task.stamp >= current.stamp
        winner, loser = (task, current) if newer else (current, task)
        loser.superseded = True
        loser.reject(_again(task.image_id, winner, loser))
        winners[task.image_id] = winner


def _again(image_id: int, winner: _Task, loser: _Task) -> str:
    if winner.position > loser.position:
        return f"image {image_id} labeled again by {winner.name}; the later one wins"
    return (
        f"image {image_id} is also labeled by {winner.name}, whose annotation was updated "
        "later; the later one wins"
    )


# -- boxes -----------------------------------------------------------------------------------
def _boxes(task: _Task, image: PoolImage, pool: Pool) -> tuple[list[Box] | None, list[Reject]]:
    """The task's boxes, or None when it drew boxes but none could be imported.

    Declaring such an image empty would teach the model that its objects are background.
    """
    assert task.annotation is not None
    result = task.annotation.get("result")
    ann_name = f"annotation {task.annotation.get('id')} of {task.name}"
    if not isinstance(result, list):
        return None, [Reject("task", task.task_id, f"{ann_name} has no result list; "
                             "it stays unlabeled")]
    boxes: list[Box] = []
    rejects: list[Reject] = []
    for item in result:
        box, problem = _box(item, image, pool)
        if box is not None:
            boxes.append(box)
        else:
            item_id = item.get("id") if isinstance(item, dict) else None
            label = f"{task.name} result {item_id!r}" if item_id is not None else task.name
            rejects.append(Reject("annotation", task.task_id, f"{label}: {problem}"))
    drawn = sum(isinstance(i, dict) and i.get("type") == BOX_TYPE for i in result)
    if drawn and not boxes:
        rejects.append(Reject("task", task.task_id, f"none of the {drawn} boxes of {task.name} "
                              "could be imported; the image stays unlabeled"))
        return None, rejects
    return boxes, rejects


def _box(item: Any, image: PoolImage, pool: Pool) -> tuple[Box | None, str | None]:
    """One result item as a pool box, or the reason it is not one."""
    if not isinstance(item, dict):
        return None, f"result item is not a JSON object: {item!r:.80}"
    if item.get("type") != BOX_TYPE:
        return None, (
            f"unsupported result type {item.get('type')!r}; only {BOX_TYPE} boxes are imported"
        )
    value = item.get("value")
    if not isinstance(value, dict):
        return None, "box without a 'value' object"
    problem = _label_problem(value, pool) or _geometry_problem(item, value, image)
    if problem:
        return None, problem
    size = (image.width, image.height)
    xywh, problem = pixel_box(_pixels(value, size), size)
    if xywh is None:
        return None, problem
    category = pool.categories[value["rectanglelabels"][0]]
    return Box(category.category_id, category.name, category.supercategory, xywh), None


def _label_problem(value: dict[str, Any], pool: Pool) -> str | None:
    labels = value.get("rectanglelabels")
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        return f"a box needs exactly one label, got {labels!r:.80}"
    if labels[0] not in pool.categories:
        return (
            f"label {labels[0]!r} is not a pool category (known: "
            f"{shortlist(pool.category_names)}); rename it in the labeling config"
        )
    return None


def _geometry_problem(item: dict[str, Any], value: dict[str, Any], image: PoolImage) -> str | None:
    """Rotated boxes and boxes drawn on another image size have no axis-aligned pool box."""
    for key, where in ((value.get("rotation"), "box"), (item.get("image_rotation"), "image")):
        if key is not None and (not is_number(key) or key != 0):
            return (
                f"{where} rotated by {key!r} degrees; only axis-aligned boxes are imported "
                "(set the rotation to 0 in Label Studio)"
            )
    width, height = item.get("original_width"), item.get("original_height")
    if (width is not None and width != image.width) or (
        height is not None and height != image.height
    ):
        return (
            f"labeled on {width}x{height} but the pool image is {image.width}x{image.height}; "
            "the task shows another image than the pool's"
        )
    return None


def _pixels(value: dict[str, Any], size: tuple[int, int]) -> list[Any]:
    """Label Studio percent -> COCO pixels ``[x, y, w, h]`` (raw values if not all numbers)."""
    percent = [value.get(k) for k in ("x", "y", "width", "height")]
    if not all(is_number(v) for v in percent):
        return percent
    width, height = size
    try:
        x, y, w, h = (float(v) for v in percent)
    except OverflowError:  # an integer too large for a float: reported as non-finite
        return [math.inf] * 4
    return [x * width / 100.0, y * height / 100.0, w * width / 100.0, h * height / 100.0]
