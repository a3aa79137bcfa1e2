"""LABELING_QUEUE -> files a labeling tool imports: COCO pre-annotations, Label Studio, CSV.

Each function returns a document (dict, list or bytes) and writes nothing: the caller decides
where it goes and writes it atomically (``ObjectStore.write_bytes``). The model's boxes travel
as pre-annotations so that labelers correct boxes instead of drawing them from scratch.
"""

from __future__ import annotations

import csv
import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from al_assets.core.schemas import require_columns
from al_assets.core.storage.objects import ObjectStore, is_s3, local_path

QUEUE_COLUMNS = ("queue_rank", "image_id", "uri", "uncertainty")
CSV_COLUMNS = (
    "queue_rank", "image_id", "uri", "strategy", "agg", "uncertainty", "n_detections", "top_label",
)


def coco_preannotations(
    queue: pa.Table,
    predictions: pa.Table,
    images: pa.Table,
    categories: pa.Table,
    *,
    score_thresh: float = 0.0,
) -> dict:
    """A COCO instances document of the queued images with the model's boxes as annotations.

    Strictly COCO (pycocotools loads it): images in queue order with ``coco_url`` = uri and
    the extra keys ``queue_rank`` and ``uncertainty``; every category; one annotation per
    detection scoring at least ``score_thresh``, with its ``score`` and ids 1, 2, ...
    """
    names = category_names(categories)
    queued = _queue_rows(queue)
    records = _image_records(images, [r["image_id"] for r in queued])
    detections = detections_by_image(predictions, [r["image_id"] for r in queued])
    coco_images, annotations = [], []
    for row in queued:
        coco_images.append(_coco_image(row, records[row["image_id"]]))
        for det in _kept(detections[row["image_id"]]["detections"], score_thresh):
            _check_label(det["label_id"], names, row["image_id"])
            annotations.append(_coco_annotation(det, row["image_id"], len(annotations) + 1))
    return {
        "info": {"description": "al_assets labeling queue: model pre-annotations"},
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": _coco_categories(categories, names),
    }


def _coco_image(row: dict, record: dict) -> dict:
    return {
        "id": row["image_id"], "file_name": record["file_name"], "width": record["width"],
        "height": record["height"], "coco_url": row["uri"],
        "queue_rank": row["queue_rank"], "uncertainty": row["uncertainty"],  # extra keys
    }


def _coco_annotation(det: dict, image_id: int, ann_id: int) -> dict:
    """COCO [x, y, w, h] rounded to 1/100 pixel: float32 noise only bloats the file."""
    box = det["box"]
    width, height = box["xmax"] - box["xmin"], box["ymax"] - box["ymin"]
    return {
        "id": ann_id, "image_id": image_id, "category_id": det["label_id"],
        "bbox": [round(v, 2) for v in (box["xmin"], box["ymin"], width, height)],
        "area": round(width * height, 2),
        "score": det["score"], "iscrowd": 0,
    }


def _coco_categories(categories: pa.Table, names: dict[int, str]) -> list[dict]:
    supers: dict[int, str | None] = {}
    if "supercategory" in categories.column_names:
        for cid, sup in zip(categories.column("category_id").to_pylist(),
                            categories.column("supercategory").to_pylist()):
            supers.setdefault(cid, sup)
    return [
        {"id": cid, "name": name, "supercategory": supers.get(cid) or ""}
        for cid, name in sorted(names.items())
    ]


IMAGE_URL_MODES = ("path", "local-files", "s3", "presigned")
DEFAULT_IMAGE_URLS = "path"
LOCAL_FILES_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
MAX_PRESIGN_HOURS = 168  # S3 (SigV4) refuses presigned URLs valid for longer than 7 days
DEFAULT_PRESIGN_HOURS = MAX_PRESIGN_HOURS


