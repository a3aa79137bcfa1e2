"""Label import: a Label Studio or COCO export -> a label batch, and every bad input."""

from __future__ import annotations

import copy
import json
from typing import Any

import pyarrow as pa
import pytest

from al_assets.core import schemas
from al_assets.core.errors import CocoFormatError
from al_assets.core.labels import LabelBatch, LabelImportError, import_labels
from al_assets.core.queue.exports import ImageUrls, coco_preannotations, label_studio_tasks
from al_assets.core.storage.objects import ObjectStore
from al_assets.core.storage.s3 import S3Settings

SOURCE = "s3://labels/batch-007.json"
BATCH = "labels-007"
NAMES = {1: "circle", 2: "square", 5: "triangle"}


# -- a tiny pool -----------------------------------------------------------------------------
def pool_images() -> pa.Table:
    rows = [
        (12, "a.jpg", "file:///pool/images/a.jpg", 640, 480),
        (15, "sub/b.jpg", "file:///pool/images/sub/b.jpg", 800, 600),
        (20, "c.jpg", "s3://bucket/pool/c.jpg", 1000, 500),
        (21, "d.jpg", "file:///pool/images/d.jpg", 640, 480),
    ]
    return pa.Table.from_pylist(
        [
            {"image_id": i, "file_name": f, "uri": u, "width": w, "height": h,
             "date_captured": None, "batch": "batch-000", "shard": "s0"}
            for i, f, u, w, h in rows
        ],
        schema=schemas.IMAGES,
    )


def pool_categories() -> pa.Table:
    """Two ingest batches repeat the same categories: import must dedupe by id."""
    rows = [
        {"category_id": cid, "name": name, "supercategory": "shape", "batch": batch}
        for batch in ("batch-000", "batch-001") for cid, name in NAMES.items()
    ]
    return pa.Table.from_pylist(rows, schema=schemas.CATEGORIES)


def run(document: Any, batch: str = BATCH) -> LabelBatch:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return import_labels(data, SOURCE, batch, pool_images(), pool_categories())


def reasons(result: LabelBatch) -> list[str]:
    return result.rejects["reason"].to_pylist()


def boxes_of(result: LabelBatch, image_id: int) -> list[tuple[str, tuple[float, ...]]]:
    """(label, xyxy) of an image's boxes, sorted for comparison."""
    rows = [r for r in result.annotations.to_pylist() if r["image_id"] == image_id]
    return sorted(
        (r["label"], tuple(r["bbox"][k] for k in ("xmin", "ymin", "xmax", "ymax"))) for r in rows
    )


def n_boxes(result: LabelBatch) -> dict[int, int]:
    table = result.labeled_images
    return dict(zip(table["image_id"].to_pylist(), table["n_boxes"].to_pylist(), strict=True))


# -- the Label Studio export, built from what we export --------------------------------------
def detection(box: tuple[float, float, float, float], label_id: int, score: float) -> dict:
    xmin, ymin, xmax, ymax = box
    return {"box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}, "score": score,
            "label_id": label_id, "label_ids": [label_id], "scores": [score],
            "distribution": None}


PREDICTED = {
    12: [((64, 48, 192, 120), 1), ((320, 240, 400, 300), 2), ((10, 10, 50, 50), 1)],
    15: [((100, 100, 200, 250), 5)],
    21: [],
}


def exported_tasks(predicted: dict[int, list] = PREDICTED, **export: Any) -> list[dict]:
    """What label_studio_tasks writes for a queue of these images (12, 15 and 21)."""
    pool = {r["image_id"]: r for r in pool_images().to_pylist()}
    queue = pa.table({
        "queue_rank": pa.array(range(1, len(predicted) + 1), pa.int64()),
        "image_id": pa.array(list(predicted), pa.int64()),
        "uri": [pool[i]["uri"] for i in predicted],
        "uncertainty": [0.9, 0.5, None][:len(predicted)],
    })
    predictions = pa.Table.from_pylist(
        [
            {"image_id": i, "uri": pool[i]["uri"], "width": pool[i]["width"],
             "height": pool[i]["height"], "model_name": "m", "model_version": 1, "shard": "s0",
             "detections": [detection(box, label, 0.8) for box, label in dets]}
            for i, dets in predicted.items()
        ],
        schema=schemas.DETECTIONS,
    )
    return label_studio_tasks(queue, predictions, pool_categories(), model_version="v1",
                              **export)


