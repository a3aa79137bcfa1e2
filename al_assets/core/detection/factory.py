"""Build torchvision detectors by name, from random init, torchvision weights or a checkpoint.

Why a factory: the pipeline names a detector by a string (in MLflow, in configs) and must rebuild
exactly the module that was trained, offline. torchvision's builders differ in what a weights
choice changes (Faster R-CNN swaps BatchNorm for FrozenBatchNorm once it is pretrained), so
checkpoints are loaded into a module shaped to fit them, strictly, with errors that say what to do.

Checkpoint format (``torch.save`` of a plain dict, readable with ``weights_only=True``)::

    {"arch": str, "num_classes": int,            # num_classes includes the background
     "category_ids": list[int],                  # model label i <-> category_ids[i - 1]
     "category_names": list[str],
     "state_dict": dict[str, Tensor],            # floats may be float16; loaded as float32
     "meta": dict}                               # format_version, torch versions, training info

A bare state dict (for example torchvision's own ``.pth`` weight file) is accepted too.
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum, detection, get_model_weights
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.ssd import SSD
from torchvision.ops.misc import FrozenBatchNorm2d

from al_assets.core.detection.categories import CategoryMap
from al_assets.core.errors import AlAssetsError
from al_assets.core.storage.files import atomic_path

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_KEYS = ("arch", "num_classes", "category_ids", "category_names", "state_dict", "meta")

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "ssd300_vgg16": detection.ssd300_vgg16,
    "ssdlite320_mobilenet_v3_large": detection.ssdlite320_mobilenet_v3_large,
    "fasterrcnn_mobilenet_v3_large_fpn": detection.fasterrcnn_mobilenet_v3_large_fpn,
    "fasterrcnn_mobilenet_v3_large_320_fpn": detection.fasterrcnn_mobilenet_v3_large_320_fpn,
    "fasterrcnn_resnet50_fpn": detection.fasterrcnn_resnet50_fpn,
    "fasterrcnn_resnet50_fpn_v2": detection.fasterrcnn_resnet50_fpn_v2,
}
"""Detectors the factory builds; all are SSD or Faster R-CNN, which the extractor supports."""

_FLOAT16_MAX = float(torch.finfo(torch.float16).max)


class DetectorError(AlAssetsError, ValueError):
    """A detector that cannot be built as asked (unknown arch, weights name, class count)."""


class WeightsUnavailableError(AlAssetsError, RuntimeError):
    """torchvision weights that would have to be downloaded, on a machine that cannot."""


class CheckpointError(AlAssetsError, ValueError):
    """A checkpoint file that is unreadable, malformed, or made for another detector."""


@dataclass(frozen=True)
class DetectorCheckpoint:
    """A loaded checkpoint; ``arch`` and the category fields are None for a bare state dict."""

    path: Path
    state_dict: dict[str, Tensor]
    arch: str | None = None
    num_classes: int | None = None
    category_ids: tuple[int, ...] | None = None
    category_names: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def categories(self) -> CategoryMap:
        """Category map stored with the checkpoint."""
        if self.category_ids is None or self.category_names is None:
            raise CheckpointError(
                f"{self.path} is a bare state dict without categories; save it with "
                "save_checkpoint(...) to keep the category ids with the weights"
            )
        return CategoryMap(self.category_ids, self.category_names)


def build_detector(
    arch: str,
    num_classes: int,
    weights: str | Path = "none",
    checkpoint: Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``arch`` with ``num_classes`` outputs (background included).

    ``weights``: ``"none"`` (random init, no backbone weights: tests and training from scratch),
    ``"default"`` or a torchvision weight name such as ``"COCO_V1"`` (torchvision downloads them
    into ``$TORCH_HOME``; when ``num_classes`` differs from theirs the class head is replaced by
    a fresh one, for fine-tuning), or a path to a checkpoint file (same as ``checkpoint=``).
    ``kwargs`` go to the torchvision builder (``score_thresh``, ``box_score_thresh``, ...).
    """
    builder = _builder(arch)
    if num_classes < 2:
        raise DetectorError(f"num_classes={num_classes}: it counts the background, so it is >= 2")
    if checkpoint is None and (isinstance(weights, Path) or _looks_like_path(weights)):
        checkpoint, weights = Path(weights), "none"
    if checkpoint is not None:
        if str(weights).lower() != "none":
            raise DetectorError(f"give weights={weights!r} or checkpoint={checkpoint}, not both")
        return _from_checkpoint(arch, num_classes, load_checkpoint(checkpoint), kwargs)
    if weights.lower() == "none":
        kwargs.setdefault("weights_backbone", None)
        with _download_guard(arch, kwargs.get("weights_backbone")):
            return builder(weights=None, num_classes=num_classes, **kwargs)
    return _from_torchvision_weights(arch, num_classes, weights, kwargs)


