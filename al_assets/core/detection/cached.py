"""Frozen-backbone rounds: backbone features computed once, the SSD head trained and run on them.

Why: on 2 CPU cores a full fine-tuning round (train + predict the pool + evaluate) of ssdlite320
costs minutes, and an experiment of strategies x seeds x rounds needs hundreds of rounds. With
the backbone frozen at the pretrained detector's weights (in eval mode: batch-norm statistics
fixed), every image's feature maps are the same in every round, strategy and seed, so they are
computed once (and once more mirrored, for the flip augmentation) and a round only runs the
head: the same ``SSD.head``, ``anchor_generator``, matcher and ``compute_loss`` as
``SSD.forward``, and the extractor's own post-processing for predictions. Fine-tuning only the
head of a pretrained detector is also what teams do with small label budgets.

With ``backbone_tail`` the cache stops earlier, at the stride-16 maps of SSDlite's first
feature block (``backbone.features[0]``, 672 x 20 x 20 for ssdlite320), and a round also
fine-tunes the rest of the backbone (``features[1:]``, the stride-32 stage, and the ``extra``
layers) with the head: 1.43 M trainable weights instead of 0.23 M, still no pass over the full
image. Why: a frozen backbone caps what labels can teach (the head-only curves barely rise);
teams with a few hundred labels fine-tune the last stages.

Predictions from the cache carry the same image embedding as the full path's
(``extractor.image_embeddings``, computed by ``from_features``), which diversity reads.
Memory: about 1.33 MB per cached view (float32, ssdlite320; 1.08 MB with ``backbone_tail``);
2,500 views are 3.3 GB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops

from al_assets.core import schemas
from al_assets.core.detection.categories import CategoryMap
from al_assets.core.detection.extractor import ClassScoreExtractor, shape_only_batch
from al_assets.core.detection.training import warmup_cosine
from al_assets.core.errors import AlAssetsError
from al_assets.core.images import decode_rgb
from al_assets.core.prediction.arrow import predictions_batch
from al_assets.core.storage.objects import ObjectStore

FEATURE_BATCH = 16  # images per backbone pass when filling the cache
HEAD_LR = 0.01
"""Peak SGD rate for head-only fine-tuning of a pretrained detector (a fifth of from-scratch)."""


class CacheError(AlAssetsError, ValueError):
    """A model that cannot use the cache (not an SSD, or another backbone)."""


@dataclass(frozen=True)
class HeadSample:
    """One training image: where it is, its size, and its boxes (xyxy px) as model labels."""

    uri: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xyxy in original pixels
    labels: np.ndarray  # (N,) int64 model labels (1..K)


def head_samples(images: pa.Table, annotations: pa.Table, categories: CategoryMap
                 ) -> list[HeadSample]:
    """HeadSamples of IMAGES rows with their ANNOTATIONS (crowd and zero-area boxes left out,
    as the full trainer does; images without boxes stay: they teach the background)."""
    boxes: dict[int, list[tuple[list[float], int]]] = {}
    for row in annotations.select(["image_id", "category_id", "bbox_xywh", "iscrowd"]).to_pylist():
        x, y, w, h = row["bbox_xywh"]
        if not row["iscrowd"] and w > 0 and h > 0:
            boxes.setdefault(row["image_id"], []).append(([x, y, x + w, y + h], row["category_id"]))
    samples = []
    for row in images.select(["image_id", "uri", "width", "height"]).to_pylist():
        found = boxes.get(row["image_id"], [])
        xyxy = np.array([b for b, _ in found], np.float32).reshape(-1, 4)
        labels = categories.labels_of([c for _, c in found]).numpy().astype(np.int64)
        samples.append(HeadSample(row["uri"], row["width"], row["height"], xyxy, labels))
    return samples


def frozen_part(model: nn.Module, backbone_tail: bool = False) -> nn.Module:
    """The part of the backbone a cache holds the output of: all of it, or with
    ``backbone_tail`` SSDlite's first feature block (the rest is trained)."""
    if not backbone_tail:
        return model.backbone
    features = getattr(model.backbone, "features", None)
    if not isinstance(features, nn.Sequential) or not hasattr(model.backbone, "extra"):
        raise CacheError("backbone_tail needs an SSDlite feature extractor (features + extra), "
                         f"got {type(model.backbone).__name__}")
    return features[0]


