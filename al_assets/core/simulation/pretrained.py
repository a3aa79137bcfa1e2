"""The detector every preset experiment starts from, as teams start from a pretrained model.

Trained once from scratch on the presets' ``pretrained`` split (base domain, demo class prior,
1000 images, 900 steps of 8) and kept next to the preset data; later experiments reuse it while its recipe is
unchanged (the recipe is part of the file name).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from al_assets.core.defaults import DEFAULT_ARCH
from al_assets.core.detection.categories import CategoryMap
from al_assets.core.analysis.evaluation import evaluate_coco_map
from al_assets.core.detection.factory import save_checkpoint
from al_assets.core.detection.training import train_detector
from al_assets.core.simulation.config import SimulationError
from al_assets.core.simulation.presets import PRESETS, generate_split



@dataclass(frozen=True)
class PretrainRecipe:
    """``steps`` from scratch (measured: 1483 s on 2 CPU cores shared with other work, held-out
    mAP 0.343), then optionally ``more_steps`` warm-started at the fine-tuning rate; stage 1 is
    kept, so extending the recipe pays only for the extension."""

    steps: int = 900
    more_steps: int = 0
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.more_steps < 0 or self.batch_size < 1:
            raise SimulationError(f"pretraining needs steps >= 1, more_steps >= 0 and "
                                  f"batch_size >= 1; got {self}")

    @property
    def file_name(self) -> str:
        more = f"+{self.more_steps}" if self.more_steps else ""
        return f"pretrained-s{self.steps}{more}-b{self.batch_size}-seed{self.seed}.pt"

    def first_stage(self) -> PretrainRecipe:
        return PretrainRecipe(self.steps, 0, self.batch_size, self.seed)


def pretrained_detector(root: Path, recipe: PretrainRecipe = PretrainRecipe(),
                        log: Callable[[str], None] | None = print) -> Path:
    """The pretrained checkpoint under ``root`` (trained and evaluated when missing)."""
    path = Path(root) / recipe.file_name
    if path.is_file():
        return path
    init = pretrained_detector(root, recipe.first_stage(), log) if recipe.more_steps else None
    steps = recipe.more_steps or recipe.steps
    train = generate_split(Path(root), PRESETS["iid"], "pretrained")
    heldout = generate_split(Path(root) / "iid", PRESETS["iid"], "heldout")
    started = time.perf_counter()

    def progress(entry: dict) -> None:
        if log is not None:
            log(f"pretraining {path.name} step {entry['step']}/{steps}: loss {entry['loss']:.3f}")

    model = train_detector(train, train.parent.parent / "images", arch=DEFAULT_ARCH, steps=steps,
                           batch_size=recipe.batch_size, seed=recipe.seed, log=progress,
                           log_every=50, init_checkpoint=init)
    seconds = time.perf_counter() - started
    metrics = evaluate_coco_map(model, heldout, heldout.parent.parent / "images")
    if log is not None:
        log(f"pretrained detector {path.name}: mAP {metrics['map']:.3f} (AP50 {metrics['ap50']:.3f}) on "
            f"{metrics['num_images']} held-out images, trained {seconds:.0f} s")
    return save_checkpoint(
        path, model, arch=DEFAULT_ARCH, categories=CategoryMap.from_coco_json(train),
        meta={"recipe": asdict(recipe), "train_seconds": round(seconds),
              "eval": {k: metrics[k] for k in ("map", "ap50", "ap75")},
              "per_category_ap": {str(k): v for k, v in metrics["per_category"].items()}},
    )
