"""The array COCOeval (al_assets.core.analysis.cocoeval) against pycocotools' COCOeval itself.

Every number the project reports goes through CocoAccumulator, so it must equal COCOeval's:
on random sets built to hit its corner cases (crowd regions, all area ranges, equal scores,
more than 100 detections of one class in an image, images without boxes, batches of images)
and on the demo detector over the demo dataset.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from al_assets.core.analysis.cocoeval import CocoAccumulator, Detections, GroundTruth
from al_assets.core.analysis.evaluation import (
    _label_mapping,
    _predict,
    coco_map_from_detections,
    evaluate_coco_map,
    evaluate_predictions,
)
from al_assets.core.demo.generator import generate_demo_dataset
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.detection.sources import DEMO_CHECKPOINT
from al_assets.core.detection.training import CocoDetectionDataset
from al_assets.core.schemas import ANNOTATIONS, CATEGORIES, IMAGES, DETECTIONS
from tests.core.coco_reference import cocoeval_of_records, per_category

TOLERANCE = 1e-6  # the bar; in practice the numbers are bit-identical (0.0)


def _random_set(seed: int, images: int = 60, classes: int = 4, ties: bool = False):
    """COCO annotation and result dicts with crowd, small/medium/large and crowded images."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image in range(1, images + 1):
        own = []
        for _ in range(rng.integers(0, 7)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.choice([rng.uniform(2, 30), rng.uniform(30, 100), rng.uniform(96, 200)], 2)
            own.append({"image_id": image, "category_id": int(rng.integers(classes)) + 1,
                        "bbox": [x, y, w, h], "area": float(w * h * rng.uniform(0.5, 1.0)),
                        "iscrowd": int(rng.random() < 0.08)})
        gts += own
        for _ in range(rng.integers(0, 11)):
            if own and rng.random() < 0.7:  # near a ground-truth box, mostly the right class
                g = own[rng.integers(len(own))]
                box = np.array(g["bbox"]) + rng.normal(0, 3, 4)
                box[2:] = np.abs(box[2:]) + 0.5
                label = g["category_id"] if rng.random() < 0.8 else int(rng.integers(classes)) + 1
            else:
                box, label = np.r_[rng.uniform(0, 200, 2), rng.uniform(1, 120, 2)], int(
                    rng.integers(classes)) + 1
            score = float(rng.choice([0.25, 0.5, 0.75]) if ties else np.float32(rng.random()))
            dets.append({"image_id": image, "category_id": label,
                         "bbox": [float(v) for v in box], "score": score})
    for _ in range(130):  # > 100 detections of one class in one image: COCOeval keeps 100
        box = np.r_[rng.uniform(0, 200, 2), rng.uniform(1, 60, 2)]
        dets.append({"image_id": 1, "category_id": 1, "bbox": [float(v) for v in box],
                     "score": float(rng.random())})
    return gts, dets, list(range(1, images + 1)), list(range(1, classes + 1))


def _arrays(rows: list[dict], truth: bool) -> Detections | GroundTruth:
    image = np.array([r["image_id"] for r in rows], np.int64)
    category = np.array([r["category_id"] - 1 for r in rows], np.int64)
    xywh = np.array([r["bbox"] for r in rows], np.float64).reshape(-1, 4)
    if truth:
        return GroundTruth(image, category, xywh, np.array([r["area"] for r in rows], float),
                           np.array([bool(r["iscrowd"]) for r in rows], bool))
    return Detections(image, category, xywh, np.array([r["score"] for r in rows], float))


def _accumulated(gts: list[dict], dets: list[dict], image_ids: list[int], classes: int,
                 batch: int):
    accumulator = CocoAccumulator(classes)
    for start in range(0, len(image_ids), batch):
        chunk = set(image_ids[start:start + batch])
        accumulator.add(_arrays([d for d in dets if d["image_id"] in chunk], False),
                        _arrays([g for g in gts if g["image_id"] in chunk], True))
    return accumulator.result()


@pytest.mark.parametrize("seed", range(8))
def test_random_sets_equal_pycocotools(seed: int) -> None:
    gts, dets, image_ids, category_ids = _random_set(seed, ties=seed % 3 == 0)
    reference = cocoeval_of_records(gts, dets, image_ids, category_ids)
    result = _accumulated(gts, dets, image_ids, len(category_ids), batch=7 + seed)
    np.testing.assert_allclose(result.precision, reference.eval["precision"][..., -1],
                               rtol=0, atol=TOLERANCE)
    stats = [-1.0 if v is None else v for v in result.stats().values()]
    np.testing.assert_allclose(stats, reference.stats[:6], rtol=0, atol=TOLERANCE)
    ours, theirs = result.per_category(category_ids), per_category(reference)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert (ours[k] is None) == (theirs[k] is None)
        assert ours[k] is None or abs(ours[k] - theirs[k]) <= TOLERANCE
    assert stats[0] < 0.9  # not a trivial set


def test_the_result_does_not_depend_on_the_batching() -> None:
    gts, dets, image_ids, category_ids = _random_set(11)
    one = _accumulated(gts, dets, image_ids, len(category_ids), batch=len(image_ids))
    many = _accumulated(gts, dets, image_ids, len(category_ids), batch=1)
    assert np.array_equal(one.precision, many.precision)


def test_bad_category_index_is_refused() -> None:
    gts, dets, image_ids, _ = _random_set(1)
    with pytest.raises(ValueError, match="category index 3 is outside 0..2"):
        CocoAccumulator(3).add(_arrays(dets, False), _arrays(gts, True))


def _tables(gts: list[dict], dets: list[dict], image_ids: list[int], category_ids: list[int]):
    """The same set as DETECTIONS / ANNOTATIONS / IMAGES / CATEGORIES tables."""
    def box(x, y, w, h):
        return {"xmin": x, "ymin": y, "xmax": x + w, "ymax": y + h}
    per_image: dict[int, list[dict]] = {i: [] for i in image_ids}
    for d in dets:
        per_image[d["image_id"]].append({"box": box(*d["bbox"]), "score": d["score"],
                                         "label_id": d["category_id"], "label_ids": [],
                                         "scores": [], "distribution": None})
    predictions = pa.Table.from_pylist([
        {"image_id": i, "uri": f"file:///{i}.jpg", "width": 400, "height": 400,
         "model_name": "m", "model_version": 1, "shard": "s", "detections": v}
        for i, v in per_image.items()], schema=DETECTIONS)
    annotations = pa.Table.from_pylist([
        {"ann_id": n, "image_id": g["image_id"], "category_id": g["category_id"], "label": "c",
         "supercategory": None, "bbox": box(*g["bbox"]), "bbox_xywh": g["bbox"],
         "area": g["area"], "iscrowd": bool(g["iscrowd"]), "segmentation": None, "batch": "b"}
        for n, g in enumerate(gts, 1)], schema=ANNOTATIONS)
    images = pa.Table.from_pylist([
        {"image_id": i, "file_name": f"{i}.jpg", "uri": f"file:///{i}.jpg", "width": 400,
         "height": 400, "date_captured": None, "batch": "b", "shard": "s"} for i in image_ids],
        schema=IMAGES)
    categories = pa.Table.from_pylist([
        {"category_id": c, "name": f"c{c}", "supercategory": None, "batch": "b"}
        for c in category_ids], schema=CATEGORIES)
    return predictions, annotations, images, categories


def test_shards_give_the_numbers_of_the_whole_table() -> None:
    gts, dets, image_ids, category_ids = _random_set(5)
    predictions, annotations, images, categories = _tables(gts, dets, image_ids, category_ids)
    whole = evaluate_predictions(predictions, annotations, images, categories)
    shards = (predictions.slice(start, 9) for start in range(0, predictions.num_rows, 9))
    assert evaluate_predictions(shards, annotations, images, categories) == whole
    annotated = sorted({g["image_id"] for g in gts})
    reference = cocoeval_of_records(gts, [d for d in dets if d["image_id"] in annotated],
                                    annotated, category_ids)
    assert abs(whole["map"] - reference.stats[0]) <= TOLERANCE
    assert abs(whole["ap50"] - reference.stats[1]) <= TOLERANCE
    with pytest.raises(ValueError, match="appear more than once"):
        evaluate_predictions(iter([predictions, predictions.slice(0, 1)]), annotations,
                             images, categories)


# -- the demo detector on the demo dataset -----------------------------------------------------
@pytest.fixture(scope="module")
def demo_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo_eval")
    (coco_json,) = generate_demo_dataset(root, n_images=24, seed=5)
    return coco_json, root / "images"


def test_demo_detector_equals_pycocotools(demo_set: tuple[Path, Path]) -> None:
    coco_json, image_dir = demo_set
    extractor = ClassScoreExtractor.from_checkpoint(DEMO_CHECKPOINT)
    dataset = CocoDetectionDataset(coco_json, image_dir)
    detections, _ = _predict(extractor, dataset, 8, _label_mapping(extractor, dataset.categories))
    results = [{"image_id": i, "category_id": int(c), "score": float(s),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
               for i, d in detections.items() for b, c, s in zip(
                   d["boxes"].double().tolist(), d["labels"].tolist(), d["scores"].tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_json))
        reference = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        reference.params.imgIds = sorted(detections)
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    ours = coco_map_from_detections(coco_json, detections)
    names = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    for name, value in zip(names, reference.stats[:6], strict=True):
        assert (ours[name] is None) == (value < 0), name
        assert ours[name] is None or abs(ours[name] - value) <= TOLERANCE, name
    assert ours["num_detections"] == len(results) > 100
    assert 0.0 < ours["map"] < 1.0
    for k, value in per_category(reference).items():
        assert value is None or abs(ours["per_category"][k] - value) <= TOLERANCE
    same = evaluate_coco_map(extractor, coco_json, image_dir)
    assert {k: same[k] for k in names} == {k: ours[k] for k in names}
