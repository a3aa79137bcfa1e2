"""Active-learning simulation: strategies, labels-saved arithmetic, and one tiny real loop."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from al_assets.core.demo.generator import generate_demo_dataset
from al_assets.core.prediction.arrow import predictions_batch
from al_assets.core.simulation import (
    SIMULATION_CURVES,
    CocoSplit,
    SimulationConfig,
    SimulationError,
    Tracking,
    curves_png,
    curves_table,
    labels_saved,
    labels_to_reach,
    markdown_summary,
    mean_curves,
    parse_strategy,
    run_simulation,
    select_images,
    select_random,
    select_spread_out,
    write_outputs,
)

CATEGORY_IDS = (1, 3, 5)
# image_id -> class distribution of its one box (None = no detection)
DISTRIBUTIONS = {
    1: [0.98, 0.01, 0.01],  # confident
    2: [0.50, 0.49, 0.01],  # two-way tie: smallest margin, highest ratio
    3: [0.40, 0.30, 0.30],  # spread out: highest entropy and least confidence
    4: None,  # nothing detected
}


def _output(distribution: list[float] | None) -> dict[str, torch.Tensor]:
    """One image's extractor output (at most one box) with its full distribution."""
    rows = [] if distribution is None else [distribution]
    dist = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(CATEGORY_IDS))
    top_scores, top_index = dist.topk(len(CATEGORY_IDS), dim=1)
    ids = torch.tensor(CATEGORY_IDS)
    return {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]] * len(rows)).reshape(-1, 4),
        "scores": top_scores[:, 0] * 0.9,
        "labels": ids[top_index[:, 0]],
        "topk_labels": ids[top_index],
        "topk_scores": top_scores,
        "distribution": dist,
    }


def _predictions(distributions: dict[int, list[float] | None]) -> pa.Table:
    ids = sorted(distributions)
    images = pa.table(
        {
            "image_id": pa.array(ids, pa.int64()),
            "uri": [f"file:///pool/{i}.jpg" for i in ids],
            "width": pa.array([100] * len(ids), pa.int32()),
            "height": pa.array([100] * len(ids), pa.int32()),
        }
    )
    batch = predictions_batch(
        images,
        list(range(len(ids))),
        [_output(distributions[i]) for i in ids],
        model_name="m",
        model_version=1,
        shard="s",
    )
    return pa.Table.from_batches([batch])


def _select(name: str, budget: int, predictions: pa.Table, **kwargs) -> list[int]:
    return select_images(
        parse_strategy(name),
        budget,
        unlabeled_ids=predictions["image_id"].to_pylist(),
        rng=np.random.default_rng(0),
        predictions=predictions,
        **kwargs,
    )


# -- strategies ----------------------------------------------------------------------------
def test_parse_strategy_names_and_errors() -> None:
    assert parse_strategy("random").measure is None
    entropy = parse_strategy("entropy")
    assert (entropy.measure, entropy.agg, entropy.diverse) == ("entropy", "max", False)
    diverse = parse_strategy("margin_diverse:sum")
    assert (diverse.measure, diverse.agg, diverse.diverse) == ("margin", "sum", True)
    for bad in ("entropyy", "entropy:median", "random_diverse"):
        with pytest.raises(ValueError, match="unknown strategy"):
            parse_strategy(bad)


def test_random_is_seeded_reproducible_and_stays_in_the_pool() -> None:
    pool = list(range(100, 150))
    first = select_random(pool, 10, np.random.default_rng([3, 1]))
    assert first == select_random(list(reversed(pool)), 10, np.random.default_rng([3, 1]))
    assert first != select_random(pool, 10, np.random.default_rng([4, 1]))
    assert len(set(first)) == 10 and set(first) <= set(pool)
    with pytest.raises(ValueError, match="more than the 50 unlabeled"):
        select_random(pool, 51, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("least_confidence", [3, 2, 1, 4]),
        ("entropy", [3, 2, 1, 4]),
        ("margin", [2, 3, 1, 4]),
        ("ratio", [2, 3, 1, 4]),
    ],
)
def test_uncertainty_strategies_pick_the_most_uncertain(strategy: str, expected: list[int]) -> None:
    predictions = _predictions(DISTRIBUTIONS)
    for budget in range(1, 5):
        assert _select(strategy, budget, predictions) == expected[:budget]


def test_uncertainty_aggregates_boxes_per_image() -> None:
    """max: one very uncertain box makes its image top; sum: many mildly uncertain boxes win."""
    crowded = _output([0.7, 0.2, 0.1])
    crowded = {k: torch.cat([v] * 4) for k, v in crowded.items()}
    single = _output([0.34, 0.33, 0.33])
    ids = [7, 8]
    images = pa.table(
        {
            "image_id": pa.array(ids, pa.int64()),
            "uri": ["a", "b"],
            "width": pa.array([9, 9], pa.int32()),
            "height": pa.array([9, 9], pa.int32()),
        }
    )
    predictions = pa.Table.from_batches(
        [
            predictions_batch(
                images, [0, 1], [crowded, single], model_name="m", model_version=1, shard="s"
            )
        ]
    )
    assert _select("entropy", 1, predictions) == [8]
    assert _select("entropy:sum", 1, predictions) == [7]