def as_export(tasks: list[dict]) -> list[dict]:
    """Label Studio's export of the imported tasks, each labeled as its prediction."""
    exported = []
    for k, task in enumerate(copy.deepcopy(tasks)):
        results = task.pop("predictions")[0]["result"]
        for result in results:
            result.pop("score", None)
        task["id"] = 100 + k
        task["annotations"] = [annotation(500 + k, results)]
        exported.append(task)
    return exported


def annotation(ann_id: int, result: list[dict], updated: str = "2024-05-01T10:00:00Z",
               cancelled: bool = False) -> dict:
    return {"id": ann_id, "was_cancelled": cancelled, "created_at": "2024-05-01T09:00:00Z",
            "updated_at": updated, "result": result}


def rect(x: float, y: float, w: float, h: float, label: str, size=(640, 480), **extra) -> dict:
    item = {"id": f"r{x}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": size[0], "original_height": size[1], "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}
    item.update(extra)
    return item


def task(task_id: int, result: list[dict] | None, image: str | None = None,
         image_id: int | None = 12, annotations: list[dict] | None = None) -> dict:
    data: dict[str, Any] = {}
    if image is not None:
        data["image"] = image
    if image_id is not None:
        data["image_id"] = image_id
    if annotations is None:
        annotations = [] if result is None else [annotation(900 + task_id, result)]
    return {"id": task_id, "data": data, "annotations": annotations}


def edited_export() -> list[dict]:
    """A labeler moves a box, deletes one, relabels one and adds one on image 12."""
    export = as_export(exported_tasks())
    result = export[0]["annotations"][0]["result"]
    moved, _deleted, relabeled = result
    moved["value"].update(x=25.0, y=50.0, width=12.5, height=10.0)
    relabeled["value"]["rectanglelabels"] = ["square"]
    added = rect(50.0, 25.0, 25.0, 50.0, "triangle")
    export[0]["annotations"][0]["result"] = [moved, relabeled, added]
    return export


# -- Label Studio: the happy path ------------------------------------------------------------
def test_edited_export_becomes_a_label_batch() -> None:
    result = run(edited_export())
    assert result.format == "label_studio"
    assert result.annotations.schema.equals(schemas.ANNOTATIONS)
    assert result.labeled_images.schema.equals(schemas.LABELED_IMAGES)
    assert result.rejects.schema.equals(schemas.INGESTION_REJECTS)
    assert result.rejects.num_rows == 0, reasons(result)
    assert boxes_of(result, 12) == [
        ("circle", (160.0, 240.0, 240.0, 288.0)),  # moved: 25%..37.5% of 640, 50%..60% of 480
        ("square", pytest.approx((10.0, 10.0, 50.0, 50.0), abs=1e-3)),  # relabeled
        ("triangle", (320.0, 120.0, 480.0, 360.0)),  # added
    ]
    assert n_boxes(result) == {12: 3, 15: 1, 21: 0}  # 21: no box = labeled as empty
    assert result.labeled_images["record_id"].to_pylist() == ["100", "101", "102"]
    assert set(result.labeled_images["batch"].to_pylist()) == {BATCH}
    assert set(result.labeled_images["source"].to_pylist()) == {SOURCE}


def test_annotation_columns_follow_the_pool() -> None:
    rows = {r["label"]: r for r in run(edited_export()).annotations.to_pylist()
            if r["image_id"] == 12}
    added = rows["triangle"]
    assert added["category_id"] == 5 and rows["square"]["category_id"] == 2
    assert added["supercategory"] == "shape"
    assert added["bbox_xywh"] == [320.0, 120.0, 160.0, 240.0]
    assert added["area"] == 160.0 * 240.0
    assert added["iscrowd"] is False and added["segmentation"] is None
    assert added["batch"] == BATCH
    assert 0 < added["ann_id"] < 2**63


def test_untouched_prediction_round_trips_to_its_pixels() -> None:
    result = run(as_export(exported_tasks()))
    assert boxes_of(result, 15) == [("triangle", pytest.approx((100, 100, 200, 250), abs=1e-3))]
    assert len(boxes_of(result, 12)) == 3


def test_rows_are_sorted_and_import_is_deterministic() -> None:
    first, second = run(edited_export()), run(edited_export())
    assert first.annotations.equals(second.annotations)
    assert first.labeled_images.equals(second.labeled_images)
    keys = list(zip(first.annotations["image_id"].to_pylist(),
                    first.annotations["ann_id"].to_pylist(), strict=True))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_ann_ids_depend_on_batch_image_and_position_only() -> None:
    full = run(edited_export())
    alone = run([edited_export()[1]])  # image 15's task in a file of its own
    ids_15 = [r["ann_id"] for r in full.annotations.to_pylist() if r["image_id"] == 15]
    assert alone.annotations["ann_id"].to_pylist() == ids_15
    other_batch = run([edited_export()[1]], batch="labels-008")
    assert other_batch.annotations["ann_id"].to_pylist() != ids_15


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("/pool/images/sub/b.jpg", 15),  # what we export for file:// uris
        ("file:///pool/images/sub/b.jpg", 15),  # the exact uri
        ("/data/local-files/?d=pool/images/sub/b.jpg", 15),  # local-files serving
        ("/data/local-files/?d=images%2Fsub%2Fb.jpg", 15),  # url-encoded d
        ("s3://bucket/pool/c.jpg", 20),
        ("https://bucket.s3.amazonaws.com/pool/c.jpg?X-Amz-Signature=abc", 20),  # presigned
        ("/mnt/elsewhere/a.jpg", 12),  # the pool file_name as suffix
    ],
)
def test_task_matched_by_image_reference(image: str, expected: int) -> None:
    size = {12: (640, 480), 15: (800, 600), 20: (1000, 500)}[expected]
    result = run([task(1, [rect(10.0, 10.0, 10.0, 10.0, "circle", size=size)], image=image,
                       image_id=None)])
    assert n_boxes(result) == {expected: 1}


