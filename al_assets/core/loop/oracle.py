"""An oracle labeler: answers exported Label Studio tasks from ground truth.

The simulation (and the demo walk-through) needs someone to label the queue. The oracle does
what a perfect labeler would do in Label Studio: it opens each exported task, draws the ground
truth boxes and submits, and the result is written as a Label Studio JSON export, the same file
a team would download. It then goes through the same ``import_labels`` as a real export, so
the simulated loop exercises the real label path end to end.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from al_assets.core.queue.exports import category_names

SUBMITTED_AT = "2026-01-01T00:00:00.000000Z"  # fixed: the same answers give the same file


def oracle_export(
    tasks: list[dict], ground_truth: pa.Table, images: pa.Table, categories: pa.Table,
    *, from_name: str = "label", to_name: str = "image",
) -> list[dict]:
    """The Label Studio JSON export of ``tasks`` (our queue export) answered from ANNOTATIONS.

    Crowd regions are left out (Label Studio has no crowd flag); an image without ground truth
    is submitted with no box (labeled as empty).
    """
    names = category_names(categories)
    sizes = {r["image_id"]: (r["width"], r["height"])
             for r in images.select(["image_id", "width", "height"]).to_pylist()}
    boxes: dict[int, list[dict]] = defaultdict(list)
    for row in ground_truth.select(["image_id", "category_id", "bbox", "iscrowd"]).to_pylist():
        if not row["iscrowd"]:
            boxes[row["image_id"]].append(row)
    exported = []
    for number, task in enumerate(tasks, start=1):
        image_id = int(task["data"]["image_id"])
        width, height = sizes[image_id]
        result = [_region(box, names, width, height, f"{image_id}-gt{k}", from_name, to_name)
                  for k, box in enumerate(boxes.get(image_id, []))]
        exported.append({
            **task, "id": number,
            "annotations": [{"id": number, "completed_by": 1, "was_cancelled": False,
                             "created_at": SUBMITTED_AT, "updated_at": SUBMITTED_AT,
                             "result": result}],
        })
    return exported


def _region(box: dict, names: dict[int, str], width: int, height: int, region_id: str,
            from_name: str, to_name: str) -> dict:
    b = box["bbox"]
    return {
        "id": region_id, "type": "rectanglelabels", "from_name": from_name, "to_name": to_name,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": b["xmin"] / width * 100.0, "y": b["ymin"] / height * 100.0,
                  "width": (b["xmax"] - b["xmin"]) / width * 100.0,
                  "height": (b["ymax"] - b["ymin"]) / height * 100.0, "rotation": 0,
                  "rectanglelabels": [names[box["category_id"]]]},
    }
