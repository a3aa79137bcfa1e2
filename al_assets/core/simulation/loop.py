"""The production loop, replayed with an oracle labeler on a fully labeled pool.

Why simulate: whether uncertainty sampling beats random depends on the data, the detector and
the budget, and the only honest answer is a replay. There is no second implementation of any
step here: every round runs the functions the assets run, in the same order.

* the pool is read with the ingestion core (``ingest_batch``: the one COCO reader and its
  validation; unreadable images are rejected, never picked); ground truth is hidden from the
  loop and known only to the oracle;
* held-out images are the production split (``split_of``: a stable hash of the image id),
  unless a separate held-out COCO file is given;
* round 0: a random seed set of ``initial_size`` images is labeled by the oracle and imported
  with ``import_labels``; a model is trained on it from scratch (``train_challenger``);
* each later round: the champion predicts the unlabeled pool with the production runner,
  ``rank_images`` + ``select_batch`` pick the queue (strategy, aggregation, class cap, de-dup,
  exclusions), the queue is exported with ``label_studio_tasks``, the oracle answers that
  export from ground truth (``oracle_export``), the answer is imported with ``import_labels``,
  a challenger is fine-tuned from the champion on every labeled image, and the gate
  (``compare_predictions`` + ``decide``) promotes it or keeps the champion.

Every strategy x seed is one MLflow run (params + per-round metrics, step = round). The curve
value of a round is the challenger's held-out mAP: the model trained on that many labels.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from al_assets.core.analysis.evaluation import compare_predictions
from al_assets.core.analysis.gate import GatePolicy, decide
from al_assets.core.coco.ingest import IngestOptions, ingest_batch
from al_assets.core.coco.tables import CocoTables
from al_assets.core.defaults import SIMULATION_EXPERIMENT
from al_assets.core.demo.generator import generate_demo_dataset
from al_assets.core.detection.cached import (
    HEAD_LR,
    FeatureCache,
    head_samples,
    predict_cached,
    train_head,
)
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.detection.factory import load_detector, replace_class_head, save_checkpoint
from al_assets.core.detection.training import RECOMMENDED_MALLOC_ENV, malloc_env_is_set
from al_assets.core.errors import AlAssetsError
from al_assets.core.labels import import_labels
from al_assets.core.loop.evaluation import predict_images
from al_assets.core.loop.oracle import oracle_export
from al_assets.core.loop.selection import (
    ScoringSettings,
    SelectionConfig,
    class_weights,
    embedding_matrix,
    labeled_box_counts,
    pool_ranking,
    rank_images,
    select_batch,
)
from al_assets.core.loop.settings import TrainSettings
from al_assets.core.loop.training import train_challenger
from al_assets.core.tracking import TrackedRun
from al_assets.core.prediction.arrow import confident_detections
from al_assets.core.prediction.devices import lease_device
from al_assets.core.prediction.runner import ShardRef
from al_assets.core.progress import Progress
from al_assets.core.queue.dedup import perceptual_hashes
from al_assets.core.queue.exports import label_studio_tasks
from al_assets.core.simulation.config import SimulationConfig, SimulationError
from al_assets.core.simulation.report import curves_table
from al_assets.core.splits import HELDOUT, effective_labels, split_of
from al_assets.core.storage.objects import ObjectStore, to_uri

DEMO_POOL_SEED, DEMO_HOLDOUT_SEED = 3000, 4000  # the demo pool and demo detector use 0, 1000, 2000
DEMO_POOL_IMAGES, DEMO_HOLDOUT_IMAGES = 400, 100
_INITIAL_STREAM, _SELECT_STREAM = 1, 2  # numpy seed-sequence streams, one per purpose
_MODEL_NAME = "simulation"
Log = Callable[[str], None]
_TRACKED = ("map", "ap50", "champion_map", "labeled_images", "labeled_boxes", "train_seconds",
            "pool_with_boxes")


@dataclass(frozen=True)
class CocoSplit:
    """A COCO instances file and the folder its ``file_name`` entries are relative to."""

    coco_json: Path
    image_dir: Path


def _selection(config: SimulationConfig, strategy: str, seed: int, rnd: int) -> SelectionConfig:
    """The labeling queue's selection settings for one round of one replay."""
    return SelectionConfig(strategy=strategy, size=config.budget,
                           max_per_class=config.max_per_class, deduplicate=config.deduplicate,
                           exclude_labeled=True, seed=seed * 1000 + rnd)


