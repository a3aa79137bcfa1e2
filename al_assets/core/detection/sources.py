"""Where a detector to register comes from: the shipped demo model, a file, or torchvision."""

from __future__ import annotations

from pathlib import Path

from al_assets.core.detection.categories import CategoryMap
from al_assets.core.detection.factory import (
    build_detector,
    save_checkpoint,
    torchvision_weights,
)

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEMO_CHECKPOINT = WEIGHTS_DIR / "demo_detector.pt"
"""ssdlite320 trained on the demo data by ``al-assets train-demo`` (float16, a few MB)."""


def resolve_checkpoint(spec: str, arch: str, workdir: Path) -> tuple[Path, str]:
    """A checkpoint file for ``spec`` and a label of where it came from (an MLflow tag).

    ``demo``: the shipped demo detector; a path: that checkpoint; anything else: torchvision
    weights of ``arch`` by enum name (``DEFAULT``, ``COCO_V1``), downloaded once into
    ``$TORCH_HOME`` and saved as a checkpoint with torchvision's COCO category list.
    """
    if spec == "demo":
        if not DEMO_CHECKPOINT.is_file():
            raise FileNotFoundError(
                f"the demo detector {DEMO_CHECKPOINT} is missing; run `al-assets train-demo` "
                "to train it (a few minutes on CPU)"
            )
        return DEMO_CHECKPOINT, "demo"
    path = Path(spec)
    if path.suffix in {".pt", ".pth"} or path.exists():
        return path, f"checkpoint:{path.name}"
    return _torchvision_checkpoint(arch, spec, workdir), f"torchvision:{arch}.{spec}"


def _torchvision_checkpoint(arch: str, weights: str, workdir: Path) -> Path:
    chosen = torchvision_weights(arch, weights)
    names = list(chosen.meta["categories"])  # index = torchvision label, 0 = background
    model = build_detector(arch, len(names), weights=weights)
    categories = CategoryMap(tuple(range(1, len(names))), tuple(names[1:]))
    return save_checkpoint(
        workdir / f"{arch}-{weights}.pt", model, arch=arch, categories=categories,
        meta={"weights": f"torchvision:{chosen}"}, half=False,
    )
