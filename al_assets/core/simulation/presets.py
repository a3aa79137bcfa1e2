"""Named, seeded pools that look like real ones: long tail, duplicate bursts, domain shift, empties.

Why: on an i.i.d. pool of one generator every image is as informative as any other, so no
selection can beat random by much (docs/active-learning.md measured exactly that). Real pools are
not like that: a few classes dominate, video gives runs of near-identical frames, new data comes
from new cameras or lighting, and many frames hold nothing. Each preset adds one of those traits
to the same scene generator (the demo's shapes, rendering and clutter), so the presets differ
only by the trait under test.

Every preset has three splits, drawn from disjoint seed streams:

* ``base``: what a team labeled first: the preset's class prior, always in the base domain,
  independent frames. The round-0 detector is fine-tuned on it;
* ``pool``: the unlabeled pool the strategies pick from (with the preset's trait);
* ``heldout``: the evaluation set, drawn like the pool but with independent frames (a curated
  test set has no bursts; one frame per burst would count a burst once).

The ``pretrained`` split (the same for every preset: base domain, demo class prior) trains the
detector every experiment starts from, as teams start from a COCO-pretrained model.
Images are 320 x 320 (the input size of ssdlite320: nothing is lost to resizing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from al_assets.core.demo.generator import (
    _coco_document,
    _ImagePlan,
    _object_record,
    _write_if_changed,
)
from al_assets.core.demo.render import DEFAULT_RENDER, RenderStyle, encode_image, render_image
from al_assets.core.demo.scene import ImageLayout, LayoutStyle, ObjectLayout, plan_image
from al_assets.core.demo.shapes import CLASS_NAMES, CLASS_PROBABILITIES

SPLITS = ("pretrained", "base", "pool", "heldout")
IMAGE_SIZE = 320  # ssdlite320's input: no resizing
MEAN_OBJECTS = 3.0  # Poisson mean of objects per non-empty image (plus one)
MAX_OBJECTS = 10
RARE_SHARE = 0.05  # a class under this share of the prior is "rare" in the evidence tables
JITTER_PX = 3.0  # largest shift of an object between two frames of a burst
_SPLIT_STREAM = {"pretrained": 10, "base": 11, "pool": 12, "heldout": 13}
_PLAN_STREAM, _LAYOUT_STREAM, _RENDER_STREAM, _JITTER_STREAM = 0, 1, 2, 3
_FIRST_ID = {"pretrained": 1, "base": 1_000_001, "pool": 2_000_001, "heldout": 3_000_001}


def _prior(**weights: float) -> tuple[float, ...]:
    values = np.array([weights[name] for name in CLASS_NAMES], dtype=np.float64)
    return tuple((values / values.sum()).tolist())


DEMO_PRIOR = tuple(CLASS_PROBABILITIES.tolist())  # triangle 30 %, star 3 %
LONG_TAIL_PRIOR = _prior(triangle=30, circle=24, square=19, ellipse=12.5, rectangle=10,
                         pentagon=1.9, hexagon=1.6, star=1.0)  # COCO-like: 3 classes under 2 %


@dataclass(frozen=True)
class Domain:
    """Where and how images are taken: object scale, lighting and sensor."""

    name: str
    layout_sizes: tuple[float, float]
    render: RenderStyle = DEFAULT_RENDER


BASE_DOMAIN = Domain("day", (20.0, 110.0))
SHIFTED_DOMAIN = Domain(
    "night", (14.0, 60.0),  # smaller (farther) objects ...
    RenderStyle(gray=(20.0, 60.0), spread=0.25, gain=(0.55, 0.8), bias=(-10.0, 5.0),
                noise=(8.0, 18.0), blur=(0.6, 1.2)),  # ... on dark, noisy, low-contrast frames
)


@dataclass(frozen=True)
class PoolPreset:
    """One kind of pool: the class prior, bursts, domain mix and empty frames it is drawn with."""

    name: str
    description: str
    prior: tuple[float, ...] = DEMO_PRIOR  # CLASS_NAMES order; base, pool and held-out
    burst_mean: float = 1.0  # mean frames per burst in the pool (geometric); 1: independent
    shifted_fraction: float = 0.0  # pool and held-out frames from SHIFTED_DOMAIN
    empty_fraction: float = 0.05  # frames without any object
    sizes: dict[str, int] = field(default_factory=lambda: {
        "pretrained": 1000, "base": 150, "pool": 1200, "heldout": 400})

    @property
    def rare_classes(self) -> list[str]:
        """Classes under RARE_SHARE of the prior: the ones whose AP the evidence reports."""
        return [n for n, p in zip(CLASS_NAMES, self.prior, strict=True) if p < RARE_SHARE]

    def domain_of(self, rng: np.random.Generator, split: str) -> Domain:
        shifted = split in ("pool", "heldout") and rng.uniform() < self.shifted_fraction
        return SHIFTED_DOMAIN if shifted else BASE_DOMAIN


PRESETS: dict[str, PoolPreset] = {p.name: p for p in (
    PoolPreset("iid", "the control: independent frames of the pretrained data's distribution"),
    PoolPreset("long_tail", "COCO-like class prior: triangle 30 % of boxes, 3 classes under 2 %",
               prior=LONG_TAIL_PRIOR),
    PoolPreset("bursts", "video-like runs of near-identical frames (mean 8 per run, small moves)",
               burst_mean=8.0),
    PoolPreset("domain_shift", "40 % of pool and held-out from a night domain: dark, noisy, "
               "smaller objects; the base split is all day", shifted_fraction=0.4),
    PoolPreset("empty_frames", "45 % of frames hold no object", empty_fraction=0.45),
)}


def preset(name: str) -> PoolPreset:
    """The preset called ``name``; a clear error names the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class _Frame:
    plan: _ImagePlan
    layout: ImageLayout
    render_seed: tuple[int, ...]
    style: RenderStyle