def _without_image_ids(export: list[dict]) -> list[dict]:
    for item in export:
        del item["data"]["image_id"]
    return export


@pytest.mark.parametrize("by_reference_only", [False, True])
def test_local_files_tasks_import_back_onto_their_images(by_reference_only: bool) -> None:
    tasks = exported_tasks(image_urls=ImageUrls("local-files", "/pool"))
    assert tasks[1]["data"]["image"] == "/data/local-files/?d=images/sub/b.jpg"
    export = as_export(tasks)
    result = run(_without_image_ids(export) if by_reference_only else export)
    default = run(as_export(exported_tasks()))  # the tasks with plain paths
    assert result.annotations.to_pylist() == default.annotations.to_pylist()
    assert n_boxes(result) == {12: 3, 15: 1, 21: 0}


S3_PREDICTED = {20: [((100, 50, 300, 250), 2)]}


@pytest.mark.parametrize(
    ("mode", "endpoint", "image"),
    [
        ("s3", None, "s3://bucket/pool/c.jpg"),
        ("presigned", None, "https://bucket.s3.amazonaws.com/pool/c.jpg?X-Amz-"),  # AWS
        ("presigned", "http://127.0.0.1:9000", "http://127.0.0.1:9000/bucket/pool/c.jpg?X-Amz-"),
    ],
)
def test_s3_tasks_import_back_onto_their_images(
    mode: str, endpoint: str | None, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    objects = ObjectStore(S3Settings(endpoint_url=endpoint, region="us-east-1",
                                     access_key_id="key", secret_access_key="secret"))
    tasks = exported_tasks(S3_PREDICTED, image_urls=ImageUrls(mode), objects=objects)
    assert tasks[0]["data"]["image"].startswith(image)  # presigning is local: no server needed
    for export in (as_export(tasks), _without_image_ids(as_export(tasks))):
        result = run(export)
        assert n_boxes(result) == {20: 1}
        assert boxes_of(result, 20) == [("square", (100.0, 50.0, 300.0, 250.0))]


def test_ambiguous_suffix_is_not_a_match() -> None:
    extra = pa.Table.from_pylist(
        [{"image_id": 30, "file_name": "other/b.jpg", "uri": "file:///pool2/other/b.jpg",
          "width": 800, "height": 600, "date_captured": None, "batch": "batch-001",
          "shard": "s1"}], schema=schemas.IMAGES)
    images = pa.concat_tables([pool_images(), extra])
    tasks = [task(1, [], image="/data/local-files/?d=b.jpg", image_id=None),  # 15 and 30
             task(2, [], image="/data/local-files/?d=other/b.jpg", image_id=None)]
    data = json.dumps(tasks).encode()
    result = import_labels(data, SOURCE, BATCH, images, pool_categories())
    assert n_boxes(result) == {30: 0}
    assert result.rejects["record_id"].to_pylist() == [1]
    assert "matches 2 pool images [15, 30]" in reasons(result)[0]


def test_image_id_disagreeing_with_reference_is_rejected() -> None:
    result = run([task(1, [], image="/pool/images/sub/b.jpg", image_id=12),
                  task(2, [], image_id=21)])
    assert n_boxes(result) == {21: 0}
    assert result.rejects["record_id"].to_pylist() == [1]
    assert "data.image_id 12 disagrees" in reasons(result)[0] and "15" in reasons(result)[0]


# -- Label Studio: record-level problems -----------------------------------------------------
def test_partial_export_imports_the_labeled_tasks() -> None:
    tasks = [
        task(1, [rect(10.0, 10.0, 10.0, 10.0, "circle")]),
        task(2, None, image_id=15),  # never labeled
        task(3, [], image_id=21, annotations=[annotation(7, [], cancelled=True)]),  # skipped
    ]
    result = run(tasks)
    assert n_boxes(result) == {12: 1}
    assert result.rejects["record_id"].to_pylist() == [2, 3]
    assert all("not labeled (partial export)" in r for r in reasons(result))
    assert set(result.rejects["record_type"].to_pylist()) == {"task"}


def test_latest_annotation_counts_and_history_is_noted() -> None:
    old = annotation(1, [rect(10.0, 10.0, 10.0, 10.0, "circle")], updated="2024-05-01T10:00:00Z")
    new = annotation(2, [rect(50.0, 50.0, 10.0, 10.0, "square")], updated="2024-05-02T10:00:00Z")
    cancelled = annotation(3, [], updated="2024-05-03T10:00:00Z", cancelled=True)
    result = run([task(7, None, annotations=[new, old, cancelled])])
    assert boxes_of(result, 12) == [("square", (320.0, 240.0, 384.0, 288.0))]
    assert reasons(result) == ["task 7 has 2 annotations; the latest (id 2) was used"]


def test_unknown_image_is_rejected() -> None:
    result = run([task(3, [], image="/other/zzz.jpg", image_id=None), task(4, [])])
    assert n_boxes(result) == {12: 0}
    assert result.rejects.to_pylist()[0]["record_type"] == "task"
    assert result.rejects.to_pylist()[0]["record_id"] == 3
    assert "'/other/zzz.jpg' is not in the pool" in reasons(result)[0]


def test_unknown_label_is_rejected_with_known_names() -> None:
    result = run([task(1, [rect(10.0, 10.0, 10.0, 10.0, "hexagon"),
                           rect(20.0, 20.0, 10.0, 10.0, "circle")])])
    assert boxes_of(result, 12) == [("circle", (128.0, 96.0, 192.0, 144.0))]
    (reason,) = reasons(result)
    assert "'hexagon' is not a pool category" in reason and "'triangle'" in reason
    assert result.rejects["record_type"].to_pylist() == ["annotation"]


def test_box_outside_is_rejected_and_partly_outside_is_clipped() -> None:
    result = run([task(1, [rect(110.0, 10.0, 10.0, 10.0, "circle"),
                           rect(90.0, -5.0, 20.0, 10.0, "square")])])
    assert boxes_of(result, 12) == [("square", (576.0, 0.0, 640.0, 24.0))]
    (reason,) = reasons(result)
    assert "entirely outside the 640x480 image" in reason


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (rect(10.0, 10.0, 10.0, 10.0, "circle"), None),
        (rect(10.0, 10.0, 0.0, 10.0, "circle"), "zero-size"),
        (rect(10.0, 10.0, 10.0, 10.0, "circle", size=(1280, 960)),
         "labeled on 1280x960 but the pool image is 640x480"),
        (rect(10.0, 10.0, 10.0, 10.0, "circle", image_rotation=90), "image rotated by 90"),
        ({**rect(10.0, 10.0, 10.0, 10.0, "circle"), "type": "polygonlabels"},
         "unsupported result type 'polygonlabels'"),
        ({**rect(10.0, 10.0, 10.0, 10.0, "circle"), "value": {
            "x": "10", "y": 1, "width": 1, "height": 1, "rectanglelabels": ["circle"]}},
         "non-numeric"),
    ],
)
def test_bad_box_is_rejected(item: dict, expected: str | None) -> None:
    result = run([task(1, [item, rect(50.0, 50.0, 10.0, 10.0, "square")])])
    if expected is None:  # control: the fixture box itself is fine
        assert n_boxes(result) == {12: 2} and result.rejects.num_rows == 0
        return
    assert n_boxes(result) == {12: 1}
    (reason,) = reasons(result)
    assert expected in reason and "task 1 result" in reason