def _training(config: SimulationConfig, seed: int, rnd: int) -> TrainSettings:
    steps = config.initial_steps if rnd == 0 else config.round_steps
    return TrainSettings(steps=steps, batch_size=config.batch_size, lr=config.lr,
                         seed=seed * 1000 + rnd, checkpoint_every=max(steps, 1))


@dataclass(frozen=True)
class Tracking:
    """Where the runs go; plain MLflow tracking, so any tracking URI works."""

    tracking_uri: str
    experiment: str = SIMULATION_EXPERIMENT
    artifact_location: str | None = None


def demo_splits(
    root: Path, pool_images: int = DEMO_POOL_IMAGES, holdout_images: int = DEMO_HOLDOUT_IMAGES
) -> tuple[CocoSplit, CocoSplit]:
    """Generate (or reuse) a demo pool and a held-out set drawn with different seeds."""
    root = Path(root)
    pool_root, holdout_root = root / f"pool-{pool_images}", root / f"holdout-{holdout_images}"
    (pool_json,) = generate_demo_dataset(pool_root, n_images=pool_images, seed=DEMO_POOL_SEED)
    (holdout_json,) = generate_demo_dataset(
        holdout_root, n_images=holdout_images, seed=DEMO_HOLDOUT_SEED
    )
    return CocoSplit(pool_json, pool_root / "images"), CocoSplit(
        holdout_json, holdout_root / "images"
    )


@dataclass
class Pool:
    """The pool as the pipeline sees it (IMAGES, CATEGORIES) plus the oracle's ground truth."""

    tables: CocoTables  # the candidates' images and ground truth
    heldout: CocoTables  # held-out images and ground truth (a filtered view or its own file)
    candidates: list[int]
    hashes: dict[int, int] = field(default_factory=dict)
    base: CocoTables | None = None  # a labeled base split (what a team labeled first)

    @property
    def categories(self) -> pa.Table:
        return self.tables.categories

    def images_of(self, ids: list[int]) -> pa.Table:
        images = self.tables.images
        if self.base is not None:
            images = pa.concat_tables([images, self.base.images])
        return images.filter(pc.is_in(images["image_id"], pa.array(ids, pa.int64())))


def load_pool(pool: CocoSplit, holdout: CocoSplit | None, log: Log | None = None,
              base: CocoSplit | None = None) -> Pool:
    """Read the pool (and held-out file) with the ingestion core; split by the production hash.

    ``base``: a labeled split that starts labeled (its images are never candidates)."""
    tables = _ingest(pool, "pool", log)
    if holdout is None:
        ids = tables.images["image_id"].to_numpy()
        held = pa.array(ids[split_of(ids) == HELDOUT], pa.int64())
        heldout = CocoTables(tables.categories, _keep(tables.images, held, True),
                             _keep(tables.annotations, held, True), tables.rejects)
        images = _keep(tables.images, held, False)
        tables = CocoTables(tables.categories, images, _keep(tables.annotations, held, False),
                            tables.rejects)
    else:
        heldout = _ingest(holdout, "holdout", log)
        _check_disjoint(tables, heldout, holdout)
    candidates = sorted(tables.images["image_id"].to_pylist())
    hashes, _ = perceptual_hashes(tables.images["uri"].to_pylist(), ObjectStore())
    by_id = {i: hashes[u] for i, u in zip(tables.images["image_id"].to_pylist(),
                                          tables.images["uri"].to_pylist(), strict=True)
             if u in hashes}
    based = _ingest(base, "base", log) if base is not None else None
    if based is not None:
        _check_disjoint(tables, based, base)
    return Pool(tables, heldout, candidates, by_id, based)


@dataclass
class _Round:
    checkpoint: Path
    comparison: dict
    promoted: bool
    train_seconds: float