@dataclass(frozen=True)
class ImageUrls:
    """How a Label Studio task's ``data.image`` refers to its image (docs/label-studio.md).

    Label Studio loads ``data.image`` in the labeler's browser, so it must be a URL that Label
    Studio can serve, and how depends on where the pool lives (``mode``):

    - ``path`` (default): a ``file://`` image's local path, ``s3://`` as is; for tools that read
      files themselves (Label Studio shows neither without the setup of the modes below);
    - ``local-files``: ``/data/local-files/?d=<path under local_files_root, URL-encoded>``, for
      Label Studio started with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
      ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` = ``local_files_root``, with a Local Files
      storage in the project;
    - ``s3``: ``s3://bucket/key``, which a project's S3 source storage with "Use pre-signed
      URLs" on signs whenever a labeler opens the task;
    - ``presigned``: an ``https`` GET URL signed now with the source's S3 credentials, valid
      ``presign_hours`` (Label Studio then needs no S3 access at all).

    ``local_files_root`` defaults to the ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` environment
    variable. It is this machine's path of that folder: the same path, unless Label Studio runs
    in a container that mounts it elsewhere (``d`` is relative, so it works either way).
    """

    mode: str = DEFAULT_IMAGE_URLS
    local_files_root: str | None = None
    presign_hours: int = DEFAULT_PRESIGN_HOURS

    def __post_init__(self) -> None:
        if self.mode not in IMAGE_URL_MODES:
            raise ValueError(
                f"unknown image_urls {self.mode!r}; use one of {list(IMAGE_URL_MODES)}"
            )
        if not 1 <= self.presign_hours <= MAX_PRESIGN_HOURS:
            raise ValueError(
                f"presign_hours must be 1..{MAX_PRESIGN_HOURS} (S3 signs URLs for at most 7 "
                f"days), got {self.presign_hours}"
            )
        if self.mode == "local-files":
            self.document_root()  # fail at configuration, not at the first image

    def document_root(self) -> Path:
        """The local-files document root: the setting, else the environment variable."""
        root = self.local_files_root or os.environ.get(LOCAL_FILES_ROOT_ENV)
        if not root:
            raise ValueError(
                f"image_urls='local-files' needs local_files_root (or env {LOCAL_FILES_ROOT_ENV})"
                ": the folder Label Studio serves as its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
            )
        if not os.path.isabs(root):
            raise ValueError(
                f"local_files_root must be an absolute path, like Label Studio's "
                f"{LOCAL_FILES_ROOT_ENV}; got {root!r}"
            )
        return Path(os.path.normpath(root))


def label_studio_tasks(
    queue: pa.Table,
    predictions: pa.Table,
    categories: pa.Table,
    *,
    from_name: str = "label",
    to_name: str = "image",
    model_version: str,
    score_thresh: float = 0.0,
    image_urls: ImageUrls | None = None,
    objects: ObjectStore | None = None,
) -> list[dict]:
    """Label Studio import tasks, one per queued image in queue order, with pre-annotations.

    Boxes are in percent of the image size (clipped to 0-100), as Label Studio expects. The
    prediction ``score`` is the image's uncertainty (omitted when it has no detections), so
    Label Studio can sort tasks by it. ``data.image`` is the image in the form ``image_urls``
    says (:class:`ImageUrls`; ``objects`` signs ``presigned`` URLs, default: the AWS chain);
    ``data.image_id`` is our id, which label import and the oracle match tasks by.
    ``from_name``/``to_name`` must match the labeling config (``label_studio_config``).
    """
    urls = image_urls or ImageUrls()
    signer = objects or ObjectStore()  # one client for all images, built only if presigning
    names = category_names(categories)
    queued = _queue_rows(queue)
    detections = detections_by_image(predictions, [r["image_id"] for r in queued])
    tasks = []
    for row in queued:
        predicted = detections[row["image_id"]]
        results = [
            _ls_result(det, predicted, names, row["image_id"], k, from_name, to_name)
            for k, det in enumerate(_kept(predicted["detections"], score_thresh))
        ]
        prediction: dict = {"model_version": model_version, "result": results}
        if row["uncertainty"] is not None:
            prediction["score"] = row["uncertainty"]
        tasks.append({
            "data": {"image": task_image_url(row["uri"], urls, signer),
                     "image_id": row["image_id"], "queue_rank": row["queue_rank"]},
            "predictions": [prediction],
        })
    return tasks


def task_image_url(uri: str, urls: ImageUrls, objects: ObjectStore) -> str:
    """The ``data.image`` of the image stored at ``uri`` (``file://`` or ``s3://``);
    ``objects`` signs presigned URLs."""
    if urls.mode == "path":
        return uri if is_s3(uri) else str(local_path(uri))
    if urls.mode == "local-files":
        return _local_files_url(uri, urls.document_root())
    if not is_s3(uri):
        raise ValueError(
            f"image {local_path(uri)} is a local file, but image_urls={urls.mode!r} needs S3 "
            "objects; use image_urls='local-files' for a local pool"
        )
    if urls.mode == "s3":
        return uri
    return objects.presigned_url(uri, urls.presign_hours * 3600)


def _local_files_url(uri: str, root: Path) -> str:
    """``/data/local-files/?d=<relative path>``, quoted as Label Studio's own storage does."""
    if is_s3(uri):
        raise ValueError(
            f"image {uri} is in S3, but image_urls='local-files' serves local files only; use "
            "image_urls='s3' (an S3 storage in Label Studio) or 'presigned'"
        )
    path = Path(os.path.normpath(local_path(uri)))
    for base in (root, root.resolve()):  # the pool's paths are resolved; the root may not be
        if path.is_relative_to(base):
            return LOCAL_FILES_PREFIX + quote(path.relative_to(base).as_posix())
    raise ValueError(
        f"image {path} is outside local_files_root {root}, so Label Studio cannot serve it; "
        "set local_files_root (and Label Studio's document root) to a folder above the pool"
    )