def test_rotated_box_is_rejected() -> None:
    rotated = rect(10.0, 10.0, 10.0, 10.0, "circle")
    rotated["value"]["rotation"] = 30
    result = run([task(1, [rotated, rect(50.0, 50.0, 10.0, 10.0, "square")])])
    assert boxes_of(result, 12) == [("square", (320.0, 240.0, 384.0, 288.0))]
    assert "box rotated by 30 degrees" in reasons(result)[0]


def test_image_whose_boxes_all_fail_stays_unlabeled() -> None:
    result = run([task(1, [rect(10.0, 10.0, 10.0, 10.0, "hexagon")]), task(2, [], image_id=21)])
    assert n_boxes(result) == {21: 0}  # 12 is not declared empty
    assert "none of the 1 boxes of task 1" in reasons(result)[-1]


def test_image_labeled_twice_keeps_the_later_task() -> None:
    first = task(7, [rect(10.0, 10.0, 10.0, 10.0, "circle")])
    second = task(9, [rect(50.0, 50.0, 10.0, 10.0, "square")])
    result = run([first, second])
    assert boxes_of(result, 12) == [("square", (320.0, 240.0, 384.0, 288.0))]
    assert result.labeled_images["record_id"].to_pylist() == ["9"]
    assert result.rejects["record_id"].to_pylist() == [7]
    assert reasons(result) == ["image 12 labeled again by task 9; the later one wins"]