def load_detector(path: Path, **kwargs: Any) -> tuple[nn.Module, DetectorCheckpoint]:
    """Rebuild the detector saved in an al_assets checkpoint; returns it with the checkpoint."""
    ckpt = load_checkpoint(path)
    if ckpt.arch is None or ckpt.num_classes is None:
        raise CheckpointError(
            f"{path} is a bare state dict that does not say its architecture; use "
            "build_detector(arch, num_classes, checkpoint=path)"
        )
    return _from_checkpoint(ckpt.arch, ckpt.num_classes, ckpt, kwargs), ckpt


def model_num_classes(model: nn.Module) -> int:
    """Number of class outputs (background included) of an SSD or Faster R-CNN module."""
    if isinstance(model, SSD):
        return int(model.head.classification_head.num_columns)
    if isinstance(model, FasterRCNN):
        return int(model.roi_heads.box_predictor.cls_score.out_features)
    raise DetectorError(
        f"{type(model).__name__} is not a torchvision SSD or FasterRCNN; supported: "
        f"{sorted(ARCHITECTURES)}"
    )


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    arch: str,
    categories: CategoryMap,
    meta: Mapping[str, Any] | None = None,
    half: bool = True,
) -> Path:
    """Write ``model`` as an al_assets checkpoint, atomically.

    ``half`` stores floating tensors as float16 (half the size; the detector's outputs move by
    about 1e-3), except tensors whose values do not fit float16. Loading restores float32.
    """
    _builder(arch)
    num_classes = model_num_classes(model)
    if num_classes != categories.num_classes:
        raise CheckpointError(
            f"model has {num_classes} classes but {len(categories.category_ids)} categories + "
            f"background = {categories.num_classes} were given; pass the model's own categories"
        )
    payload = {
        "arch": arch,
        "num_classes": num_classes,
        "category_ids": list(categories.category_ids),
        "category_names": list(categories.names),
        "state_dict": {k: _storable(v, half) for k, v in model.state_dict().items()},
        "meta": {**_version_meta(half), **dict(meta or {})},
    }
    return _atomic_save(payload, Path(path))


def load_checkpoint(path: Path) -> DetectorCheckpoint:
    """Read a checkpoint (al_assets format or a bare state dict), floats as float32."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors alike
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is damaged or not a torch.save file ({exc})"
        ) from exc
    if _is_state_dict(obj):
        return DetectorCheckpoint(path=path, state_dict=_as_float32(obj))
    return _parse_checkpoint(path, obj)


def _builder(arch: str) -> Callable[..., nn.Module]:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise DetectorError(
            f"unknown detector architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or os.sep in weights or weights.endswith((".pt", ".pth"))


def torchvision_weights(arch: str, name: str) -> WeightsEnum:
    """torchvision's weights enum member for ``name`` ('default' or a member name)."""
    enum_cls = get_model_weights(arch)
    try:
        return enum_cls.verify("DEFAULT" if name.lower() == "default" else name)
    except KeyError:
        raise DetectorError(
            f"unknown weights {name!r} for {arch}: use 'none', 'default', one of "
            f"{list(enum_cls.__members__)} or a checkpoint path"
        ) from None


def _from_torchvision_weights(
    arch: str, num_classes: int, name: str, kwargs: dict[str, Any]
) -> nn.Module:
    chosen = torchvision_weights(arch, name)
    builder = _builder(arch)
    with _download_guard(arch, chosen):
        model = builder(weights=chosen, **kwargs)
    if model_num_classes(model) != num_classes:
        replace_class_head(model, arch, num_classes, kwargs)
    return model


@contextmanager
def _download_guard(arch: str, weights: Any) -> Iterator[None]:
    """Turn torchvision's failed download into an error that says how to work offline."""
    try:
        yield
    except urllib.error.URLError as exc:
        raise WeightsUnavailableError(_offline_message(arch, weights, exc)) from exc


