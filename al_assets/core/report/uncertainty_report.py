"""Assemble the uncertainty report: galleries, charts and tables, from the analysis tables."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from al_assets.core.analysis.evaluation import version_comparison
from al_assets.core.display import readable
from al_assets.core.queue.exports import category_names
from al_assets.core.report.charts import class_frequency_chart, confusion_heatmap
from al_assets.core.report.drawing import (
    GalleryItem,
    detection_text,
    gallery,
    margin_text,
    thumbnail_jpeg,
    to_jpeg,
    to_png,
)
from al_assets.core.report.html import ReportImage, ReportSection, ThumbnailTable

LoadImage = Callable[[str], Image.Image]
GALLERY_SIZE = 12
QUEUE_ROWS = 20
QUEUE_THUMB_SIZE = 96
QUEUE_COLUMNS = ("queue_rank", "image_id", "uri", "top_label_id", "labels", "uncertainty",
                 "reason")


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows; each table is one of the analysis assets' outputs."""

    model_version: str
    least_confidence: pa.Table
    least_margin: pa.Table
    entropy: pa.Table
    confused_pairs: pa.Table
    class_frequency: pa.Table
    evaluation: pa.Table
    confusion: pa.Table
    queue: pa.Table
    categories: pa.Table
    loop_history: pa.Table | None = None  # MODEL_VERSIONS: one row per gate decision
    class_deltas: pa.Table | None = None  # GATE_CLASS_DELTAS of the last decision
    image_root: str | None = None  # the pool's images folder: queue files shown below it


def report_sections(inputs: ReportInputs, load: LoadImage) -> list[ReportSection]:
    names = category_names(inputs.categories)
    return [
        _queue_section(inputs, names, load),
        _gallery_section("Least confidence", "least_confidence.png", inputs.least_confidence,
                         names, load, "score",
                         "Detections with the lowest detector score (1 - P(y1|x) highest)."),
        _gallery_section("Least margin", "least_margin.png", inputs.least_margin, names, load,
                         "margin", "Detections whose two most likely classes are closest "
                         "(P(y1|x) - P(y2|x) smallest): where the model hesitates."),
        _gallery_section("Entropy", "entropy.png", inputs.entropy, names, load, "entropy",
                         "Detections with the most spread class distribution (nats)."),
        ReportSection("Confused class pairs", "Among the least-margin detections: which class "
                      "pairs compete, how often, and how close they are.",
                      tables=[inputs.confused_pairs]),
        _frequency_section(inputs.class_frequency),
        _confusion_section(inputs.confusion, inputs.categories),
        ReportSection("Model versions", "COCO AP (pycocotools) of each model version on the "
                      "labeled held-out images of the pool, side by side: one row per class "
                      "(AP@[.5:.95]) after the overall mAP and AP50; delta = the newest version "
                      "minus the one before it.", tables=[version_comparison(inputs.evaluation)]),
        *_loop_sections(inputs),
    ]


def _loop_sections(inputs: ReportInputs) -> list[ReportSection]:
    """The loop over time: every gate decision, then what the last round's labels changed."""
    if inputs.loop_history is None or inputs.loop_history.num_rows == 0:
        return [ReportSection("The loop", "No challenger has been trained yet: import labels "
                              "(a file in <source>/labels/) to train one and run the gate.")]
    history = inputs.loop_history.select(
        ["evaluated_at", "model_version", "champion_version", "train_images", "train_boxes",
         "map", "map_low", "map_high", "champion_map", "delta_map", "promoted", "reason"])
    sections = [ReportSection(
        "The loop: model versions over time", "Each challenger trained on the labels so far, "
        "its held-out mAP with the bootstrap interval over images, and the gate's decision.",
        tables=[history])]
    if inputs.class_deltas is not None and inputs.class_deltas.num_rows:
        last = inputs.class_deltas["model_version"][0].as_py()
        sections.append(ReportSection(
            f"What the last round changed ({last})", "Per-class AP on the held-out split, "
            "challenger vs champion, worst change first.",
            tables=[inputs.class_deltas.select(["name", "champion_ap", "challenger_ap",
                                                "delta"])]))
    return sections