def test_image_labeled_twice_keeps_the_later_update() -> None:
    newer = task(7, None, annotations=[annotation(1, [rect(10.0, 10.0, 10.0, 10.0, "circle")],
                                                  updated="2024-06-01T00:00:00+00:00")])
    older = task(9, None, annotations=[annotation(2, [], updated="2024-05-01T00:00:00Z")])
    result = run([newer, older])
    assert n_boxes(result) == {12: 1}
    assert result.rejects["record_id"].to_pylist() == [9]


# -- file-level problems ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json", "malformed JSON at line 1"),
        (b'[{"data": "\xff"}]', "not UTF-8"),
        (json.dumps({"foo": 1}).encode(), "keys foo, neither format"),
        (json.dumps({"tasks": []}).encode(), "Label Studio JSON export"),
        (b"42", "top level is a JSON int"),
        (b"[]", "empty Label Studio export"),
        (json.dumps([1, 2]).encode(), "not a Label Studio JSON export"),
        (json.dumps([{"image": "/a.jpg", "label": []}]).encode(), "not 'JSON-MIN'"),
        (json.dumps(exported_tasks()).encode(), "an import file, not an export"),
        (json.dumps({"images": [], "categories": []}).encode(), "empty COCO file"),
    ],
)
def test_bad_file_raises_naming_the_file(data: bytes, expected: str) -> None:
    with pytest.raises(LabelImportError) as raised:
        run(data)
    assert str(raised.value).startswith(SOURCE) and expected in str(raised.value)
    assert isinstance(raised.value, CocoFormatError)