def tail_blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone blocks ``backbone_tail`` rounds run and train, in ``forward``'s order:
    the feature blocks after the first, then the extra layers."""
    return [*model.backbone.features[1:], *model.backbone.extra]


def tail_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The backbone weights ``backbone_tail`` rounds train."""
    return [p for block in tail_blocks(model) for p in block.parameters()]


def backbone_fingerprint(model: nn.Module, backbone_tail: bool = False) -> str:
    """sha256 of the frozen backbone weights: a cache serves exactly one frozen part."""
    digest = hashlib.sha256()
    for name, tensor in sorted(frozen_part(model, backbone_tail).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Feature maps of images under one frozen SSD backbone (or its first block, with
    ``backbone_tail``), keyed by (uri, flipped).

    float32, so that predictions from the cache equal the full path's."""

    def __init__(self, model: nn.Module, objects: ObjectStore | None = None, *,
                 backbone_tail: bool = False) -> None:
        if not isinstance(model, SSD):
            raise CacheError("feature caching needs an SSD/SSDlite model, got "
                             f"{type(model).__name__}")
        self.backbone_tail = backbone_tail
        self.fingerprint = backbone_fingerprint(model, backbone_tail)
        self.transform = model.transform
        self.frozen = frozen_part(model, backbone_tail).eval()
        self.objects = objects or ObjectStore()
        self._maps: dict[tuple[str, bool], list[Tensor]] = {}
        self.input_size: tuple[int, int] | None = None

    def check(self, model: nn.Module) -> None:
        """Refuse a model whose backbone is not the cached one (its features would be wrong)."""
        if backbone_fingerprint(model, self.backbone_tail) != self.fingerprint:
            raise CacheError("this model's backbone differs from the cached one; the cached "
                             "rounds must start from the checkpoint the cache was built with")

    def __len__(self) -> int:
        return len(self._maps)

    def features(self, keys: Sequence[tuple[str, bool]]) -> list[Tensor]:
        """Batched float32 cached maps of ``(uri, flipped)`` keys, computing missing ones."""
        self.fill(keys)
        levels = zip(*(self._maps[k] for k in keys), strict=True)
        return [torch.stack(level).float() for level in levels]

    def head_inputs(self, model: nn.Module, cached: list[Tensor]) -> list[Tensor]:
        """The head's input maps from cached ones: as they are, or with ``backbone_tail``
        through ``model``'s own (trained) rest of the backbone, as its ``forward`` does."""
        if not self.backbone_tail:
            return cached
        x = cached[0]
        maps = [x]
        for block in tail_blocks(model):
            x = block(x)
            maps.append(x)
        return maps

    def fill(self, keys: Sequence[tuple[str, bool]]) -> None:
        missing = list(dict.fromkeys(k for k in keys if k not in self._maps))
        for start in range(0, len(missing), FEATURE_BATCH):
            chunk = missing[start:start + FEATURE_BATCH]
            images = [self._image(uri, flipped) for uri, flipped in chunk]
            with torch.inference_mode():
                batch, _ = self.transform(images, None)
                out = self.frozen(batch.tensors)
                maps = [out] if self.backbone_tail else list(out.values())
            self.input_size = tuple(batch.tensors.shape[-2:])
            for i, key in enumerate(chunk):
                self._maps[key] = [m[i].clone() for m in maps]

    def _image(self, uri: str, flipped: bool) -> Tensor:
        image = decode_rgb(self.objects.read_bytes(uri), uri).float().div_(255)
        return image.flip(-1) if flipped else image


def train_head(
    model: SSD, samples: Sequence[HeadSample], cache: FeatureCache, *, steps: int,
    batch_size: int = 16, lr: float = 0.01, weight_decay: float = 4e-5, seed: int = 0,
    log: Callable[[dict], None] | None = None,
) -> SSD:
    """Fine-tune ``model.head`` (and with a ``backbone_tail`` cache the backbone after its
    first block) for ``steps`` SGD steps on cached features; returns the model in eval.

    The backbone stays in eval mode (batch-norm statistics fixed: batches of 16 would only add
    noise to them). Each sample is seen unflipped or mirrored with probability 1/2 (the full
    trainer's flip). Same samples, settings and seed give the same weights.
    """
    if not samples:
        raise CacheError("no labeled image to train the head on")
    cache.check(model)
    model.train()
    model.backbone.eval()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    tail = tail_parameters(model) if cache.backbone_tail else []
    for p in tail:
        p.requires_grad_(True)
    params = [p for p in model.head.parameters() if p.requires_grad] + tail
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    warmup = min(50, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup))
    rng = np.random.default_rng(seed)
    order = np.zeros(0, np.int64)
    for step in range(1, steps + 1):
        if order.size < batch_size:
            order = np.concatenate([order, rng.permutation(len(samples))])
        picks, order = order[:batch_size], order[batch_size:]
        flips = rng.uniform(size=picks.size) < 0.5
        batch = [samples[int(i)] for i in picks]
        features = cache.head_inputs(model, cache.features(
            [(s.uri, bool(f)) for s, f in zip(batch, flips, strict=True)]))
        losses = _head_losses(model, features, [_target(s, bool(f), cache.input_size)
                                                for s, f in zip(batch, flips, strict=True)])
        loss = losses["bbox_regression"] + losses["classification"]
        if not torch.isfinite(loss):
            raise CacheError(f"head loss became {float(loss)} at step {step}; lower lr ({lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None and (step % 25 == 0 or step == steps):
            log({"step": step, "steps": steps, "loss": float(loss.detach())})
    for p in tail:
        p.requires_grad_(False)
    return model.eval()


def _target(sample: HeadSample, flipped: bool, size: tuple[int, int] | None) -> dict[str, Tensor]:
    """The sample's boxes as the transform resizes them (and mirrored like the cached view)."""
    boxes = torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4).clone()
    if flipped:
        boxes[:, [0, 2]] = sample.width - boxes[:, [2, 0]]
    height, width = size or (sample.height, sample.width)
    scale = torch.tensor([width / sample.width, height / sample.height] * 2)
    return {"boxes": boxes * scale, "labels": torch.as_tensor(sample.labels, dtype=torch.int64)}


