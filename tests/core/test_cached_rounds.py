"""Head-only rounds on cached backbone features give what the full path gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from al_assets.core.demo.detector import random_demo_checkpoint
from al_assets.core.detection.cached import (
    CacheError,
    FeatureCache,
    HeadSample,
    predict_cached,
    train_head,
)
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.detection.factory import load_detector
from al_assets.core.loop.evaluation import predict_images
from al_assets.core.prediction.runner import ShardRef
from al_assets.core.simulation.presets import PRESETS, generate_split
from al_assets.core.storage.objects import to_uri


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pa.Table:
    small = PRESETS["iid"].__class__(**{**PRESETS["iid"].__dict__,
                                        "sizes": {**PRESETS["iid"].sizes, "heldout": 6}})
    root = tmp_path_factory.mktemp("preset")
    path = generate_split(root, small, "heldout")
    import json

    doc = json.loads(path.read_bytes())
    folder = path.parent.parent / "images"
    return pa.table({
        "image_id": pa.array([i["id"] for i in doc["images"]], pa.int64()),
        "uri": [to_uri(folder / i["file_name"]) for i in doc["images"]],
        "width": pa.array([i["width"] for i in doc["images"]], pa.int32()),
        "height": pa.array([i["height"] for i in doc["images"]], pa.int32()),
    })


def _extractor(path: Path) -> tuple[ClassScoreExtractor, torch.nn.Module]:
    model, ckpt = load_detector(path)
    return ClassScoreExtractor(model.eval(), ckpt.categories.category_ids), model


@pytest.mark.parametrize("backbone_tail", [False, True])
def test_cached_predictions_equal_the_production_runner(images, tmp_path, backbone_tail) -> None:
    extractor, model = _extractor(random_demo_checkpoint(tmp_path / "m.pt", 3))
    full, errors = predict_images(extractor, images, ShardRef("m", 1, "s"), torch.device("cpu"))
    cached = predict_cached(extractor, images, FeatureCache(model, backbone_tail=backbone_tail),
                            model_name="m", model_version=1, shard="s")
    assert not errors and cached.schema == full.schema
    a, b = full.to_pylist(), cached.to_pylist()
    for x, y in zip(a, b, strict=True):
        assert len(x["detections"]) == len(y["detections"]) > 0
        np.testing.assert_allclose([d["score"] for d in x["detections"]],
                                   [d["score"] for d in y["detections"]], atol=1e-5)
        np.testing.assert_allclose(x["embedding"], y["embedding"], atol=1e-5)
        assert [d["label_id"] for d in x["detections"]] == [d["label_id"] for d in y["detections"]]


def test_train_head_learns_leaves_the_backbone_and_is_reproducible(images, tmp_path) -> None:
    path = random_demo_checkpoint(tmp_path / "m.pt", 4)
    samples = [HeadSample(u, 320, 320, np.array([[40, 40, 140, 120]], np.float32),
                          np.array([1 + k % 3], np.int64))
               for k, u in enumerate(images["uri"].to_pylist())]
    heads, losses = [], []
    for _ in range(2):
        model, _ = load_detector(path)
        cache = FeatureCache(model)
        backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        log: list[dict] = []
        train_head(model, samples, cache, steps=25, batch_size=4, seed=7, log=log.append)
        assert all(torch.equal(backbone[k], v) for k, v in model.backbone.state_dict().items())
        heads.append(next(model.head.parameters()).detach().clone())
        losses.append(log[-1]["loss"])
    assert torch.equal(heads[0], heads[1]) and losses[0] == losses[1]
    assert len(cache) == 2 * len(samples)  # every image seen plain and mirrored


def test_backbone_tail_trains_the_tail_not_the_cached_block_and_predicts_with_it(
        images, tmp_path) -> None:
    path = random_demo_checkpoint(tmp_path / "m.pt", 5)
    samples = [HeadSample(u, 320, 320, np.array([[30, 50, 150, 170]], np.float32),
                          np.array([1 + k % 3], np.int64))
               for k, u in enumerate(images["uri"].to_pylist())]
    tails = []
    for _ in range(2):
        model, _ = load_detector(path)
        cache = FeatureCache(model, backbone_tail=True)
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        train_head(model, samples, cache, steps=10, batch_size=4, seed=3)
        after = model.backbone.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(k.startswith(("features.1.", "extra.")) for k in changed)
        assert not any("running_" in k for k in changed)  # batch-norm statistics stay fixed
        tails.append(next(model.backbone.extra.parameters()).detach().clone())
        cache.check(model)  # the cached block is untouched: the cache still serves it
    assert torch.equal(tails[0], tails[1])
    # predictions from the cache use the trained tail: equal to the full path of this model
    extractor = ClassScoreExtractor(model.eval(), load_detector(path)[1].categories.category_ids)
    full, _ = predict_images(extractor, images, ShardRef("m", 1, "s"), torch.device("cpu"))
    cached = predict_cached(extractor, images, cache, model_name="m", model_version=1, shard="s")
    for x, y in zip(full.to_pylist(), cached.to_pylist(), strict=True):
        np.testing.assert_allclose([d["score"] for d in x["detections"]],
                                   [d["score"] for d in y["detections"]], atol=1e-5)


def test_backbone_tail_refuses_a_backbone_without_feature_blocks(tmp_path) -> None:
    model, _ = load_detector(random_demo_checkpoint(tmp_path / "m.pt", 1))
    model.backbone = torch.nn.Sequential()
    with pytest.raises(CacheError, match="SSDlite feature extractor"):
        FeatureCache(model, backbone_tail=True)


def test_a_cache_refuses_another_backbone(images, tmp_path) -> None:
    one, _ = load_detector(random_demo_checkpoint(tmp_path / "a.pt", 1))
    two, _ = load_detector(random_demo_checkpoint(tmp_path / "b.pt", 2))
    torch.nn.init.normal_(next(two.backbone.parameters()))
    with pytest.raises(CacheError, match="backbone differs"):
        FeatureCache(one).check(two)
