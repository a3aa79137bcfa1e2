"""Selection strategies: class weights, k-center diversity, the default strategy's pick."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from al_assets.core.loop.selection import (
    CLASS_CAP,
    STRATEGIES,
    WEIGHT_RANGE,
    ScoringSettings,
    SelectionConfig,
    class_ap_of,
    class_weights,
    labeled_box_counts,
    pool_ranking,
    rank_images,
    select_batch,
    select_from_store,
)
from al_assets.core.queue.diversity import farthest_first
from al_assets.core.schemas import MODEL_EVALUATION, DETECTIONS
from al_assets.core.scoring.aggregation import aggregate_images
from al_assets.core.scoring.box_scores import box_scores


def _det(label: int, p: float, classes: tuple[int, ...] = (1, 2, 3, 4)) -> dict:
    """A box whose distribution puts ``p`` on ``label`` and the rest evenly on the others."""
    rest = (1.0 - p) / (len(classes) - 1)
    dist = [p if c == label else rest for c in classes]
    order = sorted(range(len(classes)), key=lambda k: -dist[k])
    return {"box": {"xmin": 1.0, "ymin": 1.0, "xmax": 50.0, "ymax": 40.0}, "score": 0.9,
            "label_id": label, "label_ids": [classes[k] for k in order[:2]],
            "scores": [dist[k] for k in order[:2]], "distribution": dist}


def _predictions(dets: dict[int, list[dict]], embeddings: dict[int, list[float]] | None = None
                 ) -> pa.Table:
    rows = [{"image_id": i, "uri": f"file:///pool/{i}.jpg", "width": 64, "height": 64,
             "model_name": "m", "model_version": 1, "shard": "s", "detections": d,
             "embedding": None if embeddings is None else embeddings[i]}
            for i, d in dets.items()]
    return pa.Table.from_pylist(rows, schema=DETECTIONS)


def _select(predictions: pa.Table, strategy: str, size: int, **kwargs) -> list[int]:
    _, rankings = rank_images(predictions)
    by_id = {i: k for k, i in enumerate(predictions["image_id"].to_pylist())}
    queue = select_batch(
        rankings, lambda ids: predictions.take(pa.array([by_id[i] for i in ids.to_pylist()])),
        SelectionConfig(strategy=strategy, size=size, deduplicate=False), **kwargs)
    return queue["image_id"].to_pylist()


def test_farthest_first_reaches_the_small_far_cluster_second_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.01, (50, 8)) + np.eye(8)[0]
    b = rng.normal(0, 0.01, (5, 8)) + np.eye(8)[1]
    order = farthest_first(np.vstack([a, b]), first=0)
    assert order[0] == 0
    assert order[1] >= 50  # the far cluster comes second, although it is 1/11 of the rows
    assert sorted(order.tolist()) == list(range(55))
    assert farthest_first(np.vstack([a, b]), first=0).tolist() == order.tolist()


def test_farthest_first_starts_away_from_labeled_centers() -> None:
    x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0]])
    order = farthest_first(x, first=0, centers=np.array([[5.0, 0.0]]))
    assert order.tolist() == [0, 1, 2]  # row 2 sits on a labeled image: last
    with pytest.raises(ValueError, match="first=3"):
        farthest_first(x, first=3)


def test_calibrated_weights_follow_difficulty_and_rare_weights_follow_label_counts() -> None:
    calibrated = class_weights(STRATEGIES["calibrated"], [1, 2, 3],
                               class_ap={1: 0.8, 2: 0.4, 3: None})
    assert calibrated[2] > calibrated[3] > calibrated[1]  # AP 0.4 hardest; no AP = the mean
    assert calibrated[2] / calibrated[1] == pytest.approx(0.6 / 0.2)
    rare = class_weights(STRATEGIES["balanced"], [1, 2, 3], labeled_boxes={1: 300, 2: 30})
    assert rare[3] > rare[2] > rare[1]
    assert all(WEIGHT_RANGE[0] <= w <= WEIGHT_RANGE[1] for w in rare.values())
    assert class_weights(STRATEGIES["entropy"], [1, 2], class_ap={1: 0.1}) == {}


def test_labeled_box_counts_skip_crowds() -> None:
    table = pa.table({"category_id": pa.array([1, 1, 2, 2], pa.int32()),
                      "iscrowd": [False, False, True, False]})
    assert labeled_box_counts(table) == {1: 2, 2: 1}


def test_class_weights_reorder_the_images_by_weighted_box_uncertainty() -> None:
    predictions = _predictions({1: [_det(1, 0.4)], 2: [_det(2, 0.55)]})
    boxes = box_scores(predictions)
    images = predictions.select(["image_id", "uri"])
    plain = aggregate_images(boxes, images, measure="entropy")
    weighted = aggregate_images(boxes, images, measure="entropy", class_weights={2: 3.0})
    assert plain["image_id"].to_pylist() == [1, 2]
    assert weighted["image_id"].to_pylist() == [2, 1]


def _runner_up(label: int, second: int, p1: float, p2: float) -> dict:
    """A box of ``label`` whose runner-up class is ``second`` (four classes 1-4)."""
    rest = (1.0 - p1 - p2) / 2
    dist = [p1 if c == label else p2 if c == second else rest for c in (1, 2, 3, 4)]
    return {"box": {"xmin": 1.0, "ymin": 1.0, "xmax": 50.0, "ymax": 40.0}, "score": 0.9,
            "label_id": label, "label_ids": [label, second], "scores": [p1, p2],
            "distribution": dist}


def test_soft_weights_are_the_expected_weight_over_the_two_most_likely_classes() -> None:
    # same entropy for both images; image 2's box has the rare class 4 as its runner-up
    predictions = _predictions({1: [_runner_up(1, 2, 0.6, 0.3)], 2: [_runner_up(1, 4, 0.6, 0.3)]})
    boxes = box_scores(predictions)
    images = predictions.select(["image_id", "uri"])
    weights = {1: 1.0, 2: 1.0, 4: 4.0}
    hard = aggregate_images(boxes, images, measure="entropy", class_weights=weights)
    soft = aggregate_images(boxes, images, measure="entropy", class_weights=weights,
                            soft_weights=True)
    assert hard["uncertainty"][0].as_py() == pytest.approx(hard["uncertainty"][1].as_py())
    assert soft["image_id"].to_pylist() == [2, 1]
    entropy = aggregate_images(boxes, images, measure="entropy")["uncertainty"][0].as_py()
    expected = (0.6 * 1.0 + 0.3 * 4.0) / 0.9  # (p1 w1 + p2 w2) / (p1 + p2)
    assert soft["uncertainty"][0].as_py() == pytest.approx(entropy * expected, rel=1e-5)
    # a class the weights do not list counts 1
    unlisted = aggregate_images(boxes, images, measure="entropy", class_weights={3: 4.0},
                                soft_weights=True)
    assert unlisted["uncertainty"].to_pylist() == pytest.approx([entropy, entropy])
    # a box stored with one class (no runner-up id, though p2 is known) gets its own weight
    one = boxes.set_column(boxes.schema.get_field_index("second_label_id"), "second_label_id",
                           pa.array([None, None], pa.int32()))
    alone = aggregate_images(one, images, measure="entropy", class_weights={1: 4.0},
                             soft_weights=True)
    assert alone["uncertainty"].to_pylist() == pytest.approx([4 * entropy, 4 * entropy])
    # box scores without the columns the weights read are refused, naming the column
    with pytest.raises(ValueError, match="no column 'second_label_id'"):
        aggregate_images(boxes.drop_columns(["second_label_id"]), images, measure="entropy",
                         class_weights=weights, soft_weights=True)
    with pytest.raises(ValueError, match="no column 'label_id'"):
        aggregate_images(boxes.drop_columns(["label_id"]), images, measure="entropy",
                         class_weights=weights)


def test_the_soft_strategy_reaches_a_rare_runner_up_that_the_default_misses() -> None:
    dets = {i: [_runner_up(1, 2, 0.50 + 0.001 * i, 0.3)] for i in range(1, 9)}
    dets.update({i: [_runner_up(1, 4, 0.55, 0.3)] for i in (9, 10)})  # less uncertain
    predictions = _predictions(dets, {i: np.eye(10)[i - 1].tolist() for i in dets})
    weights = class_weights(STRATEGIES["soft"], [1, 2, 3, 4],
                            labeled_boxes={1: 400, 2: 100, 3: 100, 4: 1})
    assert set(_select(predictions, "soft", 2, class_weights=weights)) == {9, 10}
    assert not {9, 10} & set(_select(predictions, "default", 2, class_weights=weights))


def test_the_rare_strategy_picks_the_rarely_labeled_class_first() -> None:
    dets = {i: [_det(1, 0.40 + 0.001 * i)] for i in range(1, 11)}
    dets.update({i: [_det(4, 0.55)] for i in range(11, 14)})  # less uncertain, class 4
    predictions = _predictions(dets)
    weights = class_weights(STRATEGIES["balanced"], [1, 2, 3, 4],
                            labeled_boxes={1: 400, 2: 100, 3: 100, 4: 2})
    picked = _select(predictions, "balanced", 3, class_weights=weights)
    assert set(picked[:2]) <= {11, 12, 13}  # the rare class first ...
    assert picked[2] not in {11, 12, 13}  # ... until its class cap, ceil(0.4 x 3) = 2
    assert _select(predictions, "entropy", 3)[:3] == [1, 2, 3]


def test_the_diverse_strategy_takes_one_image_per_scene() -> None:
    rng = np.random.default_rng(1)
    scenes = np.eye(4)
    dets, emb = {}, {}
    for i in range(1, 21):  # 4 scenes x 5 near-identical frames, nearly equally uncertain
        scene = (i - 1) // 5
        dets[i] = [_det(1 + scene, 0.40 + 0.0001 * i)]
        emb[i] = (scenes[scene] + rng.normal(0, 0.01, 4)).tolist()
    picked = _select(_predictions(dets, emb), "diverse", 4)
    assert picked[0] == 1  # the most uncertain first
    assert sorted((i - 1) // 5 for i in picked) == [0, 1, 2, 3]
    plain = _select(_predictions(dets, emb), "entropy", 4)
    assert plain == [1, 2, 3, 4]  # entropy order only


def test_typical_order_takes_each_clusters_densest_member_largest_cluster_first() -> None:
    from al_assets.core.queue.typicality import typical_order

    rng = np.random.default_rng(3)
    centers = np.eye(3) * 4.0
    sizes = (30, 12, 5)  # cluster 0 is the largest
    rows = [centers[c] + rng.normal(0, 0.3, (n, 3)) for c, n in enumerate(sizes)]
    rows[0][7] = centers[0]  # exactly at cluster 0's centre: its most typical member
    x = np.concatenate(rows).astype(np.float32)
    order = typical_order(x, 3, seed=0)
    assert sorted(order.tolist()) == list(range(len(x)))  # a permutation of the rows
    first = order[:3].tolist()
    assert first[0] == 7  # the densest member of the largest cluster leads
    assert sorted(np.searchsorted(np.cumsum(sizes), first, side="right").tolist()) == [0, 1, 2]
    assert np.array_equal(order, typical_order(x, 3, seed=0))  # seeded: repeatable
    turns = np.searchsorted(np.cumsum(sizes), order[3:6], side="right")
    assert sorted(turns.tolist()) == [0, 1, 2]  # round-robin: the next turn again visits each
    assert typical_order(np.zeros((0, 3), np.float32), 2).size == 0
    assert typical_order(x[:2], 5).tolist() in ([0, 1], [1, 0])  # k above n: clipped
    same = np.ones((6, 3), np.float32)  # identical rows: empty clusters, no NaN, a permutation
    assert sorted(typical_order(same, 3).tolist()) == list(range(6))


def test_typical_order_leaves_the_regions_the_labels_cover_for_last() -> None:
    from al_assets.core.queue.typicality import typical_order

    rng = np.random.default_rng(4)
    centers = np.eye(3) * 4.0
    x = np.concatenate([centers[c] + rng.normal(0, 0.3, (n, 3)) for c, n in
                        enumerate((30, 12, 5))]).astype(np.float32)
    labeled = centers[0] + rng.normal(0, 0.3, (8, 3))  # the largest region is labeled already
    first = typical_order(x, 2, seed=0, centers=labeled)[:2]
    assert all(i >= 30 for i in first.tolist())  # the uncovered regions 1 and 2 come first
    assert typical_order(x, 2, seed=0)[0] < 30  # without labels the largest region leads


def test_typicality_in_chunks_and_samples_is_density(monkeypatch: pytest.MonkeyPatch) -> None:
    from al_assets.core.queue import typicality as module

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 0.1, (40, 4)), rng.normal(0, 3.0, (10, 4))]).astype(
        np.float32)  # a dense core and scattered outliers
    whole = module.typicality(x)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    brute = 1.0 / np.sort(d, axis=1)[:, :module.NEIGHBOURS].mean(axis=1)
    assert np.allclose(whole, brute, rtol=1e-4)  # the definition, row by row
    monkeypatch.setattr(module, "CHUNK_ROWS", 7)
    assert np.allclose(module.typicality(x), whole)  # blocks change nothing
    monkeypatch.setattr(module, "REFERENCE_ROWS", 25)
    sampled = module.typicality(x)  # against 25 of the 50 rows
    assert np.isfinite(sampled).all() and sampled[:40].min() > sampled[40:].max()


def test_typical_order_takes_an_empty_labeled_set_as_none() -> None:
    from al_assets.core.queue.typicality import typical_order

    x = np.random.default_rng(6).normal(size=(30, 4)).astype(np.float32)
    assert np.array_equal(typical_order(x, 3, centers=np.zeros((0, 0), np.float32)),
                          typical_order(x, 3))


def test_unranked_reasons_name_exactly_the_strategies_without_a_ranking() -> None:
    from al_assets.core.loop.selection import STRATEGIES
    from al_assets.core.queue.selection import UNRANKED

    assert set(UNRANKED) == {name for name, plan in STRATEGIES.items() if plan.random}


def test_embedding_matrix_skips_rows_without_an_embedding() -> None:
    from al_assets.core.loop.selection import embedding_matrix

    table = _predictions({1: [], 2: [], 3: []}, {1: [1.0, 0.0], 2: None, 3: [0.0, 1.0]})
    assert embedding_matrix(table).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert embedding_matrix(table.slice(1, 1)).shape == (0, 0)


def test_the_typical_strategy_takes_one_image_per_scene_whatever_the_uncertainty() -> None:
    rng = np.random.default_rng(1)
    scenes = np.eye(4)
    dets, emb = {}, {}
    for i in range(1, 41):  # scene 0 is a burst of 25 frames; scenes 1-3 have 5 each
        scene = 0 if i <= 25 else 1 + (i - 26) // 5
        dets[i] = [_det(1, 0.30 if scene == 0 else 0.99)]  # scene 0 is the uncertain one
        emb[i] = (scenes[scene] + rng.normal(0, 0.01, 4)).tolist()
    predictions = _predictions(dets, emb)
    picked = _select(predictions, "typical", 4)
    assert sorted(0 if i <= 25 else 1 + (i - 26) // 5 for i in picked) == [0, 1, 2, 3]
    assert all(i <= 25 for i in _select(predictions, "entropy", 4))  # uncertainty: the burst
    assert _select(predictions, "typical", 4) == picked  # seeded by the queue's seed
    with pytest.raises(ValueError, match="typical strategy clusters the detector's image"):
        _select(_predictions(dets), "typical", 4)  # no embeddings: refused, not a shuffle
    broken = _predictions(dets, {**emb, 7: [float("nan")] * 4})
    with pytest.raises(ValueError, match="image 7's embedding is not finite"):
        _select(broken, "typical", 4)
    no_column = _predictions(dets, emb).drop_columns(["embedding"])
    with pytest.raises(ValueError, match="typical strategy clusters"):
        _select(no_column, "typical", 4)  # a store read without the column: refused too


def test_the_default_strategy_caps_each_class_and_falls_back_without_embeddings() -> None:
    dets = {i: [_det(1, 0.40)] for i in range(1, 21)}
    dets.update({i: [_det(2, 0.6)] for i in range(21, 31)})
    dets.update({i: [_det(3, 0.7)] for i in range(31, 41)})
    picked = _select(_predictions(dets), "default", 10,
                     class_weights=class_weights(STRATEGIES["default"], [1, 2, 3, 4]))
    assert len(picked) == 10
    assert len([i for i in picked if i <= 20]) == int(np.ceil(CLASS_CAP * 10))  # not 10 of them
    assert picked[:4] == [1, 2, 3, 4]  # no embeddings: rank order within the cap
    assert SelectionConfig(strategy="default", size=10).class_cap() == 4
    assert SelectionConfig(strategy="default", size=10, max_per_class=2).class_cap() == 2
    assert SelectionConfig(strategy="entropy", size=10).class_cap() is None


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'entrpy'"):
        SelectionConfig(strategy="entrpy")


def test_a_box_budget_skips_crowded_images_that_would_overrun_it() -> None:
    dets = {1: [_det(1, 0.4)] * 5, 2: [_det(2, 0.45)] * 2, 3: [_det(3, 0.5)], 4: [_det(1, 0.55)]}
    predictions = _predictions(dets)
    _, rankings = rank_images(predictions)
    by_id = {i: k for k, i in enumerate(predictions["image_id"].to_pylist())}
    queue = select_batch(
        rankings, lambda ids: predictions.take(pa.array([by_id[i] for i in ids.to_pylist()])),
        SelectionConfig(strategy="entropy", size=3, max_boxes=4, deduplicate=False))
    assert queue["image_id"].to_pylist() == [2, 3, 4]  # image 1's five boxes do not fit
    assert sum(queue["n_detections"].to_pylist()) <= 4


def test_weights_rescore_with_the_rankings_own_aggregation() -> None:
    # image 1: one very uncertain class-1 box among confident ones (max high, mean low);
    # image 2: two moderately uncertain class-1 boxes (max lower, mean higher).
    predictions = _predictions({1: [_det(1, 0.3), _det(1, 0.99), _det(1, 0.99)],
                                2: [_det(1, 0.6), _det(1, 0.6)]})
    _, rankings = rank_images(predictions, ScoringSettings(agg="mean"))
    by_id = {i: k for k, i in enumerate(predictions["image_id"].to_pylist())}
    queue = select_batch(
        rankings, lambda ids: predictions.take(pa.array([by_id[i] for i in ids.to_pylist()])),
        SelectionConfig(strategy="calibrated", size=2, deduplicate=False),
        class_weights={1: 2.0})
    assert queue["agg"].to_pylist() == ["mean", "mean"]
    assert queue["image_id"].to_pylist() == [2, 1]  # mean order, not max order


def test_the_queue_reads_stored_candidates_once_and_exports_only_their_confident_boxes() -> None:
    noise = {**_det(4, 0.3), "score": 0.05}  # under the noise floor: never exported or scored
    dets = {i: [_det(1, 0.3 + 0.02 * i), noise] for i in range(1, 31)}
    stored = _predictions(dets)
    _, rankings = rank_images(stored)  # scoring drops the noise box the same way
    by_id = {i: k for k, i in enumerate(stored["image_id"].to_pylist())}
    reads: list[list[int]] = []

    def read(ids: pa.Array) -> pa.Table:
        reads.append(ids.to_pylist())
        return stored.take(pa.array([by_id[i] for i in ids.to_pylist()]))

    config = SelectionConfig(strategy="entropy", size=3, deduplicate=False)
    selected = select_from_store(rankings, read, config, excluded={1, 5}, min_score=0.2)
    assert len(reads) == 1 and sorted(reads[0]) == list(range(1, 18))  # 15 eligible + 2
    assert selected.queue["image_id"].to_pylist() == [2, 3, 4]  # 1 is excluded
    assert selected.predictions["image_id"].to_pylist() == [2, 3, 4]
    scores = [d["score"] for row in selected.predictions["detections"].to_pylist() for d in row]
    assert scores == pytest.approx([0.9] * 3)  # one box each: the noise box is gone
    assert selected.eligible == 28  # 30 ranked, 2 excluded
    with pytest.raises(ValueError, match="confident_detections"):  # why the floor is applied
        select_batch(rankings, read, config, excluded={1, 5})


def test_class_ap_of_one_version_skips_the_overall_row() -> None:
    rows = [{"category_id": c, "name": n, "ap": ap, "ap50": None, "ap75": None, "num_gt": 3,
             "model_version": v}
            for c, n, ap, v in [(None, "all", 0.5, "v1"), (1, "a", 0.7, "v1"), (2, "b", None, "v1"),
                                (1, "a", 0.1, "v2")]]
    evaluation = pa.Table.from_pylist(rows, schema=MODEL_EVALUATION)
    assert class_ap_of(evaluation, "v1") == {1: 0.7, 2: None}
    assert class_ap_of(evaluation, "v9") == {}


@pytest.mark.parametrize("placement", ["highest", "lowest"])
def test_the_pool_ranking_places_empty_images_as_the_shards_were_scored(placement) -> None:
    shard_a = _predictions({1: [_det(1, 0.4)], 2: []})
    shard_b = _predictions({3: [_det(2, 0.5)], 4: [_det(3, 0.9)]})
    settings = ScoringSettings(empty_images=placement)
    shards = [rank_images(shard, settings)[1] for shard in (shard_a, shard_b)]
    ranked = pool_ranking(shards)  # not told: read from shard a's order
    order = ranked.filter(pc.equal(ranked["measure"], "entropy"))["image_id"].to_pylist()
    assert order == ([2, 1, 3, 4] if placement == "highest" else [1, 3, 4, 2])
    other = "lowest" if placement == "highest" else "highest"
    forced = pool_ranking(shards, empty_images=other)  # an explicit setting still wins
    assert forced.filter(pc.equal(forced["measure"], "entropy"))["image_id"].to_pylist() \
        == ([1, 3, 4, 2] if other == "lowest" else [2, 1, 3, 4])


def test_shards_scored_under_different_empty_image_settings_are_refused() -> None:
    shard = _predictions({1: [_det(1, 0.4)], 2: []})
    other = _predictions({3: [_det(1, 0.4)], 4: []})
    shards = [rank_images(shard, ScoringSettings(empty_images="highest"))[1],
              rank_images(other, ScoringSettings(empty_images="lowest"))[1]]
    with pytest.raises(ValueError, match="different empty_images settings"):
        pool_ranking(shards)


def test_the_queue_reweights_with_the_placement_its_rankings_were_written_with() -> None:
    stored = _predictions({1: [_det(1, 0.4)], 2: [], 3: [_det(2, 0.5)]})
    rankings = pool_ranking([rank_images(stored, ScoringSettings(empty_images="highest"))[1]])
    by_id = {i: k for k, i in enumerate(stored["image_id"].to_pylist())}
    weights = class_weights(STRATEGIES["calibrated"], [1, 2, 3, 4], class_ap={1: 0.5, 2: 0.5})
    selected = select_from_store(
        rankings, lambda ids: stored.take(pa.array([by_id[i] for i in ids.to_pylist()])),
        SelectionConfig(strategy="calibrated", size=3, deduplicate=False), excluded=set(),
        min_score=0.2, class_weights=weights)
    assert selected.queue["image_id"].to_pylist()[0] == 2  # re-scored, the empty image stays first
