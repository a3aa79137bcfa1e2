"""Preset pools: seeded, and each one has the trait it is named after."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from al_assets.core.demo.shapes import CLASS_NAMES
from al_assets.core.simulation.presets import (
    PRESETS,
    SHIFTED_DOMAIN,
    _frames,
    generate_split,
    preset,
)


def _boxes(frames) -> Counter:
    return Counter(obj.category for f in frames for obj in f.layout.objects)


def test_long_tail_has_a_30_percent_head_and_three_classes_under_2_percent() -> None:
    counts = _boxes(_frames(replace(PRESETS["long_tail"], sizes={"pool": 3000}), "pool", 0))
    total = sum(counts.values())
    shares = {name: counts[name] / total for name in CLASS_NAMES}
    assert 0.25 <= max(shares.values()) <= 0.35
    assert sum(share < 0.02 for share in shares.values()) >= 3


def test_bursts_repeat_a_scene_with_small_moves_and_heldout_has_none() -> None:
    chosen = replace(PRESETS["bursts"], sizes={"pool": 400, "heldout": 100})
    frames = _frames(chosen, "pool", 0)
    same = [a.render_seed == b.render_seed for a, b in zip(frames, frames[1:])]
    assert np.mean(same) > 0.7  # mean burst length 8
    a, b = next((a, b) for a, b in zip(frames, frames[1:])
                if a.render_seed == b.render_seed and a.layout.objects)
    shift = np.abs(a.layout.objects[0].polygon - b.layout.objects[0].polygon).max()
    assert 0 < shift <= 3.0 + 1e-6
    held = _frames(chosen, "heldout", 0)
    assert len({f.render_seed for f in held}) == len(held)


def test_domain_shift_and_empty_frames_shares() -> None:
    shifted = _frames(replace(PRESETS["domain_shift"], sizes={"pool": 1000, "base": 200}),
                      "pool", 0)
    share = np.mean([f.style == SHIFTED_DOMAIN.render for f in shifted])
    assert 0.33 <= share <= 0.47
    base = _frames(replace(PRESETS["domain_shift"], sizes={"base": 200}), "base", 0)
    assert not any(f.style == SHIFTED_DOMAIN.render for f in base)
    empty = _frames(replace(PRESETS["empty_frames"], sizes={"pool": 1000}), "pool", 0)
    assert 0.40 <= np.mean([not f.layout.objects for f in empty]) <= 0.50


def test_a_split_is_byte_identical_when_generated_twice(tmp_path) -> None:
    small = replace(PRESETS["bursts"], sizes={"pool": 12})
    one = generate_split(tmp_path / "a", small, "pool").read_bytes()
    two = generate_split(tmp_path / "b", small, "pool").read_bytes()
    assert one == two
    images = sorted((tmp_path / "a" / "pool" / "images").iterdir())
    assert len(images) == 12
    assert [p.read_bytes() for p in images] == [
        p.read_bytes() for p in sorted((tmp_path / "b" / "pool" / "images").iterdir())]


def test_an_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown preset 'longtail'; use one of"):
        preset("longtail")


def test_an_extended_pretraining_recipe_names_its_own_checkpoint() -> None:
    from al_assets.core.simulation.config import SimulationError
    from al_assets.core.simulation.pretrained import PretrainRecipe

    assert PretrainRecipe().file_name == "pretrained-s900-b8-seed0.pt"
    extended = PretrainRecipe(more_steps=900)
    assert extended.file_name == "pretrained-s900+900-b8-seed0.pt"
    assert extended.first_stage() == PretrainRecipe()  # the extension starts from stage 1
    with pytest.raises(SimulationError, match="more_steps >= 0"):
        PretrainRecipe(more_steps=-1)
