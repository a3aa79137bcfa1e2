"""The labeling queue: greedy selection, near-duplicate hashing and the labeling-tool exports."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

from al_assets.core.queue import (
    ImageUrls,
    coco_preannotations,
    dhash,
    duplicate_clusters,
    label_studio_config,
    label_studio_tasks,
    perceptual_hashes,
    queue_csv,
    select_queue,
)
from al_assets.core.schemas import CATEGORIES, IMAGE_SCORES, IMAGES, LABELING_QUEUE, DETECTIONS
from al_assets.core.scoring.aggregation import aggregate_images
from al_assets.core.scoring.box_scores import box_scores
from al_assets.core.queue.exports import LOCAL_FILES_ROOT_ENV
from al_assets.core.storage.objects import ObjectStore
from al_assets.core.storage.s3 import S3Settings

WIDTH, HEIGHT = 200, 100


# -- hand-built tables ---------------------------------------------------------------------------
def _det(label: int, score: float, box: tuple[float, float, float, float] = (20, 10, 120, 60),
         others: tuple[int, ...] = (99,)) -> dict:
    """A detection whose foreground distribution puts ``score`` on ``label``."""
    rest = (1.0 - score) / len(others)
    return {
        "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box)), "score": score,
        "label_id": label, "label_ids": [label, *others], "scores": [score] + [rest] * len(others),
        "distribution": None,
    }


def _predictions(detections: dict[int, list[dict]], uri: str = "file:///pool/{}.jpg") -> pa.Table:
    rows = [
        {"image_id": i, "uri": uri.format(i), "width": WIDTH, "height": HEIGHT,
         "model_name": "detector", "model_version": 3, "shard": "s0", "detections": dets}
        for i, dets in detections.items()
    ]
    return pa.Table.from_pylist(rows, schema=DETECTIONS)


def _scores(predictions: pa.Table, uncertainty: dict[int, float | None]) -> pa.Table:
    """IMAGE_SCORES ranked by the given uncertainties (descending, empties last, ties by id)."""
    counts = dict(zip(predictions.column("image_id").to_pylist(),
                      (len(d) for d in predictions.column("detections").to_pylist())))
    uris = dict(zip(predictions.column("image_id").to_pylist(),
                    predictions.column("uri").to_pylist()))
    order = sorted(uncertainty, key=lambda i: (uncertainty[i] is None, -(uncertainty[i] or 0), i))
    rows = [
        {"image_id": i, "uri": uris[i], "measure": "entropy", "agg": "max", "top_k": None,
         "uncertainty": uncertainty[i], "n_detections": counts[i],
         "has_detections": counts[i] > 0, "rank": rank}
        for rank, i in enumerate(order, start=1)
    ]
    return pa.Table.from_pylist(rows, schema=IMAGE_SCORES)


def _categories(names: dict[int, str]) -> pa.Table:
    rows = [{"category_id": c, "name": n, "supercategory": "thing", "batch": "b0"}
            for c, n in names.items()]
    return pa.Table.from_pylist(rows, schema=CATEGORIES)


def _ids(queue: pa.Table) -> list[int]:
    return queue.column("image_id").to_pylist()


# Ranked 1..7 by uncertainty: image 10 most uncertain; 60 and 70 have no detections.
PRED = _predictions({
    10: [_det(1, 0.4), _det(1, 0.5), _det(2, 0.9)],  # top label 1 (most frequent)
    20: [_det(1, 0.6)],
    30: [_det(2, 0.3), _det(3, 0.8)],  # tie 2 vs 3 -> the higher score: 3
    40: [_det(2, 0.7)],
    50: [_det(3, 0.5)],
    60: [],
    70: [],
})
SCORES = _scores(PRED, {10: 0.93, 20: 0.9, 30: 0.8, 40: 0.7, 50: 0.6, 60: None, 70: None})


# -- selection -------------------------------------------------------------------------------------
def test_queue_follows_the_ranking_up_to_size() -> None:
    queue = select_queue(SCORES, PRED, size=3)
    assert queue.schema.equals(LABELING_QUEUE)
    assert _ids(queue) == [10, 20, 30]
    assert queue.column("queue_rank").to_pylist() == [1, 2, 3]
    assert queue.column("score_rank").to_pylist() == [1, 2, 3]
    assert queue.column("uri").to_pylist()[0] == "file:///pool/10.jpg"
    assert queue.column("strategy").to_pylist() == ["entropy"] * 3
    assert queue.column("uncertainty").to_pylist() == [0.93, 0.9, 0.8]
    assert queue.column("n_detections").to_pylist() == [3, 1, 2]
    assert queue.column("reason").to_pylist()[:2] == [
        "entropy max 0.93 over 3 boxes", "entropy max 0.90 over 1 box"]


def test_top_label_is_most_frequent_then_highest_score() -> None:
    queue = select_queue(SCORES, PRED, size=7)
    assert dict(zip(_ids(queue), queue.column("top_label_id").to_pylist())) == {
        10: 1, 20: 1, 30: 3, 40: 2, 50: 3, 60: None, 70: None}
    assert dict(zip(_ids(queue), queue.column("labels").to_pylist())) == {
        10: [1, 2], 20: [1], 30: [2, 3], 40: [2], 50: [3], 60: [], 70: []}
    assert queue.column("reason").to_pylist()[5] == (
        "no detections (placed by the empty-image policy)")


def test_class_cap_counts_images_without_detections_as_one_class() -> None:
    queue = select_queue(SCORES, PRED, size=10, max_per_class=1)
    # 20 repeats class 1, 50 repeats class 3 and 70 repeats the no-detection class
    assert _ids(queue) == [10, 30, 40, 60]
    assert queue.column("score_rank").to_pylist() == [1, 3, 4, 6]
    two = select_queue(SCORES, PRED, size=10, max_per_class=2)
    assert _ids(two) == [10, 20, 30, 40, 50, 60, 70]


def test_already_labeled_images_are_skipped() -> None:
    queue = select_queue(SCORES, PRED, size=3, exclude_image_ids=iter([10, 30]))
    assert _ids(queue) == [20, 40, 50]
    assert queue.column("queue_rank").to_pylist() == [1, 2, 3]


def test_a_duplicate_cluster_gives_only_its_most_uncertain_image() -> None:
    clusters = {10: 10, 30: 10, 50: 10, 20: 20, 40: 40}
    queue = select_queue(SCORES, PRED, size=4, duplicates=clusters)
    assert _ids(queue) == [10, 20, 40, 60]
    assert queue.column("reason").to_pylist()[0] == (
        "entropy max 0.93 over 3 boxes; stands for 2 near-duplicates")
    # a cluster with an already labeled member gives nothing: it would be a copy of a label
    labeled = select_queue(SCORES, PRED, size=4, duplicates=clusters, exclude_image_ids=[50])
    assert _ids(labeled) == [20, 40, 60, 70]


def test_fewer_eligible_images_than_size_gives_a_shorter_queue() -> None:
    queue = select_queue(SCORES, PRED, size=100, max_per_class=1, exclude_image_ids=[60])
    assert _ids(queue) == [10, 30, 40, 70]
    empty = select_queue(SCORES.slice(0, 0), PRED, size=5)
    assert empty.num_rows == 0 and empty.schema.equals(LABELING_QUEUE)


def test_selection_does_not_depend_on_row_order() -> None:
    shuffled_scores = SCORES.take([4, 0, 6, 2, 1, 5, 3])
    reversed_pred = PRED.take([6, 5, 4, 3, 2, 1, 0])
    shuffled_pred = pa.concat_tables([reversed_pred.slice(0, 3), reversed_pred.slice(3)])
    assert shuffled_pred.column("detections").num_chunks == 2  # chunked, with offsets
    for cap in (None, 1):
        assert select_queue(shuffled_scores, shuffled_pred, size=5, max_per_class=cap).equals(
            select_queue(SCORES, PRED, size=5, max_per_class=cap))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s, p: (s, p, {"size": 0}), "size must be >= 1"),
        (lambda s, p: (s, p, {"size": 2, "max_per_class": 0}), "max_per_class must be >= 1"),
        (lambda s, p: (s.drop_columns(["rank"]), p, {"size": 2}), "image_scores has no column"),
        (lambda s, p: (s, p.drop_columns(["detections"]), {"size": 2}), "predictions has no"),
        (lambda s, p: (s, p.slice(1), {"size": 2}), "image_id 10, which has no row in pred"),
        (lambda s, p: (s, pa.concat_tables([p, p]), {"size": 2}), "more than once"),
        (lambda s, p: (s, _predictions({i: [] for i in range(10, 80, 10)}), {"size": 2}),
         "has 3 detections in image_scores but 0 in predictions"),
        (lambda s, p: (pa.concat_tables([s, s.set_column(2, IMAGE_SCORES.field("measure"), pa.array(
            ["margin"] * 7))]), p, {"size": 2}), "mixes several values of 'measure'"),
    ],
)
def test_selection_errors_name_the_problem(change, message: str) -> None:
    scores, predictions, kwargs = change(SCORES, PRED)
    with pytest.raises(ValueError, match=message):
        select_queue(scores, predictions, **kwargs)


def test_queue_from_the_real_scoring_chain() -> None:
    predictions = _predictions({
        1: [_det(1, 0.95, others=(2,)), _det(2, 0.55, others=(1,))],
        2: [_det(2, 0.6, others=(1,))],
        3: [_det(1, 0.99, others=(2,))],
        4: [],
    })
    scores = aggregate_images(box_scores(predictions, num_classes=2), predictions,
                              measure="least_confidence", agg="max")
    queue = select_queue(scores, predictions, size=3)
    assert _ids(queue) == [1, 2, 3]  # 1 - 0.55 > 1 - 0.6 > 1 - 0.99
    assert queue.column("top_label_id").to_pylist() == [1, 2, 1]  # 1: tie, 0.95 beats 0.55
    assert queue.column("reason").to_pylist()[0] == "least_confidence max 0.45 over 2 boxes"


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_selection_invariants(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 12))
    labels = data.draw(st.lists(st.lists(st.integers(1, 3), max_size=3), min_size=n, max_size=n))
    predictions = _predictions({i: [_det(lab, 0.5) for lab in ls] for i, ls in enumerate(labels)})
    uncertainty = {i: (None if not ls else data.draw(st.floats(0, 1))) for i, ls in
                   enumerate(labels)}
    scores = _scores(predictions, uncertainty)
    size, cap = data.draw(st.integers(1, 8)), data.draw(st.none() | st.integers(1, 3))
    excluded = set(data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=3)))
    clusters = {i: data.draw(st.integers(0, 3)) for i in range(n) if data.draw(st.booleans())}
    queue = select_queue(scores, predictions, size=size, max_per_class=cap,
                         exclude_image_ids=excluded, duplicates=clusters)
    # equal scores: the most frequent label, ties to the lowest id
    classes = {i: min(ls, key=lambda lab: (-ls.count(lab), lab)) if ls else None
               for i, ls in enumerate(labels)}
    assert queue.column("top_label_id").to_pylist() == [classes[i] for i in _ids(queue)]
    _check_greedy(queue, scores, classes, size, cap, excluded, clusters)


def _check_greedy(queue, scores, classes, size, cap, excluded, clusters) -> None:
    """Constraints hold, and every image skipped before the queue ends had a reason."""
    picked = set(_ids(queue))
    ranks = queue.column("score_rank").to_pylist()
    assert len(picked) <= size and ranks == sorted(ranks)
    assert not excluded & picked
    last = ranks[-1] if len(ranks) == size else float("inf")
    seen_clusters = {clusters[i] for i in excluded if i in clusters}
    taken: list[int | None] = []
    for row in scores.to_pylist():
        i = row["image_id"]
        if row["rank"] > last:
            break
        cluster, label = clusters.get(i), classes[i]
        capped = cap is not None and taken.count(label) >= cap
        if i in picked:
            assert not capped and (cluster is None or cluster not in seen_clusters)
            taken.append(label)
        else:
            assert i in excluded or capped or (cluster is not None and cluster in seen_clusters)
        if cluster is not None and i not in excluded:
            seen_clusters.add(cluster)
    assert len(taken) == len(picked)


# -- near-duplicates ------------------------------------------------------------------------------
def _scene(seed: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A photo-like RGB image: smooth random colours (dHash keys on low frequencies)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC))


def _save(array: np.ndarray, path: Path, **options) -> str:
    Image.fromarray(array).save(path, **options)
    return path.as_uri()


def test_near_duplicates_cluster_and_a_different_image_does_not(tmp_path: Path) -> None:
    scene = _scene(1)
    shifted = np.roll(scene, 1, axis=1)  # one pixel to the right
    uris = {
        1: _save(scene, tmp_path / "a.jpg", quality=95),
        2: _save(shifted, tmp_path / "a_shifted.jpg", quality=60),
        3: _save(scene, tmp_path / "a_q30.jpg", quality=30),
        4: _save(_scene(2), tmp_path / "b.png"),
    }
    hashes, failures = perceptual_hashes(list(uris.values()), ObjectStore())
    assert failures == []
    by_id = {i: hashes[u] for i, u in uris.items()}
    assert bin(by_id[1] ^ by_id[2]).count("1") <= 4
    assert bin(by_id[1] ^ by_id[4]).count("1") > 12
    assert duplicate_clusters(by_id) == {1: 1, 2: 1, 3: 1, 4: 4}
    assert duplicate_clusters(by_id, max_distance=0)[4] == 4


def test_hashing_reports_unreadable_images_and_goes_on(tmp_path: Path) -> None:
    good = _save(_scene(3), tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    broken, missing = (tmp_path / "broken.jpg").as_uri(), (tmp_path / "gone.jpg").as_uri()
    result = perceptual_hashes([broken, good, missing, good], ObjectStore())
    assert list(result.hashes) == [good]
    assert [f.uri for f in result.failures] == [broken, missing]
    assert "not a readable image" in result.failures[0].error
    assert "FileNotFoundError" in result.failures[1].error


def test_dhash_bits_follow_horizontal_gradients(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (40, 1))
    data = {name: io.BytesIO() for name in ("up", "down")}
    Image.fromarray(ramp).save(data["up"], "PNG")
    Image.fromarray(ramp[:, ::-1].copy()).save(data["down"], "PNG")
    assert dhash(data["up"].getvalue(), "up") == 2**64 - 1  # every pixel darker than its right
    assert dhash(data["down"].getvalue(), "down") == 0
    assert dhash(data["up"].getvalue(), "up", hash_size=16) == 2**256 - 1


def test_dhash_reads_16_bit_and_transparent_images_like_8_bit(tmp_path: Path) -> None:
    gray = np.asarray(Image.fromarray(_scene(4)).convert("L"))
    reference = dhash(_encoded(Image.fromarray(gray)), "gray")
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    rgba = Image.fromarray(np.dstack([np.repeat(gray[:, :, None], 3, 2), np.full_like(gray, 255)]))
    for image in (sixteen, rgba):
        assert bin(dhash(_encoded(image), "x") ^ reference).count("1") <= 2


def _encoded(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_clusters_are_single_linkage_with_the_smallest_id() -> None:
    hashes = {7: 0b0, 5: 0b111, 9: 0b1111111, 3: 2**64 - 1, 4: (2**64 - 1) ^ 0b1}
    # 7~5 (3 bits), 5~9 (4 bits) chain although 7 and 9 differ in 7; 3~4 (1 bit)
    assert duplicate_clusters(hashes) == {3: 3, 4: 3, 5: 5, 7: 5, 9: 5}
    assert duplicate_clusters(hashes, max_distance=3) == {3: 3, 4: 3, 5: 5, 7: 5, 9: 9}
    wide = {1: 1 << 200, 2: (1 << 200) | 1, 3: 1 << 100}  # 256-bit hashes: several words
    assert duplicate_clusters(wide, max_distance=1) == {1: 1, 2: 1, 3: 3}
    assert duplicate_clusters(wide, max_distance=2) == {1: 1, 2: 1, 3: 1}
    assert duplicate_clusters({}) == {}


@pytest.mark.parametrize(
    ("hashes", "kwargs", "message"),
    [({1: -1}, {}, "hash of image_id 1"), ({1: 0}, {"max_distance": -1}, "max_distance")],
)
def test_cluster_errors(hashes: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        duplicate_clusters(hashes, **kwargs)


# -- exports -------------------------------------------------------------------------------------
NAMES = {1: "person", 2: 'sign, "stop"', 3: "a<b&c>", 4: "unused"}
EXPORT_PRED = _predictions({
    10: [_det(2, 0.9, (20, 10, 120, 60)), _det(1, 0.2, (-10, 0, 250, 100))],
    20: [_det(3, 0.7, (0, 50, 200, 100))],
    30: [],
    40: [_det(1, 0.8)],
}, uri="s3://bucket/pool/{}.jpg")
EXPORT_QUEUE = select_queue(  # 10, 20, 30
    _scores(EXPORT_PRED, {10: 0.8, 20: 0.6, 30: None, 40: 0.1}), EXPORT_PRED, size=3,
    exclude_image_ids=[40])


def _images_table(predictions: pa.Table) -> pa.Table:
    rows = [{"image_id": i, "file_name": f"{i}.jpg", "uri": f"s3://bucket/pool/{i}.jpg",
             "width": WIDTH, "height": HEIGHT, "date_captured": None, "batch": "b0",
             "shard": "s0"} for i in predictions.column("image_id").to_pylist()]
    return pa.Table.from_pylist(rows, schema=IMAGES)


def test_coco_preannotations_load_in_pycocotools(tmp_path: Path) -> None:
    document = coco_preannotations(EXPORT_QUEUE, EXPORT_PRED, _images_table(EXPORT_PRED),
                                   _categories(NAMES), score_thresh=0.5)
    path = tmp_path / "queue.json"
    path.write_text(json.dumps(document))
    coco = COCO(str(path))
    assert [img["id"] for img in document["images"]] == [10, 20, 30]
    assert sorted(coco.getImgIds()) == [10, 20, 30] and sorted(coco.getCatIds()) == [1, 2, 3, 4]
    assert len(coco.getAnnIds()) == 2  # the 0.2 box is under score_thresh; 40 is not queued
    first = coco.loadAnns(coco.getAnnIds(imgIds=[10]))[0]
    assert first["bbox"] == [20, 10, 100, 50] and first["area"] == 5000
    assert (first["category_id"], first["iscrowd"]) == (2, 0)
    assert first["score"] == pytest.approx(0.9)
    assert coco.loadImgs(20)[0] == {
        "id": 20, "file_name": "20.jpg", "width": WIDTH, "height": HEIGHT,
        "coco_url": "s3://bucket/pool/20.jpg", "queue_rank": 2, "uncertainty": 0.6}
    assert coco.loadImgs(30)[0]["uncertainty"] is None
    assert coco.loadCats(3)[0]["name"] == "a<b&c>"
    everything = coco_preannotations(EXPORT_QUEUE, EXPORT_PRED, _images_table(EXPORT_PRED),
                                     _categories(NAMES))
    assert [a["id"] for a in everything["annotations"]] == [1, 2, 3]


def test_exports_refuse_labels_missing_from_categories() -> None:
    with pytest.raises(ValueError, match="category_id 3, which categories lacks"):
        coco_preannotations(EXPORT_QUEUE, EXPORT_PRED, _images_table(EXPORT_PRED),
                            _categories({1: "person", 2: "sign"}))
    with pytest.raises(ValueError, match="queued image_id 10 is not in the images table"):
        coco_preannotations(EXPORT_QUEUE, EXPORT_PRED, _images_table(EXPORT_PRED).slice(1),
                            _categories(NAMES))
    with pytest.raises(ValueError, match="id 1 two names"):
        label_studio_tasks(EXPORT_QUEUE, EXPORT_PRED, pa.concat_tables(
            [_categories(NAMES), _categories({1: "human"})]), model_version="3")


LABEL_STUDIO_TASK = {
    "type": "object",
    "required": ["data", "predictions"],
    "properties": {
        "data": {
            "type": "object", "required": ["image", "image_id", "queue_rank"],
            "properties": {"image": {"type": "string", "minLength": 1},
                           "image_id": {"type": "integer"}, "queue_rank": {"type": "integer"}},
        },
        "predictions": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["model_version", "result"],
            "properties": {
                "model_version": {"type": "string"}, "score": {"type": "number"},
                "result": {"type": "array", "items": {"$ref": "#/$defs/result"}},
            },
        }},
    },
    "$defs": {
        "percent": {"type": "number", "minimum": 0, "maximum": 100},
        "result": {
            "type": "object",
            "required": ["id", "type", "from_name", "to_name", "original_width",
                         "original_height", "image_rotation", "value", "score"],
            "properties": {
                "id": {"type": "string"}, "type": {"const": "rectanglelabels"},
                "from_name": {"const": "label"}, "to_name": {"const": "image"},
                "original_width": {"type": "integer", "minimum": 1},
                "original_height": {"type": "integer", "minimum": 1},
                "image_rotation": {"const": 0}, "score": {"type": "number"},
                "value": {
                    "type": "object", "additionalProperties": False,
                    "required": ["x", "y", "width", "height", "rotation", "rectanglelabels"],
                    "properties": {
                        "x": {"$ref": "#/$defs/percent"}, "y": {"$ref": "#/$defs/percent"},
                        "width": {"$ref": "#/$defs/percent"},
                        "height": {"$ref": "#/$defs/percent"}, "rotation": {"const": 0},
                        "rectanglelabels": {"type": "array", "minItems": 1, "maxItems": 1,
                                            "items": {"type": "string"}},
                    },
                },
            },
        },
    },
}


def test_label_studio_tasks_match_the_import_format() -> None:
    tasks = label_studio_tasks(EXPORT_QUEUE, EXPORT_PRED, _categories(NAMES), model_version="3")
    jsonschema.validate(tasks, {"type": "array", "items": LABEL_STUDIO_TASK,
                                "$defs": LABEL_STUDIO_TASK["$defs"]})
    json.dumps(tasks)  # plain JSON types only
    assert [t["data"]["image_id"] for t in tasks] == [10, 20, 30]
    assert tasks[0]["data"] == {"image": "s3://bucket/pool/10.jpg", "image_id": 10,
                                "queue_rank": 1}
    first, clipped = tasks[0]["predictions"][0]["result"]
    # (20, 10, 120, 60) on 200 x 100: x 10 %, y 10 %, width 50 %, height 50 %
    assert {k: first["value"][k] for k in ("x", "y", "width", "height")} == pytest.approx(
        {"x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0})
    assert first["value"]["rectanglelabels"] == ['sign, "stop"']
    # (-10, 0, 250, 100) sticks out of the image: clipped to the whole image
    assert [clipped["value"][k] for k in ("x", "y", "width", "height")] == [0, 0, 100, 100]
    assert clipped["value"]["rectanglelabels"] == ["person"]
    assert first["id"] != clipped["id"]
    assert tasks[0]["predictions"][0]["score"] == pytest.approx(0.8)
    assert "score" not in tasks[2]["predictions"][0] and tasks[2]["predictions"][0]["result"] == []


def test_label_studio_gets_local_paths_for_file_uris(tmp_path: Path) -> None:
    image = tmp_path / "pool dir" / "1.jpg"
    predictions = _predictions({1: [_det(1, 0.5)]}, uri=image.as_uri())
    queue = select_queue(_scores(predictions, {1: 0.5}), predictions, size=1)
    task = label_studio_tasks(queue, predictions, _categories(NAMES), model_version="v")[0]
    assert task["data"]["image"] == str(image)


# -- Label Studio image URLs ------------------------------------------------------------------
LABEL_STUDIO_TASKS = {"type": "array", "items": LABEL_STUDIO_TASK,
                      "$defs": LABEL_STUDIO_TASK["$defs"]}


def _task_images(uris: list[str], urls: ImageUrls, objects: ObjectStore | None = None) -> list[str]:
    """data.image of a queue of images 1, 2, ... at ``uris``, its tasks checked against the
    documented import format."""
    predictions = _predictions({i: [_det(1, 0.5)] for i in range(1, len(uris) + 1)})
    predictions = predictions.set_column(predictions.schema.get_field_index("uri"), "uri",
                                         pa.array(uris))
    queue = select_queue(_scores(predictions, dict.fromkeys(range(1, len(uris) + 1), 0.5)),
                         predictions, size=len(uris))
    tasks = label_studio_tasks(queue, predictions, _categories(NAMES), model_version="v",
                               image_urls=urls, objects=objects)
    jsonschema.validate(tasks, LABEL_STUDIO_TASKS)
    assert [t["data"]["image_id"] for t in tasks] == list(range(1, len(uris) + 1))
    return [t["data"]["image"] for t in tasks]


LOCAL_NAMES = ["images/a.jpg", "images/sub dir/b c+d&e#f%.jpg", "images/ünï.jpg"]


def test_local_files_urls_are_relative_to_the_document_root_and_encoded(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    images = _task_images([(root / n).as_uri() for n in LOCAL_NAMES],
                          ImageUrls("local-files", f"{root}/"))
    assert images[:2] == ["/data/local-files/?d=images/a.jpg",
                          "/data/local-files/?d=images/sub%20dir/b%20c%2Bd%26e%23f%25.jpg"]
    for image, name in zip(images, LOCAL_NAMES, strict=True):  # what Label Studio decodes
        url = urlparse(image)
        assert (url.path, parse_qs(url.query)) == ("/data/local-files/", {"d": [name]})


def test_local_files_root_may_be_a_symlink_or_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "pool"
    root.mkdir()
    link = tmp_path / "link"
    link.symlink_to(root)
    uris = [(root / "images" / "a.jpg").as_uri()]
    expected = ["/data/local-files/?d=images/a.jpg"]
    assert _task_images(uris, ImageUrls("local-files", str(link))) == expected
    monkeypatch.setenv(LOCAL_FILES_ROOT_ENV, str(root))
    assert _task_images(uris, ImageUrls("local-files")) == expected
    monkeypatch.delenv(LOCAL_FILES_ROOT_ENV)
    with pytest.raises(ValueError, match=f"local_files_root \\(or env {LOCAL_FILES_ROOT_ENV}\\)"):
        ImageUrls("local-files")


def test_s3_urls_stay_s3_uris_for_a_label_studio_s3_storage() -> None:
    tasks = label_studio_tasks(EXPORT_QUEUE, EXPORT_PRED, _categories(NAMES), model_version="3",
                               image_urls=ImageUrls("s3"))
    jsonschema.validate(tasks, LABEL_STUDIO_TASKS)
    assert [t["data"]["image"] for t in tasks] == [
        f"s3://bucket/pool/{i}.jpg" for i in (10, 20, 30)]


@pytest.mark.parametrize(
    ("uri", "urls", "message"),
    [
        ("file:///data/pool/a.jpg", ImageUrls("local-files", "/srv/ls"),
         "image /data/pool/a.jpg is outside local_files_root /srv/ls, so Label Studio cannot "
         "serve it; set local_files_root"),
        ("s3://bucket/a.jpg", ImageUrls("local-files", "/srv/ls"),
         "image s3://bucket/a.jpg is in S3, but image_urls='local-files' serves local files"),
        ("file:///data/pool/a.jpg", ImageUrls("s3"),
         "image /data/pool/a.jpg is a local file, but image_urls='s3' needs S3 objects; use "
         "image_urls='local-files'"),
        ("file:///data/pool/a.jpg", ImageUrls("presigned"), "image_urls='presigned' needs S3"),
    ],
)
def test_impossible_image_url_combinations_name_image_and_fix(
    uri: str, urls: ImageUrls, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        _task_images([uri], urls)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "url"}, "unknown image_urls 'url'; use one of \\['path', 'local-files'"),
        ({"mode": "local-files", "local_files_root": "pool"}, "must be an absolute path"),
        ({"mode": "presigned", "presign_hours": 0}, "presign_hours must be 1..168"),
        ({"mode": "presigned", "presign_hours": 169}, "at most 7 days"),
    ],
)
def test_image_url_settings_are_checked_up_front(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageUrls(**kwargs)


def test_presigned_urls_serve_the_image_without_credentials(s3_open_server) -> None:
    server = s3_open_server
    keys = ["pool/images/a.jpg", "pool/images/sub dir/b+c.jpg"]
    server.client().create_bucket(Bucket="presigned")
    for key in keys:
        server.client().put_object(Bucket="presigned", Key=key, Body=f"bytes of {key}".encode())
    objects = ObjectStore(S3Settings(endpoint_url=server.endpoint_url,
                                     access_key_id=server.access_key_id,
                                     secret_access_key=server.secret_access_key))
    images = _task_images([f"s3://presigned/{k}" for k in keys],
                          ImageUrls("presigned", presign_hours=2), objects)
    for image, key in zip(images, keys, strict=True):
        query = parse_qs(urlparse(image).query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # SigV4: every region takes it
        assert query["X-Amz-Expires"] == ["7200"]
        # a plain GET, as a browser; a fresh opener: urlopen's global one keeps the proxies of
        # the environment it first saw (another test points them at a closed port)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(image, timeout=10) as response:
            assert response.read() == f"bytes of {key}".encode()


def test_label_studio_config_is_xml_with_escaped_names() -> None:
    config = label_studio_config(_categories(NAMES))
    assert "a&lt;b&amp;c&gt;" in config and "a<b" not in config
    root = ET.fromstring(config)
    assert root.tag == "View"
    image, labels = list(root)
    assert (image.tag, image.get("name"), image.get("value")) == ("Image", "image", "$image")
    assert (labels.tag, labels.get("name"), labels.get("toName")) == (
        "RectangleLabels", "label", "image")
    assert [label.get("value") for label in labels] == list(NAMES.values())


def test_queue_csv_round_trips_names_with_commas_and_quotes() -> None:
    queue = select_queue(_scores(EXPORT_PRED, {10: 1 / 3, 20: 0.6, 30: None, 40: 0.1}),
                         EXPORT_PRED, size=4, max_per_class=1)
    rows = list(csv.DictReader(io.StringIO(queue_csv(queue, _categories(NAMES)).decode())))
    assert list(rows[0]) == ["queue_rank", "image_id", "uri", "strategy", "agg", "uncertainty",
                             "n_detections", "top_label"]
    assert [(r["image_id"], r["top_label"]) for r in rows] == [
        ("20", "a<b&c>"), ("10", 'sign, "stop"'), ("40", "person"), ("30", "")]
    assert float(rows[1]["uncertainty"]) == 1 / 3  # full precision
    assert rows[3]["uncertainty"] == "" and rows[3]["n_detections"] == "0"
    assert rows[0]["uri"] == "s3://bucket/pool/20.jpg" and rows[0]["strategy"] == "entropy"
    by_id = list(csv.DictReader(io.StringIO(queue_csv(queue).decode())))
    assert [r["top_label"] for r in by_id] == ["3", "2", "1", ""]