def _offline_message(arch: str, weights: Any, exc: Exception) -> str:
    url = getattr(weights, "url", None) or "(torchvision weight url)"
    cache = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return (
        f"weights {weights} for {arch} cannot be downloaded here ({exc}): this machine has no "
        f"network. Either download {url} elsewhere and copy it to {cache} (torchvision then "
        "loads it without network; TORCH_HOME moves that folder), or pass a local checkpoint: "
        f"build_detector({arch!r}, num_classes, checkpoint=Path('model.pt')), written by "
        "save_checkpoint or train_detector's caller."
    )


def replace_class_head(
    model: nn.Module, arch: str, num_classes: int, kwargs: dict[str, Any] | None = None
) -> None:
    """Give a pretrained detector a freshly initialized class head of ``num_classes``
    (torch's global generator draws it: seed it for a reproducible head)."""
    kwargs = kwargs or {}
    if isinstance(model, SSD):
        kwargs = {**kwargs, "weights_backbone": None}
        fresh = _builder(arch)(weights=None, num_classes=num_classes, **kwargs)
        model.head.classification_head = fresh.head.classification_head
    elif isinstance(model, FasterRCNN):
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)


def _from_checkpoint(
    arch: str, num_classes: int, ckpt: DetectorCheckpoint, kwargs: dict[str, Any]
) -> nn.Module:
    if ckpt.arch is not None and ckpt.arch != arch:
        raise CheckpointError(
            f"{ckpt.path} holds a {ckpt.arch} checkpoint, not {arch}; build it with "
            f"arch={ckpt.arch!r}, or use load_detector(path), which reads the arch from the file"
        )
    if ckpt.num_classes is not None and ckpt.num_classes != num_classes:
        raise CheckpointError(
            f"{ckpt.path} has {ckpt.num_classes} classes (background included) but "
            f"num_classes={num_classes} was asked; pass num_classes={ckpt.num_classes} (its "
            f"categories are {list(ckpt.category_ids or [])}), or train a new model for the "
            "new categories"
        )
    kwargs = {**kwargs, "weights_backbone": None}
    model = _builder(arch)(weights=None, num_classes=num_classes, **kwargs)
    _freeze_batchnorm_like(model, ckpt.state_dict)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{ckpt.path} does not fit {arch} with num_classes={num_classes}: "
            f"{str(exc).splitlines()[0]} ... (was it saved from another architecture or "
            "torchvision version?)"
        ) from exc
    return model


def _freeze_batchnorm_like(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Swap BatchNorm2d for FrozenBatchNorm2d where the checkpoint was saved from frozen ones.

    torchvision builds pretrained Faster R-CNN backbones with FrozenBatchNorm2d (no
    ``num_batches_tracked`` buffer) but random-init ones with BatchNorm2d; a fine-tuned
    checkpoint must be loaded into the frozen kind to behave and train as it did.
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.BatchNorm2d):
            continue
        if f"{name}.running_mean" in state_dict and f"{name}.num_batches_tracked" not in state_dict:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, FrozenBatchNorm2d(module.num_features, eps=module.eps))


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _parse_checkpoint(path: Path, obj: Any) -> DetectorCheckpoint:
    if not isinstance(obj, Mapping) or any(k not in obj for k in CHECKPOINT_KEYS):
        found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not an al_assets checkpoint: expected keys {list(CHECKPOINT_KEYS)}, "
            f"found {found}; write checkpoints with save_checkpoint"
        )
    if not _is_state_dict(obj["state_dict"]):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    categories = CategoryMap(
        tuple(int(c) for c in obj["category_ids"]), tuple(str(n) for n in obj["category_names"])
    )
    if categories.num_classes != int(obj["num_classes"]):
        raise CheckpointError(
            f"{path}: num_classes={obj['num_classes']} but {len(categories.category_ids)} "
            "categories are listed; the file is inconsistent, re-save it"
        )
    return DetectorCheckpoint(
        path=path,
        state_dict=_as_float32(obj["state_dict"]),
        arch=str(obj["arch"]),
        num_classes=int(obj["num_classes"]),
        category_ids=categories.category_ids,
        category_names=categories.names,
        meta=dict(obj["meta"]),
    )


def _as_float32(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def _storable(tensor: Tensor, half: bool) -> Tensor:
    tensor = tensor.detach().cpu()
    if half and tensor.is_floating_point():
        fits = tensor.numel() == 0 or float(tensor.abs().max()) <= _FLOAT16_MAX
        if fits:
            return tensor.half().clone()
    return tensor.clone()


def _version_meta(half: bool) -> dict[str, Any]:
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "stored_dtype": "float16" if half else "float32",
    }


def _atomic_save(payload: dict[str, Any], path: Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
