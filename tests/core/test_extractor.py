"""ClassScoreExtractor agrees with the plain torchvision detector, box for box.

The extractor re-runs the detector's own post-processing while remembering anchors/proposals;
these tests hold it to the plain model's output on three architectures (random init) and on
trained weights, and check the distribution it adds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from al_assets.core.detection.categories import CategoryMap
from al_assets.core.detection.extractor import ClassScoreExtractor, Postprocess
from al_assets.core.detection.factory import DetectorError, build_detector, save_checkpoint
from al_assets.core.detection.sources import DEMO_CHECKPOINT
from al_assets.core.detection.training import CocoDetectionDataset, train_detector

CATEGORY_IDS = (1, 3, 4, 7, 9)
SHIPPED_DETECTOR = DEMO_CHECKPOINT
# Thresholds lowered so that random-init models keep boxes, and anchors under several labels.
RANDOM_INIT = {
    "ssdlite320_mobilenet_v3_large": {"score_thresh": 0.01},
    "ssd300_vgg16": {"score_thresh": 1e-6, "detections_per_img": 2000},
    "fasterrcnn_mobilenet_v3_large_fpn": {
        "min_size": 128,
        "max_size": 160,
        "box_score_thresh": 0.01,
        "box_detections_per_img": 300,
    },
}
ATOL = 1e-5


def write_shapes_coco(root: Path, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    """Tiny COCO set: coloured squares, discs and triangles on noise, ids with gaps."""
    rng = np.random.default_rng(seed)
    colours = {
        1: (220, 30, 30),
        3: (230, 140, 20),
        4: (30, 60, 220),
        7: (30, 200, 220),
        9: (40, 190, 60),
    }
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        image = Image.fromarray(rng.integers(0, 90, (96, 128, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            cat, size = int(rng.choice(CATEGORY_IDS)), int(rng.integers(20, 45))
            x, y = int(rng.integers(0, 128 - size)), int(rng.integers(0, 96 - size))
            shape = [x, y, x + size, y + size]
            if cat in (1, 3):
                draw.rectangle(shape, fill=colours[cat])
            elif cat in (4, 7):
                draw.ellipse(shape, fill=colours[cat])
            else:
                draw.polygon(
                    [(x, y + size), (x + size, y + size), (x + size / 2, y)], fill=colours[cat]
                )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, size + 1, size + 1],
                    "area": float((size + 1) ** 2),
                    "iscrowd": 0,
                }
            )
        image.save(root / "images" / f"{image_id:04d}.png")
        images.append(
            {"id": image_id, "file_name": f"{image_id:04d}.png", "width": 128, "height": 96}
        )
    categories = [{"id": c, "name": f"shape{c}", "supercategory": "shape"} for c in CATEGORY_IDS]
    coco_json = root / "annotations.json"
    coco_json.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return coco_json, root / "images"


def run_both(model: torch.nn.Module, category_ids, images: list[Tensor]) -> dict:
    """Plain detector output next to the extractor's, deduplicated and not."""
    model.eval()
    with torch.inference_mode():
        plain = model(images)
    return {
        "plain": plain,
        "full": ClassScoreExtractor(model, category_ids, one_per_anchor=False)(images),
        "dedup": ClassScoreExtractor(model, category_ids)(images),
        "lookup": torch.tensor([0, *category_ids]),
        "category_ids": tuple(category_ids),
    }


@pytest.fixture(scope="module", params=sorted(RANDOM_INIT))
def random_case(request: pytest.FixtureRequest) -> dict:
    torch.manual_seed(0)
    model = build_detector(request.param, len(CATEGORY_IDS) + 1, **RANDOM_INIT[request.param])
    generator = torch.Generator().manual_seed(1)
    images = [
        torch.rand(3, 120, 160, generator=generator),
        torch.rand(3, 200, 100, generator=generator),
    ]
    return run_both(model, CATEGORY_IDS, images)