def _ls_result(
    det: dict, predicted: dict, names: dict[int, str], image_id: int, k: int,
    from_name: str, to_name: str,
) -> dict:
    _check_label(det["label_id"], names, image_id)
    width, height = predicted["width"], predicted["height"]
    box = det["box"]
    x0, x1 = (float(np.clip(v / width * 100.0, 0.0, 100.0)) for v in (box["xmin"], box["xmax"]))
    y0, y1 = (float(np.clip(v / height * 100.0, 0.0, 100.0)) for v in (box["ymin"], box["ymax"]))
    return {
        "id": f"{image_id}-{k}", "type": "rectanglelabels",
        "from_name": from_name, "to_name": to_name,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "rotation": 0,
                  "rectanglelabels": [names[det["label_id"]]]},
        "score": det["score"],
    }


def label_studio_config(
    categories: pa.Table, *, from_name: str = "label", to_name: str = "image"
) -> str:
    """Label Studio labeling config (XML) for boxes of every category, names XML-escaped."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=to_name, value="$image")
    labels = ET.SubElement(view, "RectangleLabels", name=from_name, toName=to_name)
    for _, name in sorted(category_names(categories).items()):
        ET.SubElement(labels, "Label", value=name)
    return ET.tostring(view, encoding="unicode")


def queue_csv(queue: pa.Table, categories: pa.Table | None = None) -> bytes:
    """The queue as UTF-8 CSV for people and spreadsheets.

    ``top_label`` is the category name when ``categories`` is given, else the label id;
    empty for an image without detections, like ``uncertainty``.
    """
    require_columns(queue, (*CSV_COLUMNS[:-1], "top_label_id"), "queue", "LABELING_QUEUE")
    names = category_names(categories) if categories is not None else None
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in queue.sort_by("queue_rank").to_pylist():
        top = row["top_label_id"]
        if names is not None and top is not None:
            _check_label(top, names, row["image_id"])
        label = "" if top is None else (names[top] if names is not None else str(top))
        uncertainty = "" if row["uncertainty"] is None else repr(row["uncertainty"])
        writer.writerow([*(row[c] for c in CSV_COLUMNS[:5]), uncertainty,
                         row["n_detections"], label])
    return out.getvalue().encode("utf-8")


# -- shared lookups -----------------------------------------------------------------------------
def category_names(categories: pa.Table) -> dict[int, str]:
    """category_id -> name over all batches; one id with two names is an error."""
    require_columns(categories, ("category_id", "name"), "categories", "CATEGORIES")
    names: dict[int, str] = {}
    for cid, name in zip(categories.column("category_id").to_pylist(),
                         categories.column("name").to_pylist()):
        if names.setdefault(cid, name) != name:
            raise ValueError(
                f"categories give id {cid} two names, {names[cid]!r} and {name!r}; one id must "
                "mean one class (fix the annotation files and re-ingest)"
            )
    return names


def detections_by_image(predictions: pa.Table, image_ids: Iterable[int]) -> dict[int, dict]:
    """image_id -> its DETECTIONS row (width, height, detections) for just these images."""
    require_columns(predictions, ("image_id", "width", "height", "detections"), "predictions",
             "DETECTIONS")
    wanted = list(image_ids)
    ids = predictions.column("image_id").to_numpy().astype(np.int64)
    rows = np.flatnonzero(np.isin(ids, np.array(wanted, dtype=np.int64)))
    subset = predictions.select(["image_id", "width", "height", "detections"]).take(rows)
    found: dict[int, dict] = {}
    for row in subset.to_pylist():
        if row["image_id"] in found:
            raise ValueError(
                f"predictions lists image_id {row['image_id']} more than once; pass the "
                "predictions of one model version"
            )
        found[row["image_id"]] = row
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(
            f"queued image_id {missing[0]} has no row in predictions; pass the predictions the "
            "queue was selected from"
        )
    return found


def _image_records(images: pa.Table, image_ids: list[int]) -> dict[int, dict]:
    require_columns(images, ("image_id", "file_name", "width", "height"), "images", "IMAGES")
    ids = images.column("image_id").to_numpy().astype(np.int64)
    rows = np.flatnonzero(np.isin(ids, np.array(image_ids, dtype=np.int64)))
    subset = images.select(["image_id", "file_name", "width", "height"]).take(rows)
    records = {r["image_id"]: r for r in subset.to_pylist()}
    missing = [i for i in image_ids if i not in records]
    if missing:
        raise ValueError(
            f"queued image_id {missing[0]} is not in the images table; pass the pool's IMAGES"
        )
    return records


def _queue_rows(queue: pa.Table) -> list[dict]:
    require_columns(queue, QUEUE_COLUMNS, "queue", "LABELING_QUEUE")
    return queue.select(list(QUEUE_COLUMNS)).sort_by("queue_rank").to_pylist()


def _kept(detections: list[dict], score_thresh: float) -> list[dict]:
    return [d for d in detections if d["score"] >= score_thresh]


def _check_label(label_id: int, names: dict[int, str], image_id: int) -> None:
    if label_id not in names:
        raise ValueError(
            f"image_id {image_id} has a detection of category_id {label_id}, which categories "
            "lacks; pass the categories of the dataset the model was trained on"
        )