def _queue_section(inputs: ReportInputs, names: Mapping[int, str], load: LoadImage
                   ) -> ReportSection:
    used = (sorted(set(inputs.queue["strategy"].to_pylist()))
            if "strategy" in inputs.queue.column_names else [])
    by = f" by {', '.join(used)}" if used else ""
    text = (f"The {inputs.queue.num_rows} images to label next, most uncertain first{by}, "
            f"according to model version {inputs.model_version}; the first {QUEUE_ROWS} are "
            "shown, the whole queue is in the exports (COCO JSON, Label Studio tasks, CSV).")
    head = inputs.queue.slice(0, QUEUE_ROWS)
    columns = [c for c in QUEUE_COLUMNS if c in head.column_names]
    thumbs = [_queue_thumbnail(row, load) for row in head.select(["queue_rank", "uri"]).to_pylist()]
    table = readable(head.select(columns), names, inputs.image_root)
    return ReportSection("Labeling queue", text, tables=[ThumbnailTable(table, thumbs)])


def _queue_thumbnail(row: dict, load: LoadImage) -> ReportImage | None:
    """A small JPEG of one queued image, written next to the page; None: cannot be loaded."""
    data = thumbnail_jpeg(lambda: load(row["uri"]), QUEUE_THUMB_SIZE)
    caption = f"queue rank {row['queue_rank']}"
    return None if data is None else ReportImage(f"queue_{row['queue_rank']}.jpg", data, caption)


def _gallery_section(
    title: str, file_name: str, table: pa.Table, names: dict[int, str], load: LoadImage,
    value: str, text: str,
) -> ReportSection:
    items = [_gallery_item(row, names, load, value) for row in _one_per_image(table)]
    image = ReportImage(file_name, to_png(gallery(items, columns=4, thumb_size=256)), title)
    return ReportSection(title, text, images=[image])


def _one_per_image(table: pa.Table) -> list[dict]:
    """The first (most uncertain) detection of up to GALLERY_SIZE distinct images."""
    seen: set[int] = set()
    rows = []
    for batch in table.to_batches(max_chunksize=256):
        for row in batch.to_pylist():
            if row["image_id"] not in seen:
                seen.add(row["image_id"])
                rows.append(row)
                if len(rows) == GALLERY_SIZE:
                    return rows
    return rows


def _gallery_item(row: dict, names: dict[int, str], load: LoadImage, value: str) -> GalleryItem:
    first = names.get(row.get("first_label_id"), str(row.get("first_label_id")))
    if value == "margin":
        second = names.get(row.get("second_label_id"), str(row.get("second_label_id")))
        text = margin_text(first, second, row["margin"])
    elif value == "entropy":
        text = f"{first} | H={row['entropy']:.3f}"
    else:
        text = detection_text(names.get(row["label_id"], str(row["label_id"])), row["score"])
    return GalleryItem(
        image=lambda uri=row["uri"]: load(uri), boxes=[row["box"]], texts=[text],
        caption=f"image {row['image_id']}",
    )


def _frequency_section(frequency: pa.Table) -> ReportSection:
    names = frequency["name"].to_pylist()
    gt = frequency["gt_count"].to_pylist()
    chart = class_frequency_chart(
        names, frequency["predicted_count"].to_pylist(),
        None if all(v is None for v in gt) else [v or 0 for v in gt],
        title="Predictions vs ground truth per class", log_scale=True,
    )
    return ReportSection(
        "Class frequency and imbalance",
        "How often each class is predicted and annotated; rare classes are where the model "
        "has the least to learn from (the notebook's person vs remote finding).",
        images=[ReportImage("class_frequency.png", chart, "class frequency")],
        tables=[frequency],
    )


def _confusion_section(confusion: pa.Table, categories: pa.Table) -> ReportSection:
    matrix, labels = confusion_matrix_array(confusion, categories)
    chart = confusion_heatmap(matrix, labels, title="Ground truth vs predicted (IoU-matched)",
                              normalize=True)
    return ReportSection(
        "Confusion matrix",
        "Ground-truth boxes matched to predictions by IoU; off-diagonal cells are confusions, "
        "the background row/column false positives and misses.",
        images=[ReportImage("confusion_matrix.png", chart, "confusion matrix")],
    )


def confusion_matrix_array(confusion: pa.Table, categories: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Long-form CONFUSION_MATRIX -> square counts with a trailing background row/column."""
    ids = categories["category_id"].to_pylist()
    labels = categories["name"].to_pylist() + ["background"]
    index = {cid: i for i, cid in enumerate(ids)}
    background = len(ids)
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for row in confusion.to_pylist():
        gt = index.get(row["gt_category_id"], background)
        pred = index.get(row["pred_category_id"], background)
        matrix[gt, pred] += row["count"]
    return matrix, labels


def thumbnail_markdown(png: bytes, alt: str, width: int = 900) -> str:
    """A small JPEG data URI for Dagster's markdown metadata (the full PNG is on storage)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail((width, width))
    return f"![{alt}](data:image/jpeg;base64,{base64.b64encode(to_jpeg(image)).decode()})"