@dataclass
class _Seed:
    """One seed's shared state: pool, initial labels and the round-0 champion."""

    pool: Pool
    config: SimulationConfig
    seed: int
    workdir: Path
    device: object
    initial: list[int] = field(default_factory=list)
    initial_labels: list[tuple[pa.Table, pa.Table]] = field(default_factory=list)
    start: _Round | None = None
    start_predictions: pa.Table | None = None
    cache: FeatureCache | None = None  # shared by every seed: one frozen backbone
    heldout_predictions: dict[Path, pa.Table] = field(default_factory=dict)


def run_simulation(
    pool_split: CocoSplit,
    holdout: CocoSplit | None,
    config: SimulationConfig,
    workdir: Path,
    tracking: Tracking,
    log: Log | None = print,
    base: CocoSplit | None = None,
) -> pa.Table:
    """Replay every strategy x seed; returns the SIMULATION_CURVES table (see ``report``).

    ``base``: a labeled split the loop starts with (round 0 trains on it and the random
    ``initial_size`` images, from ``config.start_checkpoint`` when given)."""
    _warn_if_malloc_unset()
    if config.initial_size == 0 and base is None:
        raise SimulationError("initial_size is 0 and no base split is given: round 0 would "
                              "have no labels; give initial_size >= 1 or --base-coco")
    if config.backbone_tail and not config.cached_features:  # here: a preset sets the cache
        raise SimulationError("backbone_tail trains on cached stride-16 maps: give "
                              "cached_features (--preset sets it) too")
    if config.fresh_classifier and config.start_checkpoint is None:  # a preset sets it
        raise SimulationError("fresh_classifier replaces a pretrained detector's class head: "
                              "give start_checkpoint (--preset sets it) too")
    pool = load_pool(pool_split, holdout, log, base)
    _check_sizes(pool, config, pool_split)
    tracker = _Tracker(tracking)
    rows: list[dict] = []
    cache = None
    if config.cached_features:
        cache = FeatureCache(load_detector(Path(config.start_checkpoint))[0],
                             backbone_tail=config.backbone_tail)
    rounds = _RoundLog(log, len(config.seeds) * (1 + len(config.strategies) * config.rounds))
    with lease_device(config.device) as device:
        for seed in config.seeds:
            run = _Seed(pool, config, seed, Path(workdir) / f"seed-{seed}", device, cache=cache)
            _start_seed(run, rounds)
            for strategy in config.strategies:
                rows += _tracked(tracker, run, strategy, rounds)
    return curves_table(rows)


def _start_seed(run: _Seed, rounds: _RoundLog) -> None:
    """Round 0: a random seed set, labeled by the oracle, and a model trained on it."""
    rng = np.random.default_rng([run.seed, _INITIAL_STREAM])
    run.initial = sorted(int(i) for i in rng.choice(run.pool.candidates, run.config.initial_size,
                                                    replace=False))
    run.initial_labels = []
    if run.pool.base is not None:
        base = run.pool.base
        run.initial_labels.append(_oracle_labels(base, _tasks(base.images), "labels-base"))
    if run.initial:
        tasks = _tasks(run.pool.images_of(run.initial))
        run.initial_labels.append(_oracle_labels(run.pool.tables, tasks, "labels-r000"))
    start = None
    if run.config.start_checkpoint is not None:
        start = _Round(_start_checkpoint(run), {}, True, 0.0)
    run.start = _train_and_gate(run, run.initial_labels, 0, start, run.workdir / "round-0",
                                promote_always=True)
    rounds(_row(run, "all", 0, run.initial, run.initial_labels, run.start, None))


def _start_checkpoint(run: _Seed) -> Path:
    """The detector round 0 fine-tunes: ``start_checkpoint``, or with ``fresh_classifier`` that
    detector with a new class head drawn from the seed (the backbone, hence the cache, kept)."""
    path = Path(run.config.start_checkpoint)
    if not run.config.fresh_classifier:
        return path
    model, ckpt = load_detector(path)
    with torch.random.fork_rng():
        torch.manual_seed(run.seed)
        replace_class_head(model, ckpt.arch, ckpt.num_classes)
    (run.workdir / "round-0").mkdir(parents=True, exist_ok=True)
    return save_checkpoint(run.workdir / "round-0" / "start.pt", model, arch=ckpt.arch,
                           categories=ckpt.categories,
                           meta={"start_checkpoint": str(path), "fresh_classifier": True})