def test_nothing_usable_raises_with_first_reasons() -> None:
    tasks = [task(1, [], image="/nowhere/x.jpg", image_id=None), task(2, None)]
    with pytest.raises(LabelImportError, match="nothing usable: 2 tasks") as raised:
        run(tasks)
    message = str(raised.value)
    assert message.startswith(SOURCE)
    assert "'/nowhere/x.jpg' is not in the pool" in message and "partial export" in message


# -- COCO from other tools -------------------------------------------------------------------
def coco_file() -> dict:
    """A CVAT-like export: its own image and category ids, names as in the pool."""
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
            {"id": 2, "file_name": "sub/b.jpg", "width": 800, "height": 600},
            {"id": 3, "file_name": "d.jpg", "width": 640, "height": 480},  # no annotation
        ],
        "categories": [{"id": 1, "name": "triangle"}, {"id": 2, "name": "circle"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [790, 5, 20, 10], "iscrowd": 1},
        ],
    }


def test_coco_matches_names_and_file_names_and_remaps_ids() -> None:
    result = run(coco_file())
    assert result.format == "coco"
    assert result.rejects.num_rows == 0, reasons(result)
    assert boxes_of(result, 12) == [("circle", (10.0, 20.0, 40.0, 60.0))]
    assert boxes_of(result, 15) == [("triangle", (790.0, 5.0, 800.0, 15.0))]  # clipped
    rows = {r["image_id"]: r for r in result.annotations.to_pylist()}
    assert rows[12]["category_id"] == 1 and rows[15]["category_id"] == 5  # pool ids
    assert rows[15]["iscrowd"] is True and rows[12]["iscrowd"] is False
    assert n_boxes(result) == {12: 1, 15: 1, 21: 0}
    assert result.labeled_images["record_id"].to_pylist() == ["1", "2", "3"]


def test_coco_unknown_category_name_rejects_its_annotations() -> None:
    document = coco_file()
    document["categories"].append({"id": 3, "name": "star"})
    document["annotations"].append(
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]})
    result = run(document)
    assert boxes_of(result, 12) == [("circle", (10.0, 20.0, 40.0, 60.0))]
    assert result.rejects.to_pylist()[0]["record_id"] == 3
    assert "'star' is not a pool category" in reasons(result)[0]
    assert "'square'" in reasons(result)[0]


def test_coco_duplicate_image_keeps_the_later_listing() -> None:
    document = coco_file()
    document["images"].append({"id": 9, "file_name": "images/a.jpg", "width": 640, "height": 480})
    document["annotations"].append(
        {"id": 9, "image_id": 9, "category_id": 1, "bbox": [0, 0, 64, 48]})
    result = run(document)
    assert boxes_of(result, 12) == [("triangle", (0.0, 0.0, 64.0, 48.0))]
    assert dict(zip(result.labeled_images["image_id"].to_pylist(),
                    result.labeled_images["record_id"].to_pylist(), strict=True))[12] == "9"
    assert result.rejects.to_pylist()[0]["record_id"] == 1
    assert "listed again as image 9; the later one wins" in reasons(result)[0]