@pytest.fixture(scope="session")
def trained_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shipped demo detector when it exists; otherwise an ssdlite trained here briefly."""
    root = tmp_path_factory.mktemp("extractor_shapes")
    coco_json, image_dir = write_shapes_coco(root, 32, seed=3)
    if SHIPPED_DETECTOR.exists():
        extractor = ClassScoreExtractor.from_checkpoint(SHIPPED_DETECTOR)
        model, category_ids = extractor.model, extractor.category_ids
    else:
        model = train_detector(coco_json, image_dir, steps=10, batch_size=4, lr=0.02, seed=0)
        category_ids = CATEGORY_IDS
    dataset = CocoDetectionDataset(coco_json, image_dir)
    images = [dataset.load_image(i) for i in range(6)]
    return run_both(model, category_ids, images)


def assert_full_rows_equal_plain(case: dict) -> None:
    assert len(case["full"]) == len(case["plain"])
    for plain, full in zip(case["plain"], case["full"], strict=True):
        assert len(full["boxes"]) == len(plain["boxes"]) > 0
        torch.testing.assert_close(full["boxes"], plain["boxes"], atol=ATOL, rtol=0)
        torch.testing.assert_close(full["scores"], plain["scores"], atol=ATOL, rtol=0)
        assert torch.equal(full["labels"], case["lookup"][plain["labels"]])


def assert_every_row_is_a_plain_detection(case: dict) -> None:
    for plain, dedup in zip(case["plain"], case["dedup"], strict=True):
        plain_labels = case["lookup"][plain["labels"]]
        for box, score, label in zip(dedup["boxes"], dedup["scores"], dedup["labels"], strict=True):
            same = (
                (plain["boxes"] - box).abs().amax(dim=1).le(ATOL)
                & (plain["scores"] - score).abs().le(ATOL)
                & plain_labels.eq(label)
            )
            assert same.any(), (
                f"extractor row {box.tolist()} {label} {score} is not in the plain output"
            )


def assert_best_label_of_each_anchor_kept(case: dict) -> None:
    """Each anchor appears once, with its highest-scoring kept label (ties left out)."""
    for full, dedup in zip(case["full"], case["dedup"], strict=True):
        assert dedup["anchor_idx"].unique().numel() == dedup["anchor_idx"].numel()
        assert set(dedup["anchor_idx"].tolist()) == set(full["anchor_idx"].tolist())
        kept = {int(a): i for i, a in enumerate(dedup["anchor_idx"])}
        for anchor in full["anchor_idx"].unique().tolist():
            rows = (full["anchor_idx"] == anchor).nonzero().squeeze(1)
            scores = full["scores"][rows].sort(descending=True).values
            if len(scores) > 1 and float(scores[0] - scores[1]) <= ATOL:
                continue  # tie: either label is the best one
            best = rows[full["scores"][rows].argmax()]
            row = kept[anchor]
            assert int(dedup["labels"][row]) == int(full["labels"][best])
            assert float(dedup["scores"][row]) == pytest.approx(
                float(full["scores"][best]), abs=ATOL
            )
            torch.testing.assert_close(dedup["boxes"][row], full["boxes"][best], atol=ATOL, rtol=0)


def assert_distributions_are_consistent(case: dict) -> None:
    ids = torch.tensor(case["category_ids"])
    for dedup in case["dedup"]:
        dist = dedup["distribution"]
        assert dist.shape == (len(dedup["boxes"]), len(ids))
        assert bool((dist >= 0).all())
        torch.testing.assert_close(dist.sum(dim=1), torch.ones(len(dist)), atol=1e-5, rtol=0)
        topk_scores, topk_labels = dedup["topk_scores"], dedup["topk_labels"]
        assert bool((topk_scores[:, :-1] >= topk_scores[:, 1:]).all())
        assert bool(torch.isin(topk_labels, ids).all()) and bool(
            torch.isin(dedup["labels"], ids).all()
        )
        columns = (topk_labels.unsqueeze(-1) == ids).int().argmax(dim=-1)
        torch.testing.assert_close(dist.gather(1, columns), topk_scores)
        torch.testing.assert_close(topk_scores[:, 0], dist.max(dim=1).values)


def test_rows_before_dedup_are_exactly_the_plain_output(random_case: dict) -> None:
    assert_full_rows_equal_plain(random_case)


def test_every_extractor_row_matches_a_plain_detection(random_case: dict) -> None:
    assert_every_row_is_a_plain_detection(random_case)


def test_one_row_per_anchor_with_its_best_label(random_case: dict) -> None:
    duplicated = sum(
        len(f["boxes"]) - len(d["boxes"])
        for f, d in zip(random_case["full"], random_case["dedup"], strict=True)
    )
    assert duplicated > 0, "settings must make NMS keep some anchor under two labels"
    assert_best_label_of_each_anchor_kept(random_case)


def test_distribution_and_topk(random_case: dict) -> None:
    assert_distributions_are_consistent(random_case)


def test_trained_weights_agree_with_plain_detector(trained_case: dict) -> None:
    assert_full_rows_equal_plain(trained_case)
    assert_every_row_is_a_plain_detection(trained_case)
    assert_best_label_of_each_anchor_kept(trained_case)
    assert_distributions_are_consistent(trained_case)


def test_options_and_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_detector("ssdlite320_mobilenet_v3_large", 6, score_thresh=0.01).eval()
    path = save_checkpoint(
        tmp_path / "m.pt",
        model,
        arch="ssdlite320_mobilenet_v3_large",
        categories=CategoryMap(CATEGORY_IDS, tuple(f"c{c}" for c in CATEGORY_IDS)),
        half=False,
    )
    loaded = ClassScoreExtractor.from_checkpoint(
        path, detector_kwargs={"score_thresh": 0.01}, topk=9, with_distribution=False
    )
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    out = loaded(image)[0]
    assert "distribution" not in out and out["topk_labels"].shape[1] == len(CATEGORY_IDS)
    assert loaded.category_ids == CATEGORY_IDS and not loaded.training
    reference = ClassScoreExtractor(model, CATEGORY_IDS, with_distribution=False)(image)[0]
    assert torch.equal(out["scores"], reference["scores"])


def test_reconfigured_takes_its_postprocess_as_constructor_arguments() -> None:
    torch.manual_seed(0)
    model = build_detector("ssdlite320_mobilenet_v3_large", 6, score_thresh=0.01).eval()
    base = ClassScoreExtractor(model, CATEGORY_IDS)
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    wide = base(image)[0]
    assert "distribution" in wide and len(wide["scores"]) > 3
    floor = float(wide["scores"].min()) / 2  # below every score (the untrained head is uniform)
    narrow = base.reconfigured(with_distribution=False, postprocess=Postprocess(
        score_thresh=floor, detections_per_img=3))
    out = narrow(image)[0]
    assert "distribution" not in out and 0 < len(out["scores"]) <= 3
    assert bool((out["scores"] >= floor - 1e-6).all())
    assert narrow.model is base.model  # no weight copy: the settings live on the detector,
    assert base.model.detections_per_img == 3  # so a run makes its own extractor (as the asset does)


def test_clear_errors() -> None:
    model = build_detector("ssdlite320_mobilenet_v3_large", 6)
    with pytest.raises(DetectorError, match="5 foreground classes"):
        ClassScoreExtractor(model, [1, 2, 3])
    with pytest.raises(DetectorError, match="distinct"):
        ClassScoreExtractor(model, [1, 1, 2, 3, 4])
    with pytest.raises(DetectorError, match="not a torchvision SSD or FasterRCNN"):
        ClassScoreExtractor(torch.nn.Linear(2, 2), CATEGORY_IDS)
    extractor = ClassScoreExtractor(model.train(), CATEGORY_IDS)
    with pytest.raises(RuntimeError, match=r"call \.eval\(\)"):
        extractor([torch.rand(3, 32, 32)])