def _tracked(tracker: _Tracker, run: _Seed, strategy: str, rounds: _RoundLog) -> list[dict]:
    tracked = tracker.start(run.config.params(strategy, run.seed), strategy, run.seed)
    try:
        rows = _simulate_strategy(run, strategy, lambda row: _log_round(tracked, row), rounds)
    except BaseException:
        tracked.finish("FAILED")
        raise
    tracked.finish("FINISHED")
    return rows


def _simulate_strategy(
    run: _Seed, strategy: str, record: Callable[[dict], None], rounds: _RoundLog
) -> list[dict]:
    labeled, labels, champion = list(run.initial), list(run.initial_labels), run.start
    rows = [_row(run, strategy, 0, labeled, labels, champion, None)]
    record(rows[-1])
    folder = run.workdir / strategy
    for rnd in range(1, run.config.rounds + 1):
        predictions = _pool_predictions(run, champion, labeled, rnd)
        queue = _select(run, strategy, rnd, labeled, predictions, champion, labels)
        tasks = label_studio_tasks(queue, predictions, run.pool.categories,
                                   model_version=f"round-{rnd - 1}")
        labels.append(_oracle_labels(run.pool.tables, tasks, f"labels-r{rnd:03d}"))
        picks = queue["image_id"].to_pylist()
        labeled += picks
        result = _train_and_gate(run, labels, rnd, champion, folder / f"round-{rnd}")
        if result.promoted:
            champion = result
        counts = pc.list_value_length(predictions["detections"]).to_numpy(zero_copy_only=False)
        rows.append(_row(run, strategy, rnd, picks, labels, result,
                         float(np.mean(counts > 0)) if strategy != "random" else None,
                         labeled_total=len(labeled), champion=champion))
        record(rows[-1])
        rounds(rows[-1])
    return rows


def _pool_predictions(run: _Seed, champion: _Round, labeled: list[int], rnd: int) -> pa.Table:
    """The champion's confident detections on the unlabeled pool (round 1's are shared)."""
    if rnd == 1 and run.start_predictions is not None:
        return run.start_predictions
    taken = set(labeled)
    unlabeled = [i for i in run.pool.candidates if i not in taken]
    predictions = _predict(run, champion.checkpoint, run.pool.images_of(unlabeled))
    predictions = confident_detections(predictions, run.config.min_score)
    if rnd == 1:
        run.start_predictions = predictions
    return predictions


def _select(run: _Seed, strategy: str, rnd: int, labeled: list[int],
            predictions: pa.Table, champion: _Round,
            labels: list[tuple[pa.Table, pa.Table]]) -> pa.Table:
    config = run.config
    selection = _selection(config, strategy, run.seed, rnd)
    annotations, _ = effective_labels(run.pool.tables.annotations.slice(0, 0), labels)
    weights = class_weights(
        selection.plan, run.pool.categories["category_id"].to_pylist(),
        class_ap=champion.comparison.get("challenger", {}).get("per_category"),
        labeled_boxes=labeled_box_counts(annotations))
    covered = _labeled_embeddings(run, champion, labeled) if selection.plan.typical else None
    queue = queue_from_predictions(predictions, selection, ScoringSettings(agg=config.agg),
                                   excluded=labeled, hashes=run.pool.hashes,
                                   class_weights=weights, labeled_embeddings=covered)
    if queue.num_rows < config.budget:
        raise SimulationError(f"round {rnd}: the queue offered {queue.num_rows} of "
                              f"{config.budget} images; lower the budget or use a larger pool")
    return queue


def _labeled_embeddings(run: _Seed, champion: _Round, labeled: list[int]) -> np.ndarray:
    """The champion's embeddings of every labeled image (base split included), as the queue
    asset reads them from the labeled images' stored predictions."""
    base = run.pool.base.images["image_id"].to_pylist() if run.pool.base is not None else []
    return embedding_matrix(_predict(run, champion.checkpoint, run.pool.images_of(
        sorted(set(labeled) | set(base)))))