def test_selection_refuses_predictions_that_are_not_the_unlabeled_pool() -> None:
    predictions = _predictions(DISTRIBUTIONS)
    with pytest.raises(ValueError, match="cover exactly the unlabeled pool"):
        select_images(
            parse_strategy("entropy"),
            1,
            unlabeled_ids=[1, 2, 3],
            rng=np.random.default_rng(0),
            predictions=predictions,
        )


def test_diverse_variant_skips_near_duplicates() -> None:
    """Images 3 and 5 are the two most uncertain but near-identical (dHash 1 bit apart)."""
    distributions = {**DISTRIBUTIONS, 5: [0.42, 0.29, 0.29], 6: [0.6, 0.3, 0.1]}
    predictions = _predictions(distributions)
    base = 0x0F0F_0F0F_0F0F_0F0F
    hashes = {
        1: 0xFFFF_0000_FFFF_0000,
        2: 0x3333_3333_3333_3333,
        3: base,
        4: 0,
        5: base ^ 1,
        6: 0xAAAA_AAAA_AAAA_AAAA,
    }
    assert _select("entropy", 2, predictions) == [3, 5]
    diverse = _select("entropy_diverse", 2, predictions, hashes=hashes)
    assert diverse == [3, 6]  # 5 is a near-copy of 3; 6 is the next most uncertain
    # a candidate that duplicates an already labeled image is avoided too
    after_labeled = select_spread_out([3, 6, 2], {**hashes, 99: base}, 1, labeled_ids=[99])
    assert after_labeled == [6]
    # once only near-duplicates are left, they are taken (the budget is always spent)
    assert select_spread_out([3, 5], hashes, 2, candidates_factor=1) == [3, 5]


# -- labels saved --------------------------------------------------------------------------
def test_labels_to_reach_interpolates_and_says_not_reached() -> None:
    x, y = [20, 40, 60, 80], [0.1, 0.2, 0.3, 0.4]
    assert labels_to_reach(x, y, 0.25) == pytest.approx(50.0)
    assert labels_to_reach(x, y, 0.1) == 20.0
    assert labels_to_reach(x, y, 0.05) == 20.0
    assert labels_to_reach(x, y, 0.4) == pytest.approx(80.0)
    assert labels_to_reach(x, y, 0.41) is None
    # first crossing counts, even when the curve dips afterwards
    assert labels_to_reach(x, [0.1, 0.3, 0.2, 0.4], 0.25) == pytest.approx(35.0)
    with pytest.raises(ValueError, match="must not decrease"):
        labels_to_reach([20, 10], [0.1, 0.2], 0.1)


def _hand_table() -> pa.Table:
    """Two seeds per strategy whose means are the curves below (images 20..80, boxes 4/image)."""
    means = {
        "random": [0.1, 0.2, 0.3, 0.4],
        "entropy": [0.1, 0.3, 0.4, 0.45],
        "margin": [0.1, 0.15, 0.2, 0.25],
    }
    rows = []
    for strategy, curve in means.items():
        for seed, offset in ((0, -0.02), (1, 0.02)):
            for rnd, value in enumerate(curve):
                boxes = (20 + 20 * rnd) * (5 if strategy == "entropy" else 4)
                rows.append(
                    {
                        "strategy": strategy,
                        "seed": seed,
                        "round": rnd,
                        "labeled_images": 20 + 20 * rnd,
                        "labeled_boxes": boxes,
                        "map": value + offset,
                        "ap50": 2 * value,
                        "train_seconds": 1.0,
                        "selected_ids": [],
                    }
                )
    return curves_table(rows)


def test_labels_saved_against_random_on_a_hand_made_curve() -> None:
    table = _hand_table()
    by_images = {s.strategy: s for s in labels_saved(table, 0.4, unit="images")}
    assert by_images["entropy"].needed == pytest.approx(60.0)
    assert by_images["entropy"].baseline_needed == pytest.approx(80.0)
    assert by_images["entropy"].saved == pytest.approx(20.0)
    assert by_images["entropy"].saved_fraction == pytest.approx(0.25)
    assert by_images["margin"].needed is None and by_images["margin"].saved is None
    assert by_images["margin"].describe() == "not reached"
    # per box, entropy's crowded images cost more: 300 boxes vs random's 320
    by_boxes = {s.strategy: s for s in labels_saved(table, 0.4, unit="boxes")}
    assert by_boxes["entropy"].needed == pytest.approx(300.0)
    assert by_boxes["entropy"].saved == pytest.approx(20.0)
    # a target random never reaches: nothing can be claimed as saved
    above = {s.strategy: s for s in labels_saved(table, 0.45, unit="images")}
    assert above["entropy"].needed == pytest.approx(80.0) and above["entropy"].saved is None
    assert "random did not reach it" in above["entropy"].describe()