def _head_losses(model: SSD, features: list[Tensor], targets: list[dict[str, Tensor]]
                 ) -> dict[str, Tensor]:
    """``SSD.forward``'s training branch after the backbone: head, anchors, matching, loss."""
    head_outputs = model.head(features)
    anchors = model.anchor_generator(shape_only_batch(model, len(targets)), features)
    matched = []
    for image_anchors, target in zip(anchors, targets, strict=True):
        if target["boxes"].numel() == 0:
            matched.append(torch.full((image_anchors.size(0),), -1, dtype=torch.int64))
            continue
        quality = box_ops.box_iou(target["boxes"], image_anchors)
        matched.append(model.proposal_matcher(quality))
    return model.compute_loss(targets, head_outputs, anchors, matched)


def predict_cached(
    extractor: ClassScoreExtractor, images: pa.Table, cache: FeatureCache, *, model_name: str,
    model_version: int, shard: str, batch_size: int = 32,
) -> pa.Table:
    """DETECTIONS of ``images`` (IMAGES rows) from cached features: the head and the extractor's
    own post-processing, exactly as ``predict_shard`` would write them for this model."""
    cache.check(extractor.model)
    batches = []
    uris = images["uri"].to_pylist()
    sizes = list(zip(images["height"].to_pylist(), images["width"].to_pylist(), strict=True))
    for start in range(0, len(uris), batch_size):
        rows = list(range(start, min(start + batch_size, len(uris))))
        with torch.inference_mode():
            features = cache.head_inputs(extractor.model,
                                         cache.features([(uris[r], False) for r in rows]))
        outputs = extractor.from_features(features, [sizes[r] for r in rows])
        batches.append(predictions_batch(images, rows, outputs, model_name=model_name,
                                         model_version=model_version, shard=shard))
    return pa.Table.from_batches(batches, schemas.DETECTIONS)