def queue_from_predictions(
    predictions: pa.Table, selection: SelectionConfig, scoring: ScoringSettings, *,
    excluded: list[int] | set[int], hashes: Mapping[int, int],
    class_weights: Mapping[int, float] | None = None,
    labeled_embeddings: np.ndarray | None = None,
) -> pa.Table:
    """The production selection over in-memory DETECTIONS: rank_images + select_batch.

    ``predictions`` already have detections under ``scoring.min_score`` removed, as the queue
    asset's do; the rankings are those ``scoring`` + ``image_rankings`` would write.
    """
    _, rankings = rank_images(predictions, replace(scoring, min_score=0.0))
    rankings = pool_ranking([rankings])  # placement as rank_images wrote it
    by_id = {i: k for k, i in enumerate(predictions["image_id"].to_pylist())}
    return select_batch(
        rankings, lambda ids: predictions.take(pa.array([by_id[i] for i in ids.to_pylist()],
                                                        pa.int64())),
        selection, excluded=excluded,
        hashes_of=lambda c: {i: hashes[i] for i in c["image_id"].to_pylist() if i in hashes},
        class_weights=class_weights, labeled_embeddings=labeled_embeddings,
    )


def _tasks(images: pa.Table) -> list[dict]:
    """Label Studio tasks of IMAGES rows, in image_id order (what a team would send out)."""
    rows = images.sort_by("image_id").select(["image_id", "uri"]).to_pylist()
    return [{"data": {"image": r["uri"], "image_id": r["image_id"]}} for r in rows]


def _oracle_labels(tables: CocoTables, tasks: list[dict], batch: str) -> tuple[pa.Table, pa.Table]:
    """The oracle answers the export; the answer goes through the real label import."""
    export = oracle_export(tasks, tables.annotations, tables.images, tables.categories)
    imported = import_labels(json.dumps(export).encode(), f"oracle:{batch}", batch,
                             tables.images, tables.categories)
    if imported.rejects.num_rows:
        first = imported.rejects.slice(0, 1).to_pylist()[0]
        raise SimulationError(f"the oracle's export was not imported cleanly: {first['reason']}")
    return imported.labeled_images, imported.annotations


def _train_and_gate(run: _Seed, labels: list[tuple[pa.Table, pa.Table]], rnd: int,
                    champion: _Round | None, folder: Path, *,
                    promote_always: bool = False) -> _Round:
    """Train a challenger on every label batch so far, then the production gate."""
    annotations, owners = effective_labels(run.pool.tables.annotations.slice(0, 0), labels)
    images = run.pool.images_of(owners["image_id"].to_pylist())
    settings = _training(run.config, run.seed, rnd)
    init = champion.checkpoint if champion else None
    if run.cache is not None:
        checkpoint, seconds = _train_head_round(run, images, annotations, init, settings, folder)
    else:
        result = train_challenger(
            images, annotations, run.pool.categories, init_checkpoint=init,
            settings=settings, workdir=folder, arch=run.config.arch,
        )
        checkpoint, seconds = result.checkpoint, result.seconds
    heldout = run.pool.heldout
    challenger = _heldout_predictions(run, checkpoint)
    champ = _heldout_predictions(run, champion.checkpoint) if champion else None
    comparison = compare_predictions(
        challenger, champ, heldout.annotations, heldout.images, run.pool.categories,
        image_ids=heldout.images["image_id"].to_pylist(), n_boot=run.config.n_boot,
        seed=run.seed)
    policy = replace(GatePolicy(), min_improvement=run.config.min_improvement,
                     min_heldout_images=1)
    promoted = promote_always or decide(comparison, policy).promote
    return _Round(checkpoint, comparison, promoted, seconds)


