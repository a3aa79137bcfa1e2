"""The offline demo detector: ssdlite320 trained from scratch on generated demo data.

No pretrained detector can be downloaded offline, so the demo trains its own on a labelled set
generated with a different seed than the demo pool (a model that has seen the pool would find
nothing uncertain in it), and reports COCO mAP on a third, held-out set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from al_assets.core.defaults import DEFAULT_ARCH
from al_assets.core.demo.generator import generate_demo_dataset
from al_assets.core.detection.categories import CategoryMap
from al_assets.core.analysis.evaluation import evaluate_coco_map
from al_assets.core.detection.factory import save_checkpoint
from al_assets.core.detection.training import train_detector

TRAIN_SEED, HOLDOUT_SEED = 1000, 2000  # the demo pool uses seed 0


@dataclass(frozen=True)
class DemoTraining:
    train_images: int = 800
    holdout_images: int = 100
    steps: int = 800
    batch_size: int = 8
    seed: int = 0
    threads: int | None = None  # torch threads; None = torch's default (all cores)


def demo_splits(workdir: Path, spec: DemoTraining) -> tuple[Path, Path]:
    """Generate (or reuse) the training and held-out sets; returns their roots."""
    train, holdout = workdir / "train", workdir / "holdout"
    generate_demo_dataset(train, n_images=spec.train_images, seed=TRAIN_SEED)
    generate_demo_dataset(holdout, n_images=spec.holdout_images, seed=HOLDOUT_SEED)
    return train, holdout


def train_demo_detector(out: Path, workdir: Path, spec: DemoTraining = DemoTraining(),
                        log=print) -> dict:
    """Train, evaluate on the held-out set, save a float16 checkpoint; returns the metrics."""
    train, holdout = demo_splits(workdir, spec)
    start = time.perf_counter()
    model = train_detector(
        train / "annotations" / "batch-000.json", train / "images", arch=DEFAULT_ARCH,
        steps=spec.steps, batch_size=spec.batch_size, seed=spec.seed, num_threads=spec.threads, log=log,
        log_every=50,
    )
    seconds = time.perf_counter() - start
    metrics = evaluate_coco_map(model, holdout / "annotations" / "batch-000.json", holdout / "images")
    summary = {k: metrics[k] for k in ("map", "ap50", "ap75") if metrics.get(k) is not None}
    categories = CategoryMap.from_coco_json(train / "annotations" / "batch-000.json")
    save_checkpoint(
        out, model, arch=DEFAULT_ARCH, categories=categories,
        meta={
            "training_data": f"demo generator seed {TRAIN_SEED}, {spec.train_images} images",
            "steps": spec.steps, "batch_size": spec.batch_size, "train_seconds": round(seconds),
            "eval": {**summary, "holdout_images": metrics["num_images"]},
            "per_category_ap": {str(k): v for k, v in metrics["per_category"].items()},
        },
    )
    return {"train_seconds": seconds, **summary, "per_category": metrics["per_category"]}


def random_demo_checkpoint(path: Path, seed: int) -> Path:
    """A random-init demo-category detector for tests and benchmarks, distinct per seed.

    torchvision starts the class head near zero (uniform scores); noise on it makes the
    distributions uneven and each seed's output different.
    """
    import torch

    from al_assets.core.demo.generator import DEMO_CATEGORIES
    from al_assets.core.detection.factory import build_detector

    torch.manual_seed(seed)
    categories = CategoryMap.from_coco_categories(DEMO_CATEGORIES)
    model = build_detector(DEFAULT_ARCH, categories.num_classes)
    with torch.no_grad():
        for param in model.head.classification_head.parameters():
            param.normal_(0.0, 0.3)
    return save_checkpoint(path, model, arch=DEFAULT_ARCH, categories=categories)
