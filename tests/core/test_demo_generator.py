"""The demo COCO generator writes real, deterministic files with the traits of real data."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from al_assets.core.demo.generator import (
    DEMO_CATEGORIES,
    HEIGHT_RANGE,
    LOOKALIKE_PAIRS,
    WIDTH_RANGE,
    add_demo_batch,
    batch_seed,
    generate_demo_batch,
    generate_demo_dataset,
)

N_IMAGES = 60
N_BATCHES = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[COCO]]:
    root = tmp_path_factory.mktemp("demo")
    paths = generate_demo_dataset(root, n_images=N_IMAGES, seed=3, n_batches=N_BATCHES)
    return root, [COCO(str(path)) for path in paths]


def _all(dataset: tuple[Path, list[COCO]], key: str) -> list[dict]:
    return [record for coco in dataset[1] for record in coco.dataset[key]]


def _name(category_id: int) -> str:
    return next(c["name"] for c in DEMO_CATEGORIES if c["id"] == category_id)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_batches_are_named_in_order_and_load_with_pycocotools(dataset):
    root, cocos = dataset
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "batch-000.json", "batch-001.json"
    ]
    assert [len(c.dataset["images"]) for c in cocos] == [30, 30]
    for coco in cocos:
        assert set(coco.dataset) >= {"info", "licenses", "images", "annotations", "categories"}
        assert coco.dataset["categories"] == DEMO_CATEGORIES
        assert len(coco.getAnnIds()) == len(coco.dataset["annotations"]) > 0


def test_ids_are_unique_and_consecutive_across_batches(dataset):
    image_ids = [image["id"] for image in _all(dataset, "images")]
    ann_ids = [ann["id"] for ann in _all(dataset, "annotations")]
    assert image_ids == list(range(1, N_IMAGES + 1))
    assert ann_ids == list(range(1, len(ann_ids) + 1))


def test_categories_have_gaps_supercategories_and_lookalike_pairs():
    ids = [c["id"] for c in DEMO_CATEGORIES]
    names = {c["name"] for c in DEMO_CATEGORIES}
    assert 6 <= len(ids) <= 8 and len(set(ids)) == len(ids)
    assert ids != list(range(1, len(ids) + 1)), "ids must have gaps like COCO"
    assert all(c["supercategory"] for c in DEMO_CATEGORIES)
    assert len(LOOKALIKE_PAIRS) >= 2
    assert all(a in names and b in names and a != b for a, b in LOOKALIKE_PAIRS)


def test_same_arguments_give_byte_identical_files(tmp_path):
    first = generate_demo_dataset(tmp_path / "a", n_images=24, seed=11, n_batches=2)
    second = generate_demo_dataset(tmp_path / "b", n_images=24, seed=11, n_batches=2)
    other = generate_demo_dataset(tmp_path / "c", n_images=24, seed=12, n_batches=2)
    assert [p.name for p in first] == [p.name for p in second]
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(files_a) == 24 + 2
    assert files_a == files_b
    assert first[0].read_bytes() != other[0].read_bytes()


def test_images_open_with_declared_size_and_vary_in_size(dataset):
    root, _ = dataset
    images = _all(dataset, "images")
    for image in images:
        with Image.open(root / "images" / image["file_name"]) as opened:
            assert opened.size == (image["width"], image["height"])
            expected = "PNG" if image["file_name"].endswith(".png") else "JPEG"
            assert opened.format == expected
    widths = {image["width"] for image in images}
    heights = {image["height"] for image in images}
    assert len(widths) > 10 and len(heights) > 10
    assert all(WIDTH_RANGE[0] <= w <= WIDTH_RANGE[1] for w in widths)
    assert all(HEIGHT_RANGE[0] <= h <= HEIGHT_RANGE[1] for h in heights)


def test_each_batch_has_empty_grayscale_png_and_crowd_images(dataset):
    root, cocos = dataset
    for coco in cocos:
        images = coco.dataset["images"]
        empty = [i for i in images if not coco.getAnnIds(imgIds=i["id"])]
        png = [i for i in images if i["file_name"].endswith(".png")]
        gray = []
        for image in images:
            with Image.open(root / "images" / image["file_name"]) as opened:
                if opened.mode == "L":
                    gray.append(image)
                    assert opened.format == "JPEG"
        crowd = [a for a in coco.dataset["annotations"] if a["iscrowd"] == 1]
        assert empty and png and gray and crowd
        assert len(empty) < len(images) / 5 and len(png) < len(images) / 5


def test_image_records_carry_dates_and_known_licenses(dataset):
    license_ids = {lic["id"] for coco in dataset[1] for lic in coco.dataset["licenses"]}
    for image in _all(dataset, "images"):
        datetime.strptime(image["date_captured"], "%Y-%m-%d %H:%M:%S")
        assert image["license"] in license_ids
    assert len({image["license"] for image in _all(dataset, "images")}) > 1


def test_crowd_annotations_are_uncompressed_rle_of_small_object_groups(dataset):
    crowds = 0
    for coco in dataset[1]:
        for ann in coco.dataset["annotations"]:
            if ann["iscrowd"] != 1:
                continue
            crowds += 1
            image = coco.imgs[ann["image_id"]]
            segmentation = ann["segmentation"]
            assert isinstance(segmentation["counts"], list)
            assert segmentation["size"] == [image["height"], image["width"]]
            assert sum(segmentation["counts"]) == image["height"] * image["width"]
            mask = coco.annToMask(ann)
            assert mask.sum() == ann["area"]
            x0, y0, x1, y1 = _mask_box(mask)
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert x1 - x0 < 120 and y1 - y0 < 120
    assert crowds >= N_BATCHES


def test_polygons_match_bbox_area_and_stay_inside_the_image(dataset):
    for coco in dataset[1]:
        for ann in coco.dataset["annotations"]:
            if ann["iscrowd"]:
                continue
            image = coco.imgs[ann["image_id"]]
            polygon = np.array(ann["segmentation"][0]).reshape(-1, 2)
            assert len(ann["segmentation"]) == 1 and len(polygon) >= 3
            x, y, w, h = ann["bbox"]
            assert all(isinstance(v, float) for v in ann["bbox"])
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
            assert np.allclose(polygon.min(axis=0), [x, y]) and np.allclose(
                polygon.max(axis=0), [x + w, y + h]
            )
            mask = coco.annToMask(ann)
            assert mask.sum() == ann["area"] > 0
            assert np.max(np.abs(np.array(_mask_box(mask)) - [x, y, x + w, y + h])) <= 2.0


def test_round_shapes_are_many_vertex_polygons(dataset):
    for ann in _all(dataset, "annotations"):
        if not ann["iscrowd"] and _name(ann["category_id"]) in {"circle", "ellipse"}:
            assert len(ann["segmentation"][0]) // 2 >= 24


def test_objects_overlap_partly_but_never_above_iou_half(dataset):
    overlapping = 0
    for coco in dataset[1]:
        for image_id in coco.getImgIds():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            masks = [coco.annToMask(a).astype(bool) for a in anns]
            for i in range(len(masks)):
                for j in range(i + 1, len(masks)):
                    inter = np.logical_and(masks[i], masks[j]).sum()
                    union = np.logical_or(masks[i], masks[j]).sum()
                    overlapping += inter > 0
                    assert inter / union <= 0.55
    assert overlapping >= 5


def test_sizes_span_small_to_large_and_classes_are_imbalanced(dataset):
    objects = [a for a in _all(dataset, "annotations") if not a["iscrowd"]]
    sizes = np.array([max(a["bbox"][2], a["bbox"][3]) for a in objects])
    assert sizes.min() < 16 and sizes.max() > 90 and np.median(sizes) < 60
    counts = Counter(_name(a["category_id"]) for a in objects)
    assert set(counts) == {c["name"] for c in DEMO_CATEGORIES}
    most, _ = counts.most_common(1)[0]
    assert most == "triangle"
    assert counts["star"] * 4 < counts["triangle"]


def test_objects_are_visible_in_the_pixels(dataset):
    """Unoccluded objects must differ in colour from the ring of pixels around them."""
    root, cocos = dataset
    contrasts = []
    for coco in cocos:
        for image in coco.dataset["images"]:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            if not anns:
                continue
            with Image.open(root / "images" / image["file_name"]) as opened:
                pixels = np.asarray(opened.convert("RGB"), dtype=np.float64)
            masks = [coco.annToMask(a).astype(bool) for a in anns]
            covered = np.logical_or.reduce(masks)
            for ann, mask in zip(anns, masks):
                if ann["iscrowd"] or ann["area"] < 150:
                    continue
                x0, y0, x1, y1 = _mask_box(mask)
                ring = np.zeros_like(mask)
                ring[max(y0 - 4, 0):y1 + 4, max(x0 - 4, 0):x1 + 4] = True
                ring &= ~covered
                if ring.sum() < 20:
                    continue
                inside = pixels[mask].mean(axis=0)
                contrasts.append(np.linalg.norm(inside - pixels[ring].mean(axis=0)))
    assert len(contrasts) > 50
    assert np.median(contrasts) > 30


def test_regenerating_the_same_batch_is_fine_but_other_content_is_refused(tmp_path):
    path = generate_demo_batch(tmp_path, "night", n_images=3, seed=5)
    before = _files(tmp_path)
    assert generate_demo_batch(tmp_path, "night", n_images=3, seed=5) == path
    assert _files(tmp_path) == before
    with pytest.raises(FileExistsError, match=r"night\.json.*pick another batch name or delete"):
        generate_demo_batch(tmp_path, "night", n_images=3, seed=6)
    assert _files(tmp_path) == before


def test_reusing_ids_of_another_batch_is_refused(tmp_path):
    generate_demo_batch(tmp_path, "first", n_images=3, seed=1)
    with pytest.raises(ValueError, match=r"image ids \[1, 2, 3\].*first\.json.*add_demo_batch"):
        generate_demo_batch(tmp_path, "second", n_images=3, seed=2)
    assert not (tmp_path / "annotations" / "second.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_images": 0}, "n_images must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"n_images": 2.5}, "n_images must be an integer"),
        ({"batch": "../escape"}, "batch name '../escape'"),
        ({"first_image_id": 0}, "first_image_id must be >= 1"),
    ],
)
def test_bad_batch_arguments_raise_clear_errors(tmp_path, kwargs, message):
    arguments = {"root": tmp_path, "batch": "b", "n_images": 2, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_demo_batch(**arguments)


def test_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"file is a file; pass a folder path"):
        generate_demo_batch(tmp_path / "file", "b", n_images=1, seed=0)


def test_bad_dataset_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=re.escape("n_images (2) must be >= n_batches (3)")):
        generate_demo_dataset(tmp_path, n_images=2, n_batches=3)
    with pytest.raises(ValueError, match="n_batches must be >= 1"):
        generate_demo_dataset(tmp_path, n_images=2, n_batches=0)


def test_add_demo_batch_continues_names_ids_and_derived_seeds(tmp_path):
    first = add_demo_batch(tmp_path / "live", n_images=4)
    assert first.name == "batch-000.json"
    second = add_demo_batch(tmp_path / "live", n_images=5)
    assert second.name == "batch-001.json"
    old, new = json.loads(first.read_bytes()), json.loads(second.read_bytes())
    assert new["images"][0]["id"] == max(i["id"] for i in old["images"]) + 1
    assert new["annotations"][0]["id"] == max(a["id"] for a in old["annotations"]) + 1
    assert new["info"]["seed"] == batch_seed(0, 1)
    # Same seed rule as generate_demo_dataset: batch-000 matches a fresh dataset's first batch.
    reference = generate_demo_dataset(tmp_path / "ref", n_images=4, seed=0)[0]
    assert reference.read_bytes() == first.read_bytes()


def test_add_demo_batch_skips_past_foreign_annotation_files(tmp_path):
    generate_demo_batch(tmp_path, "imported", n_images=3, seed=4, first_image_id=100,
                        first_ann_id=500)
    path = add_demo_batch(tmp_path, n_images=2, seed=9)
    document = json.loads(path.read_bytes())
    assert path.name == "batch-000.json"
    assert [i["id"] for i in document["images"]] == [103, 104]
    assert document["info"]["seed"] == 9
    # The highest ids now sit in batch-000.json, read before imported.json.
    third = json.loads(add_demo_batch(tmp_path, n_images=1, seed=10).read_bytes())
    assert [i["id"] for i in third["images"]] == [105]


def test_unreadable_annotation_file_is_reported_by_name(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json.*fix or remove it"):
        add_demo_batch(tmp_path, n_images=1)