def _train_head_round(run: _Seed, images: pa.Table, annotations: pa.Table, init: Path,
                      settings: TrainSettings, folder: Path) -> tuple[Path, float]:
    """Head (and backbone-tail) fine-tuning on cached backbone features (``detection.cached``)."""
    started = time.perf_counter()
    model, ckpt = load_detector(init)
    samples = head_samples(images, annotations, ckpt.categories)
    train_head(model, samples, run.cache, steps=settings.steps, batch_size=settings.batch_size,
               lr=settings.lr or HEAD_LR, seed=settings.seed)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(folder / "challenger.pt", model, arch=run.config.arch,
                                 categories=ckpt.categories,
                                 meta={"train": settings.params(),
                                       "head_only": not run.cache.backbone_tail,
                                       "backbone_tail": run.cache.backbone_tail})
    return checkpoint, time.perf_counter() - started


def _heldout_predictions(run: _Seed, checkpoint: Path) -> pa.Table:
    """The held-out DETECTIONS of a checkpoint, computed once (a champion is compared often)."""
    if checkpoint not in run.heldout_predictions:
        run.heldout_predictions[checkpoint] = _predict(run, checkpoint, run.pool.heldout.images)
    return run.heldout_predictions[checkpoint]


def _predict(run: _Seed, checkpoint: Path, images: pa.Table) -> pa.Table:
    model, ckpt = load_detector(checkpoint)
    extractor = ClassScoreExtractor(model.eval(), ckpt.categories.category_ids)
    if run.cache is not None:
        return predict_cached(extractor, images, run.cache, model_name=_MODEL_NAME,
                              model_version=0, shard="pool")
    predictions, errors = predict_images(extractor, images, ShardRef(_MODEL_NAME, 0, "pool"),
                                         run.device)
    if errors:
        raise SimulationError(f"{len(errors)} images failed in prediction, e.g. image "
                              f"{errors[0]['image_id']} ({errors[0]['stage']}): "
                              f"{errors[0]['error']}")
    return predictions


def _row(run: _Seed, strategy: str, rnd: int, picks: list[int],
         labels: list[tuple[pa.Table, pa.Table]], result: _Round, pool_with_boxes: float | None,
         *, labeled_total: int | None = None, champion: _Round | None = None) -> dict:
    """One curve point; labeled images and boxes count pool labels (not the base split's)."""
    annotations, _ = effective_labels(run.pool.tables.annotations.slice(0, 0), labels)
    annotations = annotations.filter(pc.is_in(annotations["image_id"],
                                              pa.array(run.pool.candidates, pa.int64())))
    challenger = result.comparison["challenger"]
    champ = (champion or result).comparison["challenger"]
    return {
        "strategy": strategy, "seed": run.seed, "round": rnd,
        "labeled_images": labeled_total if labeled_total is not None else len(run.initial),
        "labeled_boxes": int(pc.sum(pc.invert(annotations["iscrowd"])).as_py() or 0),
        "class_boxes": json.dumps({str(k): v for k, v in
                                   sorted(labeled_box_counts(annotations).items())}),
        "class_ap": json.dumps({str(k): v for k, v in challenger["per_category"].items()}),
        "map": challenger["map"], "ap50": challenger["ap50"],
        "map_low": challenger.get("map_low"), "map_high": challenger.get("map_high"),
        "champion_map": champ["map"], "promoted": result.promoted,
        "train_seconds": result.train_seconds, "selected_ids": list(picks),
        "pool_with_boxes": pool_with_boxes,
    }


class _RoundLog:
    """Progress of a simulation: a line per finished round, "k/N rounds, ~ETA left", to the
    log (the CLI's output, Dagster's run log) and a bar at a terminal. Replays take tens of
    minutes on CPU: the ETA is what a user watching it needs."""

    def __init__(self, log: Log | None, total: int) -> None:
        self.log, self.total, self.done = log, total, 0
        self.started = time.perf_counter()
        self.bar = Progress(lambda _line: None, "simulation", unit="rounds")

    def __call__(self, row: Mapping[str, object]) -> None:
        self.done += 1
        self.bar(self.done, self.total)
        if self.log is None:
            return
        left = (time.perf_counter() - self.started) / self.done * (self.total - self.done)
        self.log(f"[{self.done}/{self.total} rounds, ~{left / 60:.0f} min left] "
                 + _round_text(row))


