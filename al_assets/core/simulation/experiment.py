"""``al-assets simulate --preset NAME``: the preset experiment, from nothing to the tables.

One command generates the preset's splits (``presets``), trains the pretrained detector once
(``pretrained``), replays the loop for every strategy x seed with head-only rounds on cached
backbone features (``run_simulation`` with ``cached_features``), and writes the curves, the
labels-saved figures and the paired tests (``report``, ``stats``), logging every run to MLflow.

Budgets are sized as a team would spend them: rounds of 5 % of the pool (60 of 1,200 images),
three rounds, after a 150-image base split. What varies between seeds is training (init order,
flips) and the random strategy's order; the generated data is the same for every seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from al_assets.core.demo.shapes import DEMO_CATEGORIES
from al_assets.core.simulation.config import SimulationConfig, SimulationError
from al_assets.core.simulation.loop import CocoSplit, Tracking, run_simulation
from al_assets.core.simulation.presets import generate_preset, preset
from al_assets.core.simulation.pretrained import PretrainRecipe, pretrained_detector
from al_assets.core.simulation.report import SIMULATION_CURVES, write_outputs
from al_assets.core.simulation.stats import evidence_markdown
from al_assets.core.storage.files import write_bytes_atomic

PRESET_STRATEGIES = ("random", "entropy", "default")
PRESET_SIMULATION = SimulationConfig(
    strategies=PRESET_STRATEGIES,
    seeds=(0, 1, 2),
    initial_size=0,  # the base split is the starting labeled set
    budget=60,  # 5 % of the 1,200-image pool per round
    rounds=3,
    initial_steps=150,  # head fine-tuning on the base split, from the pretrained detector
    round_steps=60,  # each round, from the champion, on everything labeled
    batch_size=16,
    deduplicate=False,  # random stays plain random; the default's diversity is k-center
)
"""The preset experiment's configuration (see the module docstring)."""


def run_preset(
    name: str, root: Path, out: Path, tracking: Tracking, *,
    config: SimulationConfig = PRESET_SIMULATION, recipe: PretrainRecipe = PretrainRecipe(),
    log: Callable[[str], None] | None = print,
) -> pa.Table:
    """Run preset ``name`` end to end; returns SIMULATION_CURVES and writes ``out``'s files."""
    preset(name)  # a clear error for a typo before anything is generated
    started = time.perf_counter()
    paths = generate_preset(Path(root), name)
    checkpoint = pretrained_detector(Path(root), recipe, log)
    config = replace(config, start_checkpoint=str(checkpoint), cached_features=True)
    split = {k: CocoSplit(p, p.parent.parent / "images") for k, p in paths.items()}
    table = run_simulation(split["pool"], split["heldout"], config, Path(out) / "work",
                           tracking, log, base=split["base"])
    write_preset_outputs(name, table, Path(out))
    if log is not None:
        log(f"preset {name}: {time.perf_counter() - started:.0f} s wall; results in {out}")
    return table


def write_preset_outputs(name: str, table: pa.Table, out: Path) -> None:
    """The curves, summaries and plot (``report``) and evidence.md of preset ``name``."""
    write_outputs(table, Path(out))
    names = {c["id"]: c["name"] for c in DEMO_CATEGORIES}
    write_bytes_atomic(Path(out) / "evidence.md",
                       evidence_markdown(table, names, preset(name).rare_classes).encode())


def merge_preset_runs(name: str, runs: list[Path], out: Path) -> pa.Table:
    """One experiment from runs of preset ``name`` made apart (one process per seed, to use
    every core): their curves.parquet concatenated, then written as ``run_preset`` writes.
    A seed's rounds depend only on its seed and the checkpoint, so the merge stands for one
    process given all the seeds."""
    preset(name)
    missing = [str(r) for r in runs if not (Path(r) / "curves.parquet").is_file()]
    if missing:
        raise SimulationError(f"no curves.parquet in {missing}: give the --out folders of "
                              "finished `al-assets simulate --preset` runs")
    table = pa.concat_tables([pq.read_table(Path(r) / "curves.parquet", schema=SIMULATION_CURVES)
                              for r in runs])
    keys = list(zip(*(table[c].to_pylist() for c in ("strategy", "seed", "round"))))
    if len(set(keys)) != len(keys):
        raise SimulationError(f"runs {[str(r) for r in runs]} share a strategy x seed x round: "
                              "merge runs of different seeds")
    write_preset_outputs(name, table, Path(out))
    return table
