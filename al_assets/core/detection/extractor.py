"""Per-box class distributions from a torchvision SSD/SSDlite or Faster R-CNN detector.

A plain torchvision detector returns one label and one score per box; uncertainty sampling needs
the whole class distribution behind each box (the notebook's ``SSDClassScoresExtractor``).
``ClassScoreExtractor`` runs the model's own modules (transform, backbone, head / RPN + RoI head)
and then a copy of torchvision's ``postprocess_detections`` that also remembers which anchor
(SSD) or RPN proposal (Faster R-CNN) each kept detection came from, so the class logits of that
anchor/proposal can be read back. Every step (score threshold, per-class top-k candidates,
box decoding and clipping, batched NMS, ``detections_per_img``, rescaling to the original image)
is the model's own, with its own settings, so boxes, labels and scores are exactly those of the
plain detector.

Two deliberate differences from the plain output:

* One detection per anchor/proposal. Per-class NMS can keep the same anchor under several labels
  (a box that is 40% "cat" and 35% "dog" survives in both classes). Those rows describe one
  object and would count it twice in per-image uncertainty, so only the highest-scoring kept
  label is returned; the others remain visible in its distribution. ``one_per_anchor=False``
  returns torchvision's rows unchanged.
* The distribution is the *foreground* softmax: the background column is dropped and the rest
  renormalized (a softmax over the foreground logits, which is the same and stays exact when
  the background probability is close to 1). The background column measures objectness, not
  which class the model hesitates between; left in, every faint box would look "uncertain".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops

from al_assets.core.detection.factory import DetectorError, load_detector, model_num_classes


@dataclass(frozen=True)
class Postprocess:
    """torchvision's post-processing knobs, given to the extractor as torchvision's ``SSD``
    takes them (``None``: keep the detector's own)."""

    score_thresh: float | None = None
    topk_candidates: int | None = None
    detections_per_img: int | None = None

    def apply(self, model: nn.Module) -> None:
        target = getattr(model, "roi_heads", model)  # Faster R-CNN keeps them on roi_heads
        for name in ("score_thresh", "detections_per_img"):
            if getattr(self, name) is not None:
                setattr(target, name, getattr(self, name))
        if self.topk_candidates is not None and hasattr(model, "topk_candidates"):
            model.topk_candidates = self.topk_candidates


class ClassScoreExtractor(nn.Module):
    """Wrap a detector; ``forward`` returns detections with their class distributions.

    Each image's dict holds ``boxes`` (N, 4) xyxy pixels of the original image, ``scores`` (N,)
    the detector's own score (softmax incl. background) for ``labels`` (N,) dataset category
    ids, ``topk_labels``/``topk_scores`` (N, k) the top of the foreground distribution in
    descending order, ``distribution`` (N, K) in ``category_ids`` order (when
    ``with_distribution``), and ``anchor_idx`` (N,) the SSD anchor or R-CNN proposal index.
    """

    def __init__(
        self,
        model: nn.Module,
        category_ids: Sequence[int],
        *,
        topk: int = 5,
        with_distribution: bool = True,
        one_per_anchor: bool = True,
        postprocess: Postprocess = Postprocess(),
    ) -> None:
        super().__init__()
        num_classes = model_num_classes(model)
        _check_supported(model)
        ids = [int(c) for c in category_ids]
        if len(ids) != num_classes - 1 or len(set(ids)) != len(ids):
            raise DetectorError(
                f"the model has {num_classes - 1} foreground classes but category_ids={ids}; "
                "give one distinct dataset id per class, in model-label order"
            )
        if topk < 1:
            raise DetectorError(f"topk={topk}: ask for at least one class per box")
        postprocess.apply(model)
        self.model = model
        self.category_ids = tuple(ids)
        self.topk = min(topk, len(ids))
        self.with_distribution = with_distribution
        self.one_per_anchor = one_per_anchor
        self.register_buffer("_id_of_label", torch.tensor([0, *ids]), persistent=False)
        self.train(model.training)

    def reconfigured(self, *, with_distribution: bool, postprocess: Postprocess
                     ) -> ClassScoreExtractor:
        """The same detector with other inference settings (one prediction run's config).

        The weights are shared, not copied, and torchvision keeps the post-processing settings
        on the detector itself: they hold for every extractor of this detector until the next
        ``reconfigured``. A prediction run loads its own model version, so runs never share."""
        return ClassScoreExtractor(self.model, self.category_ids, topk=self.topk,
                                   with_distribution=with_distribution,
                                   one_per_anchor=self.one_per_anchor, postprocess=postprocess)

    @classmethod
    def from_checkpoint(
        cls, path: Path, *, detector_kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> ClassScoreExtractor:
        """Extractor over an al_assets checkpoint, in eval mode, with its stored categories.

        ``detector_kwargs`` (``score_thresh``, ...) go to the torchvision builder: thresholds
        are inference settings, not part of the checkpoint.
        """
        model, ckpt = load_detector(path, **dict(detector_kwargs or {}))
        return cls(model.eval(), ckpt.categories.category_ids, **options)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        if self.model.training:
            raise RuntimeError(
                "ClassScoreExtractor mirrors the detector's inference path; call .eval() first"
            )
        with torch.inference_mode():
            original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
            batch, _ = self.model.transform(images, None)
            features = _backbone_features(self.model, batch)
            if isinstance(self.model, SSD):
                kept = _ssd_head_detections(self.model, batch, list(features.values()))
            else:
                kept = _rcnn_detections(self.model, batch, features)
            kept = self.model.transform.postprocess(kept, batch.image_sizes, original_sizes)
            embeddings = image_embeddings(list(features.values()))
            return [self._finish(d, e) for d, e in zip(kept, embeddings, strict=True)]

    def from_features(
        self, features: list[Tensor], original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """``forward`` from precomputed SSD backbone maps (batched, at the transform's input
        size): the frozen-backbone rounds of ``detection.cached`` run only the head."""
        if not isinstance(self.model, SSD):
            raise DetectorError("from_features supports SSD/SSDlite models only")
        with torch.inference_mode():
            batch = shape_only_batch(self.model, len(original_sizes))
            kept = _ssd_head_detections(self.model, batch, features)
            kept = self.model.transform.postprocess(kept, batch.image_sizes, original_sizes)
            embeddings = image_embeddings(features)
            return [self._finish(d, e) for d, e in zip(kept, embeddings, strict=True)]

    def _finish(self, det: dict[str, Tensor], embedding: Tensor) -> dict[str, Tensor]:
        """Drop repeated anchors, map labels to dataset ids, add the foreground distribution."""
        if self.one_per_anchor:
            det = {key: value[_first_occurrences(det["anchor_idx"])] for key, value in det.items()}
        distribution = F.softmax(det.pop("logits")[:, 1:], dim=-1)
        topk_scores, topk_index = distribution.topk(self.topk, dim=1)
        out = {
            "boxes": det["boxes"],
            "scores": det["scores"],
            "labels": self._id_of_label[det["labels"]],
            "topk_labels": self._id_of_label[topk_index + 1],
            "topk_scores": topk_scores,
            "anchor_idx": det["anchor_idx"],
            "embedding": embedding,
        }
        if self.with_distribution:
            out["distribution"] = distribution
        return out


def shape_only_batch(model: SSD, n: int) -> ImageList:
    """An ImageList of ``n`` images at the SSD transform's fixed input size, without pixels:
    anchors and post-processing need only the shapes."""
    if model.transform.fixed_size is None:
        raise DetectorError("cached features need an SSD with a fixed input size (SSDlite/SSD300)")
    height, width = model.transform.fixed_size
    return ImageList(torch.zeros(()).expand(n, 3, height, width), [(height, width)] * n)


def _check_supported(model: nn.Module) -> None:
    if isinstance(model, FasterRCNN) and (
        model.roi_heads.has_mask() or model.roi_heads.has_keypoint()
    ):
        raise DetectorError(
            f"{type(model).__name__} has mask or keypoint heads; the extractor returns boxes only "
            "and supports plain SSD, SSDlite and Faster R-CNN detectors"
        )


def _first_occurrences(index: Tensor) -> Tensor:
    """Positions of the first row of each distinct value, in row order.

    Rows come sorted by descending score (batched NMS output), so the first row of an anchor is
    its highest-scoring kept label.
    """
    if index.numel() == 0:
        return index
    _, inverse = torch.unique(index, return_inverse=True)
    rows = torch.arange(index.numel(), device=index.device)
    first = torch.full_like(rows[: int(inverse.max()) + 1], index.numel())
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first.sort().values


def _backbone_features(model: nn.Module, batch: ImageList) -> OrderedDict[str, Tensor]:
    features = model.backbone(batch.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    return features


EMBEDDING_MAPS = 2
"""Backbone maps (highest resolutions first) whose spatial means form an image's embedding."""


def image_embeddings(features: list[Tensor]) -> Tensor:
    """(B, d) L2-normalized image embeddings: the spatial means of the first EMBEDDING_MAPS
    backbone maps, concatenated. The detector's own view of an image, for diversity: near
    frames land close, another domain far (1152 values for ssdlite320)."""
    pooled = torch.cat([m.float().mean(dim=(-2, -1)) for m in features[:EMBEDDING_MAPS]], dim=1)
    return F.normalize(pooled, dim=1)


def _ssd_head_detections(
    model: SSD, batch: ImageList, features: list[Tensor]
) -> list[dict[str, Tensor]]:
    """``SSD.forward`` (eval) after the backbone + ``postprocess_detections``, with anchors."""
    head_outputs = model.head(features)
    anchors = model.anchor_generator(batch, features)
    pred_scores = F.softmax(head_outputs["cls_logits"], dim=-1)
    per_image = zip(
        head_outputs["bbox_regression"],
        pred_scores,
        head_outputs["cls_logits"],
        anchors,
        batch.image_sizes,
        strict=True,
    )
    return [
        _ssd_image(model, regression, scores, logits, image_anchors, shape)
        for regression, scores, logits, image_anchors, shape in per_image
    ]


def _ssd_image(
    model: SSD,
    regression: Tensor,
    scores: Tensor,
    logits: Tensor,
    anchors: Tensor,
    image_shape: tuple[int, int],
) -> dict[str, Tensor]:
    boxes = model.box_coder.decode_single(regression, anchors)
    boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
    anchor_parts, score_parts, label_parts = [], [], []
    for label in range(1, scores.size(-1)):
        score = scores[:, label]
        anchor_idx = torch.where(score > model.score_thresh)[0]
        score = score[anchor_idx]
        num_topk = min(score.numel(), model.topk_candidates)
        score, idxs = score.topk(num_topk)
        anchor_parts.append(anchor_idx[idxs])
        score_parts.append(score)
        label_parts.append(torch.full_like(score, fill_value=label, dtype=torch.int64))
    anchor_idx = torch.cat(anchor_parts)
    image_boxes, image_scores = boxes[anchor_idx], torch.cat(score_parts)
    image_labels = torch.cat(label_parts)
    keep = box_ops.batched_nms(image_boxes, image_scores, image_labels, model.nms_thresh)
    keep = keep[: model.detections_per_img]
    return {
        "boxes": image_boxes[keep],
        "scores": image_scores[keep],
        "labels": image_labels[keep],
        "anchor_idx": anchor_idx[keep],
        "logits": logits[anchor_idx[keep]],
    }


def _rcnn_detections(
    model: FasterRCNN, batch: ImageList, features: OrderedDict[str, Tensor]
) -> list[dict[str, Tensor]]:
    """``GeneralizedRCNN.forward`` (eval) + ``RoIHeads.postprocess_detections``, with proposals."""
    proposals, _ = model.rpn(batch, features, None)
    heads = model.roi_heads
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    boxes_per_image = [p.shape[0] for p in proposals]
    pred_boxes = heads.box_coder.decode(box_regression, proposals)
    pred_scores = F.softmax(class_logits, -1)
    per_image = zip(
        pred_boxes.split(boxes_per_image, 0),
        pred_scores.split(boxes_per_image, 0),
        class_logits.split(boxes_per_image, 0),
        batch.image_sizes,
        strict=True,
    )
    return [_rcnn_image(model, *parts) for parts in per_image]


def _rcnn_image(
    model: FasterRCNN, boxes: Tensor, scores: Tensor, logits: Tensor, image_shape: tuple[int, int]
) -> dict[str, Tensor]:
    heads = model.roi_heads
    boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
    labels = torch.arange(scores.shape[-1], device=scores.device).view(1, -1).expand_as(scores)
    proposal = torch.arange(scores.shape[0], device=scores.device).view(-1, 1).expand_as(scores)
    # class-specific boxes: row (proposal, label) keeps the box regressed for that label
    boxes = boxes[:, 1:].reshape(-1, 4)
    scores, labels, proposal = (t[:, 1:].reshape(-1) for t in (scores, labels, proposal))
    inds = torch.where(scores > heads.score_thresh)[0]
    boxes, scores, labels, proposal = boxes[inds], scores[inds], labels[inds], proposal[inds]
    keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
    boxes, scores, labels, proposal = boxes[keep], scores[keep], labels[keep], proposal[keep]
    keep = box_ops.batched_nms(boxes, scores, labels, heads.nms_thresh)
    keep = keep[: heads.detections_per_img]
    return {
        "boxes": boxes[keep],
        "scores": scores[keep],
        "labels": labels[keep],
        "anchor_idx": proposal[keep],
        "logits": logits[proposal[keep]],
    }