def _round_text(row: Mapping[str, object]) -> str:
    seen = row["pool_with_boxes"]
    return (
        f"[seed {row['seed']}] {row['strategy']} round {row['round']}: "
        f"{row['labeled_images']} images, {row['labeled_boxes']} boxes, "
        f"mAP {_fmt(row['map'])} (AP50 {_fmt(row['ap50'])}), "
        f"{'promoted' if row['promoted'] else 'champion kept'}, "
        f"trained {row['train_seconds']:.0f} s"
        + ("" if seen is None else f"; {seen:.0%} of the pool had boxes to rank")
    )


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class _Tracker:
    """One MLflow run per strategy x seed, through a client bound to an explicit URI."""

    def __init__(self, tracking: Tracking) -> None:
        from al_assets.core.registry import get_or_create_experiment, open_client

        self.client = open_client(tracking.tracking_uri)
        self.experiment_id = get_or_create_experiment(
            self.client, tracking.experiment, tracking.artifact_location)

    def start(self, params: Mapping[str, str], strategy: str, seed: int) -> TrackedRun:
        return TrackedRun.create(self.client, self.experiment_id, f"{strategy}-seed{seed}",
                          {"al_assets.kind": "simulation", "strategy": strategy,
                           "seed": str(seed)}, params)


def _log_round(run: TrackedRun, row: Mapping[str, object]) -> None:
    """One curve point's metrics at step = round."""
    run.log({**{key: row.get(key) for key in _TRACKED},
             "promoted": float(bool(row["promoted"]))}, int(row["round"]))


def _ingest(split: CocoSplit, batch: str, log: Log | None) -> CocoTables:
    try:
        tables = ingest_batch(to_uri(split.coco_json), to_uri(split.image_dir), batch,
                              ObjectStore(), IngestOptions(shard_size=10**9))
    except AlAssetsError as exc:
        raise SimulationError(f"{exc} (is {split.image_dir} the image folder of "
                              f"{split.coco_json}?)") from exc
    if tables.rejects.num_rows and log:
        first = tables.rejects.slice(0, 3).to_pylist()
        log(f"{split.coco_json}: {tables.rejects.num_rows} records left out, e.g. "
            f"{[(r['record_type'], r['record_id'], r['reason']) for r in first]}")
    return tables


def _keep(table: pa.Table, ids: pa.Array, inside: bool) -> pa.Table:
    mask = pc.is_in(table["image_id"], ids)
    return table.filter(mask if inside else pc.invert(mask))


def _check_disjoint(pool: CocoTables, heldout: CocoTables, split: CocoSplit) -> None:
    overlap = set(pool.images["uri"].to_pylist()) & set(heldout.images["uri"].to_pylist())
    if overlap:
        raise SimulationError(
            f"{len(overlap)} images are in both the pool and the held-out split {split.coco_json} "
            f"(e.g. {min(overlap)}); a held-out image must never be trained on")


def _check_sizes(pool: Pool, config: SimulationConfig, split: CocoSplit) -> None:
    if config.final_size > len(pool.candidates):
        raise SimulationError(
            f"{config.initial_size} + {config.rounds} rounds x {config.budget} = "
            f"{config.final_size} images, but the pool {split.coco_json} has "
            f"{len(pool.candidates)} usable ones outside the held-out split; use a larger pool "
            "or fewer/smaller rounds")
    if pool.heldout.annotations.num_rows == 0:
        raise SimulationError(f"the held-out split of {split.coco_json} has no boxes to "
                              "evaluate mAP on; use a larger pool or pass a held-out file")
    if pool.heldout.categories["name"].to_pylist() != pool.categories["name"].to_pylist():
        raise SimulationError("the held-out file's categories differ from the pool's; both "
                              "must share one list")


def _warn_if_malloc_unset() -> None:
    if not malloc_env_is_set():
        exports = " ".join(f"{k}={v}" for k, v in RECOMMENDED_MALLOC_ENV.items())
        warnings.warn(
            "CPU training can be 10-80x slower and erratic with glibc's default allocator; start "
            f"the process with {exports} (the Makefile exports them)",
            stacklevel=3,
        )
