"""Paired tests and per-seed label savings from a hand-made curves table."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

from al_assets.core.demo.shapes import DEMO_CATEGORIES
from al_assets.core.simulation.report import curves_table
from al_assets.core.simulation.stats import (
    evidence_markdown,
    final_per_class,
    paired_tests,
    random_gain,
    seed_labels_saved,
    summarize_savings,
)


_NAMES = {c["id"]: c["name"] for c in DEMO_CATEGORIES}


def _row(strategy: str, seed: int, rnd: int, images: int, boxes: int, m: float) -> dict:
    return {"strategy": strategy, "seed": seed, "round": rnd, "labeled_images": images,
            "labeled_boxes": boxes, "map": m, "ap50": m, "map_low": None, "map_high": None,
            "champion_map": m, "promoted": True, "train_seconds": 1.0, "selected_ids": [],
            "pool_with_boxes": None, "class_ap": json.dumps({"1": m, "17": m / 2}),
            "class_boxes": json.dumps({"1": boxes} if strategy == "random" else
                                      {"1": boxes - rnd, "17": rnd})}


def _table():
    rows = []
    for seed, bonus in ((0, 0.02), (1, 0.03), (2, 0.01)):
        for rnd in range(3):
            rows.append(_row("random", seed, rnd, 60 * rnd, 300 * rnd, 0.40 + 0.02 * rnd))
            rows.append(_row("default", seed, rnd, 60 * rnd, 280 * rnd,
                             0.40 + 0.02 * rnd + (bonus if rnd else 0.0)))
    return curves_table(rows)


def test_paired_test_reports_mean_difference_wins_and_p() -> None:
    rows = {r["round"]: r for r in paired_tests(_table()).to_pylist()}
    assert rows[2]["mean_diff"] == pytest.approx(0.02)
    assert rows[2]["std_diff"] == pytest.approx(0.01)
    assert rows[2]["wins"] == 3 and rows[2]["seeds"] == 3
    assert 0 < rows[2]["p_value"] < 0.1
    assert rows[0]["p_value"] is None and rows[0]["wins"] == 0  # identical round 0


def test_labels_saved_per_seed_interpolate_images_and_boxes() -> None:
    entries = seed_labels_saved(_table())
    seed0 = next(e for e in entries if e["seed"] == 0)
    # random reaches 0.44 at 120 images; default reaches it between 60 (0.44) -> at 60
    assert seed0["needed_images"] == pytest.approx(60.0)
    assert seed0["saved_images"] == pytest.approx(0.5)
    assert seed0["saved_boxes"] == pytest.approx(1 - 280 / 600)
    summary = summarize_savings(entries)["default"]
    assert summary["seeds"] == 3 and summary["not_reached_images"] == 0


def test_evidence_markdown_has_the_rare_class_table() -> None:
    table = _table()
    assert final_per_class(table, {1: "circle", 17: "star"})["default"]["star"] == pytest.approx(
        (0.46 + 0.47 + 0.45) / 3 / 2)
    boxes = final_per_class(table, {1: "circle", 17: "star"}, "class_boxes")
    assert boxes["default"] == {"circle": 558.0, "star": 2.0} and boxes["random"] == {
        "circle": 600.0}
    text = evidence_markdown(table, {1: "circle", 17: "star"}, ["star"])
    assert "3/3" in text
    ap_table, box_table = text.split("Held-out AP of the rare classes")[1].split("Rare-class boxes")
    assert "| star | 0.220 | 0.230 |" in ap_table  # random 0.44 / 2, default 0.46 / 2 (mean)
    assert "| star | 0.0 | 2.0 |" in box_table  # random labeled no star; default 2


def test_evidence_warns_when_randoms_curve_is_flat() -> None:
    rising = _table()  # random +0.04 over the run, the same for every seed
    assert random_gain(rising) == pytest.approx((0.04, 0.0, 3))
    assert "the curves are flat" not in evidence_markdown(rising, {1: "circle"})
    slope = {0: 0.002, 1: 0.001, 2: -0.001}  # per round: the seeds disagree more than it gains
    flat = curves_table([_row("random", seed, rnd, 60 * rnd, 300 * rnd, 0.40 + slope[seed] * rnd)
                         for seed in (0, 1, 2) for rnd in range(3)]
                        + [_row("default", 0, rnd, 60 * rnd, 280 * rnd, 0.41) for rnd in range(3)])
    gain, spread, seeds = random_gain(flat)
    assert gain == pytest.approx(0.004 / 3) and spread == pytest.approx(0.003055, abs=1e-5)
    assert seeds == 3
    text = evidence_markdown(flat, {1: "circle"})
    assert "Random gains +0.001 mAP over the whole run" in text and "std 0.003" in text


def test_a_falling_random_curve_warns_even_with_one_seed() -> None:
    one_seed = curves_table([_row("random", 0, rnd, 60 * rnd, 300 * rnd, 0.40 - 0.01 * rnd)
                             for rnd in range(3)])
    assert "Random's mAP does not rise over the run (-0.020)" in evidence_markdown(
        one_seed, {1: "circle"})
    rising = curves_table([_row("random", 0, rnd, 60 * rnd, 300 * rnd, 0.40 + 0.0001 * rnd)
                           for rnd in range(3)])
    assert "flat" not in evidence_markdown(rising, {1: "circle"})  # one seed: spread unknown


def test_a_seed_that_labeled_no_box_of_a_class_counts_zero() -> None:
    rows = [{**_row("random", seed, 1, 60, 300, 0.4),
             "class_boxes": json.dumps({"1": 300} if seed else {"1": 297, "17": 3})}
            for seed in range(3)]
    table = curves_table(rows)
    assert final_per_class(table, {1: "circle", 17: "star"}, "class_boxes", 0.0)["random"][
        "star"] == pytest.approx(1.0)
    assert final_per_class(table, {1: "circle", 17: "star"}, "class_boxes")["random"][
        "star"] == pytest.approx(3.0)  # absent=None: seeds without the class are left out
    assert "| star | 1.0 |" in evidence_markdown(table, {1: "circle", 17: "star"}, ["star"])


def test_runs_made_apart_merge_into_one_experiment(tmp_path) -> None:
    import pyarrow.parquet as pq

    from al_assets.core.simulation.config import SimulationError
    from al_assets.core.simulation.experiment import merge_preset_runs

    whole = _table()
    runs = []
    for seed in (0, 1, 2):  # one folder per seed, as one process per seed writes them
        runs.append(tmp_path / f"seed{seed}")
        runs[-1].mkdir()
        pq.write_table(whole.filter(pc.equal(whole["seed"], seed)), runs[-1] / "curves.parquet")
    merged = merge_preset_runs("long_tail", runs, tmp_path / "out")
    assert merged.num_rows == whole.num_rows and merged.schema.equals(whole.schema)
    assert pq.read_table(tmp_path / "out" / "curves.parquet").num_rows == whole.num_rows
    assert (tmp_path / "out" / "evidence.md").read_text() == evidence_markdown(
        whole.sort_by([("seed", "ascending")]), _NAMES, ["pentagon", "hexagon", "star"])
    with pytest.raises(SimulationError, match="share a strategy x seed x round"):
        merge_preset_runs("long_tail", [runs[0], runs[0]], tmp_path / "twice")
    with pytest.raises(SimulationError, match="no curves.parquet in"):
        merge_preset_runs("long_tail", [tmp_path / "missing"], tmp_path / "none")
    assert not (tmp_path / "twice").exists() and not (tmp_path / "none").exists()
