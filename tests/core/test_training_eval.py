"""COCO dataset reading, the training loop, warm starts and COCO mAP evaluation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from al_assets.core.detection.categories import CategoryMap
from al_assets.core.analysis.evaluation import coco_map_from_detections, evaluate_coco_map
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.detection.factory import (
    DetectorError,
    build_detector,
    load_checkpoint,
    model_num_classes,
    save_checkpoint,
)
from al_assets.core.detection.training import (
    CocoDetectionDataset,
    DatasetError,
    train_detector,
)
from al_assets.core.errors import ImageDecodeError

ARCH = "ssdlite320_mobilenet_v3_large"
CATEGORY_IDS = (1, 3, 4, 7, 9)
COLOURS = {
    1: (220, 30, 30),
    3: (230, 140, 20),
    4: (30, 60, 220),
    7: (30, 200, 220),
    9: (40, 190, 60),
}


def write_shapes_coco(root: Path, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    """Coloured shapes on noise (128x96), category ids with gaps, plus the awkward cases:
    a crowd box (image 1), a zero-area box (image 2) and an image without boxes (the last)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []

    def annotate(image_id: int, cat: int, bbox: list[float], iscrowd: int = 0) -> None:
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": bbox,
                "area": float(bbox[2] * bbox[3]),
                "iscrowd": iscrowd,
            }
        )

    for image_id in range(1, n_images + 1):
        image = Image.fromarray(rng.integers(0, 90, (96, 128, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4)) if image_id < n_images else 0):
            cat, size = int(rng.choice(CATEGORY_IDS)), int(rng.integers(20, 45))
            x, y = int(rng.integers(0, 128 - size)), int(rng.integers(0, 96 - size))
            if cat in (1, 3):
                draw.rectangle([x, y, x + size, y + size], fill=COLOURS[cat])
            elif cat in (4, 7):
                draw.ellipse([x, y, x + size, y + size], fill=COLOURS[cat])
            else:
                draw.polygon(
                    [(x, y + size), (x + size, y + size), (x + size / 2, y)], fill=COLOURS[cat]
                )
            annotate(image_id, cat, [x, y, size + 1, size + 1])
        image.save(root / "images" / f"{image_id:04d}.png")
        images.append(
            {"id": image_id, "file_name": f"{image_id:04d}.png", "width": 128, "height": 96}
        )
    annotate(1, 4, [0, 0, 60, 40], iscrowd=1)
    annotate(2, 7, [10, 10, 0, 12])
    categories = [{"id": c, "name": f"shape{c}", "supercategory": "shape"} for c in CATEGORY_IDS]
    coco_json = root / "annotations.json"
    coco_json.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return coco_json, root / "images"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 images, the 5th one corrupt on disk."""
    coco_json, image_dir = write_shapes_coco(tmp_path_factory.mktemp("shapes"), 32, seed=0)
    (image_dir / "0005.png").write_bytes(b"this is not a png")
    return coco_json, image_dir


@pytest.fixture(scope="module")
def trained(shapes: tuple[Path, Path]) -> tuple[torch.nn.Module, list[dict]]:
    records: list[dict] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = train_detector(
            *shapes, steps=9, batch_size=4, lr=0.02, seed=0, log=records.append, log_every=3
        )
    assert any("0005.png" in str(w.message) for w in caught)
    return model, records


def test_dataset_targets_leave_out_crowd_and_empty_boxes(shapes: tuple[Path, Path]) -> None:
    coco_json, image_dir = shapes
    dataset = CocoDetectionDataset(coco_json, image_dir)
    raw = json.loads(coco_json.read_text())["annotations"]
    first = [a for a in raw if a["image_id"] == 1 and not a["iscrowd"]]

    image, target = dataset[0]
    assert image.shape == (3, 96, 128) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    x, y, w, h = first[0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert target["labels"].tolist() == [CATEGORY_IDS.index(a["category_id"]) + 1 for a in first]
    assert len(dataset.target(1)["boxes"]) == sum(1 for a in raw if a["image_id"] == 2) - 1
    assert dataset.target(len(dataset) - 1)["boxes"].shape == (0, 4)
    assert dataset.categories.category_ids == CATEGORY_IDS


def test_dataset_errors_name_the_problem(shapes: tuple[Path, Path], tmp_path: Path) -> None:
    coco_json, image_dir = shapes
    with pytest.raises(DatasetError, match="missing.json does not exist"):
        CocoDetectionDataset(tmp_path / "missing.json", image_dir)
    data = json.loads(coco_json.read_text())
    data["annotations"][0]["category_id"] = 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(
        DatasetError, match=f"annotation {data['annotations'][0]['id']} has category_id 2"
    ):
        CocoDetectionDataset(bad, image_dir)
    dataset = CocoDetectionDataset(coco_json, image_dir)
    with pytest.raises(ImageDecodeError, match="0005.png"):
        dataset.load_image(4)


def test_training_logs_and_returns_an_eval_model(
    trained: tuple[torch.nn.Module, list[dict]],
) -> None:
    model, records = trained
    assert not model.training and model_num_classes(model) == len(CATEGORY_IDS) + 1
    assert [r["step"] for r in records] == [3, 6, 9]
    last = records[-1]
    assert {"loss", "classification", "bbox_regression", "lr", "images_per_s"} <= set(last)
    assert all(np.isfinite(r["loss"]) for r in records)
    assert last["skipped_images"] == 1  # 36 draws from 32 images: the corrupt one was met
    assert records[0]["lr"] > records[1]["lr"] > records[2]["lr"]  # cosine decay, no warmup


def test_same_seed_same_model_other_seed_other_model(shapes: tuple[Path, Path]) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        model = train_detector(*shapes, steps=1, batch_size=2, seed=seed, warmup_steps=0)
        return model.state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_warm_start_continues_from_checkpoint(
    trained: tuple[torch.nn.Module, list[dict]], shapes: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = trained
    categories = CategoryMap.from_coco_json(shapes[0])
    path = save_checkpoint(
        tmp_path / "round0.pt", model, arch=ARCH, categories=categories, half=False
    )
    resumed = train_detector(*shapes, steps=1, batch_size=2, lr=0.0, init_checkpoint=path)
    saved = load_checkpoint(path).state_dict
    for name, param in resumed.named_parameters():
        assert torch.equal(param.detach(), saved[name]), name


def test_warm_start_refuses_other_categories(
    trained: tuple[torch.nn.Module, list[dict]], shapes: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = trained
    other = CategoryMap((2, 3, 5, 6, 8), tuple("abcde"))
    path = save_checkpoint(tmp_path / "other.pt", model, arch=ARCH, categories=other)
    with pytest.raises(DatasetError, match=r"trained on categories \[2, 3, 5, 6, 8\]"):
        train_detector(*shapes, steps=1, init_checkpoint=path)


def test_evaluation_of_trained_model_and_extractor(
    trained: tuple[torch.nn.Module, list[dict]], shapes: tuple[Path, Path]
) -> None:
    model, _ = trained
    model.train()
    result = evaluate_coco_map(model, *shapes, batch_size=8)
    assert model.training  # mode restored
    assert 0.0 <= result["map"] <= result["ap50"] <= 1.0
    assert set(result["per_category"]) == set(CATEGORY_IDS)
    assert result["num_images"] == 31 and list(result["skipped_images"]) == [
        str(shapes[1] / "0005.png")
    ]
    extractor = ClassScoreExtractor(model, CATEGORY_IDS, one_per_anchor=False)
    same = evaluate_coco_map(extractor, *shapes, batch_size=5)
    assert {k: same[k] for k in ("map", "ap50", "ap75", "num_detections")} == {
        k: result[k] for k in ("map", "ap50", "ap75", "num_detections")
    }


def test_evaluation_refuses_a_model_for_other_categories(shapes: tuple[Path, Path]) -> None:
    with pytest.raises(DetectorError, match="7 classes .* 5 categories"):
        evaluate_coco_map(build_detector(ARCH, 7), *shapes)


def _ground_truth(coco_json: Path) -> dict[int, dict[str, torch.Tensor]]:
    data = json.loads(coco_json.read_text())
    detections = {
        image["id"]: {"boxes": [], "labels": [], "scores": []} for image in data["images"]
    }
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        if ann["iscrowd"] or w <= 0 or h <= 0:
            continue
        detections[ann["image_id"]]["boxes"].append([x, y, x + w, y + h])
        detections[ann["image_id"]]["labels"].append(ann["category_id"])
        detections[ann["image_id"]]["scores"].append(0.9)
    return {
        image_id: {
            "boxes": torch.tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(d["labels"], dtype=torch.int64),
            "scores": torch.tensor(d["scores"]),
        }
        for image_id, d in detections.items()
    }


def test_map_of_known_detections(shapes: tuple[Path, Path], tmp_path: Path) -> None:
    # COCOeval counts the zero-area box as ground truth no detection can match: leave it out
    data = json.loads(shapes[0].read_text())
    data["annotations"] = [a for a in data["annotations"] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
    coco_json = tmp_path / "clean.json"
    coco_json.write_text(json.dumps(data))
    truth = _ground_truth(coco_json)
    perfect = coco_map_from_detections(coco_json, truth)
    assert perfect["map"] == pytest.approx(1.0)
    assert all(ap == pytest.approx(1.0) for ap in perfect["per_category"].values())

    relabelled = {
        i: {**d, "labels": torch.where(d["labels"] == 9, 1, d["labels"])} for i, d in truth.items()
    }
    result = coco_map_from_detections(coco_json, relabelled)
    assert result["per_category"][9] == 0.0 and result["per_category"][4] == pytest.approx(1.0)

    shifted = {
        i: {**d, "boxes": d["boxes"] + torch.tensor([4.0, 0, 4.0, 0])} for i, d in truth.items()
    }
    result = coco_map_from_detections(coco_json, shifted)
    assert result["ap50"] == pytest.approx(1.0) and result["ap75"] < 1.0

    nothing = {i: {k: v[:0] for k, v in d.items()} for i, d in truth.items()}
    empty = coco_map_from_detections(coco_json, nothing)
    assert empty["map"] == 0.0 and empty["num_detections"] == 0


def test_map_refuses_unknown_images(shapes: tuple[Path, Path]) -> None:
    with pytest.raises(DatasetError, match=r"image ids \[999\]"):
        coco_map_from_detections(shapes[0], {999: _ground_truth(shapes[0])[1]})


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~5 min on 2 quiet cores; far more when other jobs share them
def test_training_from_scratch_learns_the_shapes(tmp_path: Path) -> None:
    """The default recipe reaches a useful mAP on held-out data from scratch."""
    train = write_shapes_coco(tmp_path / "train", 160, seed=10)
    holdout = write_shapes_coco(tmp_path / "holdout", 40, seed=11)
    model = train_detector(*train, steps=250, batch_size=8, seed=0)
    result = evaluate_coco_map(model, *holdout)
    assert result["map"] > 0.5, result
    assert all(ap > 0.3 for ap in result["per_category"].values()), result["per_category"]


@pytest.mark.parametrize("content", [
    None, "{not json", '{"images": []}', "folder",
    '{"images": [], "annotations": [], "categories": []}'])
def test_unreadable_categories_name_the_file(tmp_path: Path, content: str | None) -> None:
    """Missing file, malformed JSON, not COCO, a folder, no categories: one CategoryError
    naming the file."""
    from al_assets.core.detection.categories import CategoryError

    path = tmp_path / "instances.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(CategoryError, match="instances.json"):
        CategoryMap.from_coco_json(path)