def test_coco_unknown_image_and_size_mismatch_are_rejected() -> None:
    document = coco_file()
    document["images"].append({"id": 4, "file_name": "zzz.jpg", "width": 10, "height": 10})
    document["images"][2]["width"] = 1280  # d.jpg labeled at another size
    result = run(document)
    assert n_boxes(result) == {12: 1, 15: 1}
    rejects = result.rejects.to_pylist()
    assert [(r["record_type"], r["record_id"]) for r in rejects] == [("image", 3), ("image", 4)]
    assert "labeled on 1280x480 but the pool image 21 is 640x480" in rejects[0]["reason"]
    assert "'zzz.jpg'" in rejects[1]["reason"] and "not in the pool" in rejects[1]["reason"]


def test_coco_duplicate_category_name_is_a_file_error() -> None:
    document = coco_file()
    document["categories"].append({"id": 7, "name": "circle"})
    with pytest.raises(LabelImportError, match="'circle' is used by ids 2 and 7"):
        run(document)


def test_our_own_coco_preannotations_import_by_coco_url() -> None:
    queue = pa.table({"queue_rank": pa.array([1], pa.int64()),
                      "image_id": pa.array([20], pa.int64()),
                      "uri": ["s3://bucket/pool/c.jpg"], "uncertainty": [0.3]})
    predictions = pa.Table.from_pylist(
        [{"image_id": 20, "uri": "s3://bucket/pool/c.jpg", "width": 1000, "height": 500,
          "model_name": "m", "model_version": 1, "shard": "s0",
          "detections": [detection((100, 50, 300, 250), 2, 0.9)]}],
        schema=schemas.DETECTIONS)
    document = coco_preannotations(queue, predictions, pool_images(), pool_categories())
    document["images"][0]["file_name"] = "renamed.jpg"  # coco_url alone must match
    document["images"][0]["id"] = 777
    document["annotations"][0]["image_id"] = 777
    result = run(document)
    assert boxes_of(result, 20) == [("square", (100.0, 50.0, 300.0, 250.0))]


# -- against a real ingested pool ------------------------------------------------------------
def test_demo_annotation_file_imports_as_the_ingested_boxes(tmp_path) -> None:
    """Ingestion and label import share the bbox rules: the same file gives the same boxes."""
    from al_assets.core.coco.ingest import IngestOptions, ingest_batch
    from al_assets.core.demo.generator import generate_demo_dataset
    from al_assets.core.storage import ObjectStore, to_uri

    (annotation_path,) = generate_demo_dataset(tmp_path, n_images=6, seed=0)
    ingested = ingest_batch(to_uri(annotation_path), to_uri(tmp_path / "images"), "batch-000",
                            ObjectStore(), IngestOptions(verify="none"))
    document = json.loads(annotation_path.read_bytes())
    for image in document["images"]:  # another tool's ids: must be remapped by file_name
        image["id"] += 1000
    for ann in document["annotations"]:
        ann["image_id"] += 1000
    result = import_labels(json.dumps(document).encode(), to_uri(annotation_path), BATCH,
                           ingested.images, ingested.categories)

    def boxes(table: pa.Table) -> list:
        return sorted((r["image_id"], r["label"], r["iscrowd"], tuple(r["bbox_xywh"]))
                      for r in table.to_pylist())

    assert result.annotations.num_rows == ingested.annotations.num_rows > 0
    assert boxes(result.annotations) == boxes(ingested.annotations)
    assert result.labeled_images["image_id"].to_pylist() == sorted(
        ingested.images["image_id"].to_pylist())