def test_mean_curves_and_summary() -> None:
    table = _hand_table()
    means = {(r["strategy"], r["round"]): r for r in mean_curves(table).to_pylist()}
    assert means[("random", 3)]["map_mean"] == pytest.approx(0.4)
    assert means[("random", 3)]["map_std"] == pytest.approx(np.std([0.38, 0.42], ddof=1))
    assert means[("entropy", 1)]["labeled_boxes_mean"] == 200
    text = markdown_summary(table)
    assert "| 3 | 80 | 0.400 ± 0.028 | 0.450 ± 0.028 | 0.250 ± 0.028 |" in text
    assert "- entropy (images): 60 images vs 80: saved +20 (+25%)" in text
    assert "- margin (images): not reached" in text


# -- the loop, end to end ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[CocoSplit, CocoSplit]:
    root = tmp_path_factory.mktemp("sim")
    (pool_json,) = generate_demo_dataset(root / "pool", n_images=24, seed=5)
    (holdout_json,) = generate_demo_dataset(root / "holdout", n_images=3, seed=6)
    return CocoSplit(pool_json, root / "pool" / "images"), CocoSplit(
        holdout_json, root / "holdout" / "images"
    )


def test_tiny_loop_end_to_end(tiny_splits: tuple[CocoSplit, CocoSplit], tmp_path: Path) -> None:
    import mlflow

    pool, holdout = tiny_splits
    config = SimulationConfig(
        strategies=("random", "entropy_diverse"),
        seeds=(0, 1),
        initial_size=4,
        budget=4,
        rounds=2,
        initial_steps=1,
        round_steps=1,
        batch_size=2,
        score_thresh=0.0,
        device="cpu",
    )
    tracking = Tracking(
        f"sqlite:///{tmp_path / 'mlflow.db'}", "sim-test", str(tmp_path / "artifacts")
    )
    with (
        pytest.warns(UserWarning, match="MALLOC_MMAP_MAX_")
        if not _malloc_env()
        else contextlib.nullcontext()
    ):
        table = run_simulation(pool, holdout, config, tmp_path / "work", tracking, log=None)

    assert table.schema.equals(SIMULATION_CURVES)
    assert table.num_rows == 2 * 2 * 3  # strategies x seeds x (round 0 + 2 rounds)
    for strategy in config.strategies:
        for seed in config.seeds:
            rows = [r for r in table.to_pylist() if r["strategy"] == strategy and r["seed"] == seed]
            assert [r["labeled_images"] for r in rows] == [4, 8, 12]
            picked = [i for r in rows for i in r["selected_ids"]]
            assert len(picked) == 12 == len(set(picked))  # never the same image twice
            boxes = [r["labeled_boxes"] for r in rows]
            assert boxes == sorted(boxes) and all(r["map"] is not None for r in rows)
    for row in table.to_pylist():
        seen = row["pool_with_boxes"]
        if row["strategy"] == "random" or row["round"] == 0:
            assert seen is None
        else:
            assert 0.0 <= seen <= 1.0
    round0 = [r for r in table.to_pylist() if r["round"] == 0 and r["seed"] == 0]
    assert round0[0]["selected_ids"] == round0[1]["selected_ids"]  # one seed set per seed

    client = mlflow.MlflowClient(tracking.tracking_uri)
    experiment = client.get_experiment_by_name("sim-test")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted((r.data.params["strategy"], r.data.params["seed"]) for r in runs) == [
        ("entropy_diverse", "0"),
        ("entropy_diverse", "1"),
        ("random", "0"),
        ("random", "1"),
    ]
    history = client.get_metric_history(runs[0].info.run_id, "labeled_images")
    assert [(m.step, m.value) for m in history] == [(0, 4.0), (1, 8.0), (2, 12.0)]
    assert all(r.info.status == "FINISHED" and r.data.params["budget"] == "4" for r in runs)

    paths = write_outputs(table, tmp_path / "out")
    assert paths["png"].read_bytes().startswith(b"\x89PNG") and curves_png(table)
    assert pq.read_table(paths["curves"]).num_rows == table.num_rows


def test_loop_refuses_a_pool_too_small_for_the_budget(
    tiny_splits: tuple[CocoSplit, CocoSplit], tmp_path: Path
) -> None:
    pool, holdout = tiny_splits
    config = SimulationConfig(initial_size=10, budget=10, rounds=2, device="cpu")
    with pytest.raises(SimulationError, match="30 images, but the pool"):
        run_simulation(
            pool, holdout, config, tmp_path, Tracking(f"sqlite:///{tmp_path}/m.db"), log=None
        )
    with pytest.raises(SimulationError, match="in both the pool and the held-out split"):
        run_simulation(
            pool,
            pool,
            SimulationConfig(initial_size=2, budget=2, rounds=1),
            tmp_path,
            Tracking(f"sqlite:///{tmp_path}/m.db"),
            log=None,
        )


def _malloc_env() -> bool:
    from al_assets.core.detection.training import malloc_env_is_set

    return malloc_env_is_set()