def generate_split(root: Path, chosen: PoolPreset, split: str, seed: int = 0) -> Path:
    """Write ``root/<split>/annotations/<split>.json`` and its images; returns the JSON path.

    Deterministic in (preset, split, seed); rerunning rewrites nothing. The ``pretrained``
    split ignores the preset (one pretrained detector serves every preset).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if split == "pretrained":
        chosen = PRESETS["iid"]
    folder = Path(root) / split
    target = folder / "annotations" / f"{split}.json"
    frames = _frames(chosen, split, seed)
    annotations: list[dict] = []
    for frame in frames:
        for obj in frame.layout.objects:
            annotations.append(_object_record(obj, frame.plan, _FIRST_ID[split] + len(annotations)))
    document = _coco_document(split, seed, [f.plan for f in frames], annotations)
    document["info"]["description"] = f"al_assets preset {chosen.name!r}, split {split}"
    document["info"]["preset"] = chosen.name
    data = (json.dumps(document, separators=(",", ":")) + "\n").encode("utf-8")
    if target.is_file() and target.read_bytes() == data:
        return target
    for frame in frames:
        image = render_image(frame.layout, np.random.default_rng(frame.render_seed), frame.style)
        _write_if_changed(folder / "images" / frame.plan.file_name,
                          encode_image(image, "JPEG", grayscale=False))
    _write_if_changed(target, data)
    return target


def _frames(chosen: PoolPreset, split: str, seed: int) -> list[_Frame]:
    n = chosen.sizes[split]
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], _PLAN_STREAM])
    burst_mean = chosen.burst_mean if split == "pool" else 1.0
    frames: list[_Frame] = []
    scene = 0
    while len(frames) < n:
        length = int(rng.geometric(1.0 / burst_mean)) if burst_mean > 1.0 else 1
        domain = chosen.domain_of(rng, split)
        empty = rng.uniform() < chosen.empty_fraction
        layout = _scene_layout(chosen, domain, empty, [seed, _SPLIT_STREAM[split],
                                                      _LAYOUT_STREAM, scene])
        render_seed = (seed, _SPLIT_STREAM[split], _RENDER_STREAM, scene)
        for step in range(min(length, n - len(frames))):
            moved = layout if step == 0 else _jitter(
                layout, np.random.default_rng([seed, _SPLIT_STREAM[split], _JITTER_STREAM,
                                               scene, step]))
            image_id = _FIRST_ID[split] + len(frames)
            plan = _ImagePlan(
                index=len(frames), image_id=image_id, file_name=f"{split}_{image_id:07d}.jpg",
                width=IMAGE_SIZE, height=IMAGE_SIZE, file_format="JPEG", grayscale=False,
                empty=empty, crowd=False, license=1,
                date_captured=f"2026-01-01 00:{scene % 60:02d}:{step % 60:02d}")
            frames.append(_Frame(plan, moved, render_seed, domain.render))
        scene += 1
    return frames


def _scene_layout(chosen: PoolPreset, domain: Domain, empty: bool, seed: list[int]) -> ImageLayout:
    rng = np.random.default_rng(seed)
    style = LayoutStyle(chosen.prior, *domain.layout_sizes)
    n_objects = 0 if empty else min(1 + int(rng.poisson(MEAN_OBJECTS)), MAX_OBJECTS)
    return plan_image(rng, IMAGE_SIZE, IMAGE_SIZE, n_objects, False, style)


def _jitter(layout: ImageLayout, rng: np.random.Generator) -> ImageLayout:
    """The next frame of a burst: every object moved by at most JITTER_PX, kept inside."""
    moved = []
    for obj in layout.objects:
        shift = rng.uniform(-JITTER_PX, JITTER_PX, size=2)
        lo, hi = obj.polygon.min(axis=0), obj.polygon.max(axis=0)
        shift = np.clip(shift, 1.0 - lo, IMAGE_SIZE - 1.0 - hi)
        moved.append(ObjectLayout(obj.category, np.round(obj.polygon + shift, 2)))
    return ImageLayout(layout.width, layout.height, tuple(moved), layout.crowd)


def generate_preset(root: Path, name: str, seed: int = 0) -> dict[str, Path]:
    """Every split of preset ``name`` under ``root/<name>`` (``pretrained`` under ``root``)."""
    chosen = preset(name)
    out = {"pretrained": generate_split(Path(root), chosen, "pretrained", seed)}
    for split in SPLITS[1:]:
        out[split] = generate_split(Path(root) / name, chosen, split, seed)
    return out
