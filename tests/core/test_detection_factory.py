"""Detector factory and checkpoints: real torchvision modules, real files, offline behaviour."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from torchvision.models import get_model_weights
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.ssd import SSD
from torchvision.ops.misc import FrozenBatchNorm2d

from al_assets.core.detection.categories import CategoryMap
from al_assets.core.detection.factory import (
    ARCHITECTURES,
    CheckpointError,
    DetectorError,
    WeightsUnavailableError,
    build_detector,
    load_checkpoint,
    load_detector,
    model_num_classes,
    save_checkpoint,
)

SSDLITE = "ssdlite320_mobilenet_v3_large"
RCNN = "fasterrcnn_mobilenet_v3_large_fpn"
CATEGORIES = CategoryMap((1, 3, 4, 7, 9), ("a", "b", "c", "d", "e"))


def _outputs(model: torch.nn.Module, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    images = [
        torch.rand(3, 96, 128, generator=generator),
        torch.rand(3, 80, 64, generator=generator),
    ]
    with torch.inference_mode():
        return model.eval()(images)


@pytest.fixture()
def offline_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weight cache, and a proxy on a closed local port: downloads fail at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


@pytest.mark.parametrize(
    ("arch", "kind"), [(SSDLITE, SSD), ("ssd300_vgg16", SSD), (RCNN, FasterRCNN)]
)
def test_random_init_builds_each_arch_with_requested_classes(arch: str, kind: type) -> None:
    model = build_detector(arch, 6)
    assert isinstance(model, kind)
    assert model_num_classes(model) == 6


def test_builder_kwargs_reach_torchvision() -> None:
    model = build_detector(SSDLITE, 3, score_thresh=0.25, detections_per_img=7)
    assert (model.score_thresh, model.detections_per_img) == (0.25, 7)


def test_unknown_arch_lists_known_ones() -> None:
    with pytest.raises(DetectorError, match="unknown detector architecture 'yolo'") as info:
        build_detector("yolo", 3)
    for arch in ARCHITECTURES:
        assert arch in str(info.value)


def test_num_classes_must_count_background() -> None:
    with pytest.raises(DetectorError, match="num_classes=1"):
        build_detector(SSDLITE, 1)


def test_unknown_weights_name_lists_torchvision_choices() -> None:
    with pytest.raises(DetectorError, match="COCO_V1"):
        build_detector(SSDLITE, 3, weights="IMAGENET_V9")


def test_offline_download_names_weights_cache_and_checkpoint_option(
    offline_torch_home: Path,
) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        build_detector(SSDLITE, 6, weights="default")
    message = str(info.value)
    assert "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1" in message
    assert "cannot be downloaded" in message
    assert str(offline_torch_home / "hub" / "checkpoints") in message
    assert "checkpoint=" in message


def test_weights_copied_into_cache_load_offline_with_new_head(offline_torch_home: Path) -> None:
    """The offline recipe of the error message works: a file in the cache needs no network."""
    weights = get_model_weights(SSDLITE).COCO_V1
    coco_like = build_detector(SSDLITE, len(weights.meta["categories"]))
    cached = offline_torch_home / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(coco_like.state_dict(), cached)

    model = build_detector(SSDLITE, 6, weights="COCO_V1")

    assert model_num_classes(model) == 6
    backbone = coco_like.state_dict()
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone[f"backbone.{name}"])


def test_frozen_batchnorm_checkpoint_round_trip(offline_torch_home: Path, tmp_path: Path) -> None:
    """Pretrained Faster R-CNN uses FrozenBatchNorm2d; its checkpoint must reload as such."""
    weights = get_model_weights(RCNN).COCO_V1
    state = build_detector(RCNN, 91).state_dict()
    frozen_state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    cached = offline_torch_home / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(frozen_state, cached)
    small = {"box_score_thresh": 0.0, "min_size": 128, "max_size": 160}
    pretrained = build_detector(RCNN, 6, weights="default", **small)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in pretrained.modules())

    path = save_checkpoint(
        tmp_path / "rcnn.pt", pretrained, arch=RCNN, categories=CATEGORIES, half=False
    )
    reloaded, _ = load_detector(path, **small)

    assert any(isinstance(m, FrozenBatchNorm2d) for m in reloaded.modules())
    for expected, got in zip(_outputs(pretrained), _outputs(reloaded), strict=True):
        torch.testing.assert_close(got["boxes"], expected["boxes"])
        torch.testing.assert_close(got["scores"], expected["scores"])


def test_float16_checkpoint_is_small_and_loads_as_float32(tmp_path: Path) -> None:
    model = build_detector(SSDLITE, 6)
    half = save_checkpoint(tmp_path / "half.pt", model, arch=SSDLITE, categories=CATEGORIES)
    full = save_checkpoint(
        tmp_path / "full.pt", model, arch=SSDLITE, categories=CATEGORIES, half=False
    )
    assert half.stat().st_size < 0.6 * full.stat().st_size

    ckpt = load_checkpoint(half)
    assert (ckpt.arch, ckpt.num_classes, ckpt.category_ids) == (SSDLITE, 6, (1, 3, 4, 7, 9))
    assert ckpt.categories == CATEGORIES
    assert ckpt.meta["stored_dtype"] == "float16"
    for name, value in model.state_dict().items():
        loaded = ckpt.state_dict[name]
        assert loaded.dtype == value.dtype
        if value.is_floating_point():
            torch.testing.assert_close(loaded, value.half().float(), atol=0, rtol=0)


def test_checkpoint_reloads_the_same_detector(tmp_path: Path) -> None:
    model = build_detector(SSDLITE, 6)
    path = save_checkpoint(
        tmp_path / "m.pt",
        model,
        arch=SSDLITE,
        categories=CATEGORIES,
        meta={"steps": 3},
        half=False,
    )
    by_path = build_detector(SSDLITE, 6, weights=str(path))
    loaded, ckpt = load_detector(path)
    assert ckpt.meta["steps"] == 3
    for expected, a, b in zip(_outputs(model), _outputs(by_path), _outputs(loaded), strict=True):
        assert torch.equal(a["boxes"], expected["boxes"]) and torch.equal(b["boxes"], a["boxes"])
        assert torch.equal(a["scores"], expected["scores"])


def test_bare_state_dict_is_accepted(tmp_path: Path) -> None:
    model = build_detector(SSDLITE, 4)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    loaded = build_detector(SSDLITE, 4, checkpoint=tmp_path / "bare.pth")
    assert torch.equal(_outputs(loaded)[0]["scores"], _outputs(model)[0]["scores"])
    with pytest.raises(CheckpointError, match="bare state dict"):
        load_detector(tmp_path / "bare.pth")


def test_checkpoint_for_another_arch_says_which(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "m.pt", build_detector(SSDLITE, 6), arch=SSDLITE, categories=CATEGORIES
    )
    with pytest.raises(CheckpointError, match=f"holds a {SSDLITE} checkpoint, not ssd300_vgg16"):
        build_detector("ssd300_vgg16", 6, checkpoint=path)


def test_checkpoint_with_other_class_count_says_how_to_fix(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "m.pt", build_detector(SSDLITE, 6), arch=SSDLITE, categories=CATEGORIES
    )
    with pytest.raises(CheckpointError, match="has 6 classes .* pass num_classes=6"):
        build_detector(SSDLITE, 4, checkpoint=path)


def test_bare_state_dict_of_other_shape_is_a_clear_error(tmp_path: Path) -> None:
    torch.save(build_detector(SSDLITE, 6).state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="does not fit .* num_classes=4"):
        build_detector(SSDLITE, 4, checkpoint=tmp_path / "bare.pth")


def test_unreadable_and_missing_files_are_named(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*garbage.pt"):
        build_detector(SSDLITE, 6, checkpoint=garbage)
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_dict_is_not_taken_for_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"arch": SSDLITE, "weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an al_assets checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_weights_and_checkpoint_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="not both"):
        build_detector(SSDLITE, 6, weights="default", checkpoint=tmp_path / "m.pt")


def test_save_checks_categories_against_the_model(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model has 4 classes"):
        save_checkpoint(
            tmp_path / "m.pt", build_detector(SSDLITE, 4), arch=SSDLITE, categories=CATEGORIES
        )
    assert not list(tmp_path.iterdir())
