"""The closed active-learning loop, simulated on a fully labeled pool with a held-out split.

Why simulate: whether uncertainty sampling beats random depends on the data, the detector and
the budget, and the only honest answer is a replay. Labels are hidden, revealed only for the
images a strategy selects; the detector is retrained on them and scored on the held-out split
(COCO mAP, pycocotools) after every round. Per seed:

* round 0 trains from scratch on a random seed set of ``initial_size`` images; every strategy
  of the seed starts from that same set and model, so their curves differ only by selection;
* each later round predicts the unlabeled pool with the previous round's model (the production
  ``predict_shard`` + ``ClassScoreExtractor`` path, boxes below ``score_thresh`` dropped), lets
  the strategy pick ``budget`` images, and fine-tunes the previous checkpoint for
  ``round_steps`` (warm start: a fixed cost per round instead of a growing from-scratch run).
  Training seeds depend on (seed, round) only, so strategies get identical optimisation noise.

Every strategy x seed is one MLflow run (params + per-round metrics, step = round).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from torch import nn

from al_assets.core import schemas
from al_assets.core.demo.generator import generate_demo_dataset
from al_assets.core.detection.categories import CategoryMap
from al_assets.core.detection.evaluation import evaluate_coco_map
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.detection.factory import save_checkpoint
from al_assets.core.detection.training import (
    RECOMMENDED_MALLOC_ENV,
    CocoDetectionDataset,
    malloc_env_is_set,
    train_detector,
)
from al_assets.core.errors import AlAssetsError
from al_assets.core.images import decode_rgb
from al_assets.core.prediction.devices import lease_device
from al_assets.core.prediction.runner import (
    PredictOptions,
    ShardRef,
    configure_postprocess,
    predict_shard,
)
from al_assets.core.queue.dedup import dhash
from al_assets.core.simulation.report import curves_table
from al_assets.core.simulation.strategies import (
    Strategy,
    parse_strategy,
    select_images,
    select_random,
)
from al_assets.core.storage.objects import to_uri

ARCH = "ssdlite320_mobilenet_v3_large"
DEFAULT_STRATEGIES = ("random", "entropy", "margin")
DEMO_POOL_SEED, DEMO_HOLDOUT_SEED = 3000, 4000  # the demo pool and demo detector use 0, 1000, 2000
DEMO_POOL_IMAGES, DEMO_HOLDOUT_IMAGES = 400, 100
_INITIAL_STREAM, _SELECT_STREAM = 1, 2  # numpy seed-sequence streams, one per purpose
Log = Callable[[str], None]
_TRACKED = ("map", "ap50", "labeled_images", "labeled_boxes", "train_seconds", "pool_with_boxes")
_POSITIVE_FIELDS = (
    "initial_size",
    "budget",
    "rounds",
    "initial_steps",
    "round_steps",
    "batch_size",
    "candidates_factor",
)


class SimulationError(AlAssetsError, ValueError):
    """A simulation that cannot run as configured (pool too small, bad split, bad image)."""


@dataclass(frozen=True)
class CocoSplit:
    """A COCO instances file and the folder its ``file_name`` entries are relative to."""

    coco_json: Path
    image_dir: Path


@dataclass(frozen=True)
class SimulationConfig:
    """What to replay.

    The defaults are sized for the demo data on 2 CPU cores (about 8 training and 30 inference
    images/s): 2 x (250 + 3 strategies x 3 rounds x 50) steps of 8 images is about 23 min of
    training, plus about 5 min of prediction and evaluation. Larger budgets: see the CLI flags.
    """

    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seeds: tuple[int, ...] = (0, 1)
    initial_size: int = 20  # random seed set of round 0
    budget: int = 20  # images labeled per round
    rounds: int = 3  # selection rounds after round 0
    initial_steps: int = 250  # round 0, from scratch
    round_steps: int = 50  # each later round, warm-started
    batch_size: int = 8
    lr: float | None = None  # None: train_detector's default (SGD 0.05)
    arch: str = ARCH
    score_thresh: float = 0.2  # boxes below it are ignored by selection (not by evaluation)
    candidates_factor: int = 3  # *_diverse strategies: top factor x budget candidates
    device: str = "auto"  # prediction and evaluation; training runs where train_detector runs

    def __post_init__(self) -> None:
        for name in _POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise SimulationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.strategies or not self.seeds:
            raise SimulationError("give at least one strategy and one seed")
        for name, values in (("strategies", self.strategies), ("seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise SimulationError(f"{name} {values} must not repeat")
        if not 0.0 <= self.score_thresh < 1.0:
            raise SimulationError(f"score_thresh must be in [0, 1), got {self.score_thresh}")
        try:
            [parse_strategy(s) for s in self.strategies]
        except ValueError as exc:
            raise SimulationError(str(exc)) from exc

    @property
    def final_size(self) -> int:
        return self.initial_size + self.rounds * self.budget

    def params(self, strategy: str, seed: int) -> dict[str, str]:
        """MLflow params of one run: this config with the run's own strategy and seed."""
        values = {k: v for k, v in asdict(self).items() if k not in ("strategies", "seeds")}
        return {"strategy": strategy, "seed": str(seed), **{k: str(v) for k, v in values.items()}}


@dataclass(frozen=True)
class Tracking:
    """Where the runs go; plain MLflow tracking, so any tracking URI works."""

    tracking_uri: str
    experiment: str = "al_assets_simulation"
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


def split_holdout(
    split: CocoSplit, holdout_images: int, seed: int, out_dir: Path
) -> tuple[CocoSplit, CocoSplit]:
    """Split one labeled COCO file into a pool and a random held-out set (same image folder)."""
    document = _read_document(split.coco_json)
    ids = sorted(int(image["id"]) for image in document["images"])
    if not 0 < holdout_images < len(ids):
        raise SimulationError(
            f"holdout of {holdout_images} images is impossible with {len(ids)} images in "
            f"{split.coco_json}; pass a size between 1 and {len(ids) - 1}"
        )
    held = {int(i) for i in np.random.default_rng(seed).choice(ids, holdout_images, replace=False)}
    pool_json = _write_json(
        out_dir / "pool.json", _subset(document, [i for i in ids if i not in held])
    )
    holdout_json = _write_json(out_dir / "holdout.json", _subset(document, sorted(held)))
    return CocoSplit(pool_json, split.image_dir), CocoSplit(holdout_json, split.image_dir)


class LabeledPool:
    """The pool's COCO document, indexed for subsets, box counts, prediction inputs and dHash.

    Every image is read once up front: an unreadable one is left out of the pool (listed in
    ``skipped``) so that no strategy can pick an image the detector cannot see.
    """

    def __init__(self, split: CocoSplit, log: Log | None = None) -> None:
        self.split = split
        self.document = _read_document(split.coco_json)
        self.records = {int(image["id"]): image for image in self.document["images"]}
        self.boxes = dict.fromkeys(self.records, 0)
        for ann in self.document.get("annotations", []):
            if _is_trainable_box(ann) and int(ann["image_id"]) in self.boxes:
                self.boxes[int(ann["image_id"])] += 1
        self.hashes: dict[int, int] = {}
        self.skipped: dict[int, str] = {}
        for image_id in sorted(self.records):
            self._inspect(image_id)
        if self.skipped and log:
            first = dict(list(self.skipped.items())[:3])
            log(f"left {len(self.skipped)} unreadable pool images out, e.g. {first}")
        self.image_ids = sorted(self.hashes)

    def path(self, image_id: int) -> Path:
        return self.split.image_dir / self.records[image_id]["file_name"]

    def labeled_boxes(self, ids: Sequence[int]) -> int:
        """Non-crowd boxes with an area: what training sees, hence what labeling costs."""
        return sum(self.boxes[i] for i in ids)

    def write_subset(self, ids: Sequence[int], path: Path) -> Path:
        """The COCO file of the labeled images only (ground truth revealed for them)."""
        return _write_json(path, _subset(self.document, ids))

    def images_table(self, ids: Sequence[int]) -> pa.Table:
        """image_id, uri, width, height: the prediction runner's input for these images."""
        records = [self.records[i] for i in ids]
        return pa.table(
            {
                "image_id": pa.array(list(ids), pa.int64()),
                "uri": pa.array([to_uri(self.path(int(r["id"]))) for r in records], pa.string()),
                "width": pa.array([int(r["width"]) for r in records], pa.int32()),
                "height": pa.array([int(r["height"]) for r in records], pa.int32()),
            }
        )

    def _inspect(self, image_id: int) -> None:
        record, path = self.records[image_id], self.path(image_id)
        try:
            data = path.read_bytes()
            decode_rgb(data, str(path), expected_size=(int(record["width"]), int(record["height"])))
            self.hashes[image_id] = dhash(data, str(path))
        except (OSError, AlAssetsError, ValueError) as exc:
            self.skipped[image_id] = f"{path}: {exc}"


@dataclass
class _RoundResult:
    model: nn.Module
    checkpoint: Path
    metrics: dict
    train_seconds: float


@dataclass
class _Run:
    """Shared state of one seed: its data, round-0 model and the predictions made with it."""

    pool: LabeledPool
    holdout: CocoSplit
    config: SimulationConfig
    seed: int
    workdir: Path
    device: object
    categories: CategoryMap
    initial: list[int] = field(default_factory=list)
    start: _RoundResult | None = None
    start_predictions: pa.Table | None = None


def run_simulation(
    pool_split: CocoSplit,
    holdout: CocoSplit,
    config: SimulationConfig,
    workdir: Path,
    tracking: Tracking,
    log: Log | None = print,
) -> pa.Table:
    """Replay every strategy x seed; returns the SIMULATION_CURVES table (see ``report``)."""
    _warn_if_malloc_unset()
    pool = LabeledPool(pool_split, log)
    _check_sizes(pool, holdout, config)
    tracker = _Tracker(tracking)
    rows: list[dict] = []
    with lease_device(config.device) as device:
        for seed in config.seeds:
            run = _Run(
                pool,
                holdout,
                config,
                seed,
                Path(workdir) / f"seed-{seed}",
                device,
                CategoryMap.from_coco_categories(pool.document["categories"]),
            )
            _start_seed(run, log)
            for name in config.strategies:
                rows += _tracked(tracker, run, parse_strategy(name), log)
    return curves_table(rows)


def _start_seed(run: _Run, log: Log | None) -> None:
    """Round 0: the random seed set and the model trained on it from scratch."""
    rng = np.random.default_rng([run.seed, _INITIAL_STREAM])
    run.initial = select_random(run.pool.image_ids, run.config.initial_size, rng)
    run.start = _train_round(run, run.initial, 0, None, run.workdir / "round-0")
    _log_round(log, _row(run, "all", 0, run.initial, run.initial, run.start, None))


def _tracked(tracker: _Tracker, run: _Run, strategy: Strategy, log: Log | None) -> list[dict]:
    run_id = tracker.start(run.config.params(strategy.name, run.seed), strategy.name, run.seed)
    try:
        rows = _simulate_strategy(run, strategy, lambda row: tracker.log_round(run_id, row), log)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id, "FINISHED")
    return rows


def _simulate_strategy(
    run: _Run, strategy: Strategy, record: Callable[[dict], None], log: Log | None
) -> list[dict]:
    labeled, result = list(run.initial), run.start
    rows = [_row(run, strategy.name, 0, labeled, run.initial, result, None)]
    record(rows[-1])
    folder = run.workdir / strategy.name.replace(":", "-")
    for rnd in range(1, run.config.rounds + 1):
        picks, with_boxes = _select(run, strategy, rnd, labeled, result.model)
        labeled += picks
        previous = result
        result = _train_round(run, labeled, rnd, previous.checkpoint, folder / f"round-{rnd}")
        if rnd > 1:
            previous.checkpoint.unlink(missing_ok=True)  # round 0's is shared by every strategy
        rows.append(_row(run, strategy.name, rnd, labeled, picks, result, with_boxes))
        record(rows[-1])
        _log_round(log, rows[-1])
    return rows


def _select(
    run: _Run, strategy: Strategy, rnd: int, labeled: list[int], model: nn.Module
) -> tuple[list[int], float | None]:
    """The round's picks, and the fraction of the unlabeled pool with a box to rank by."""
    taken = set(labeled)
    unlabeled = [i for i in run.pool.image_ids if i not in taken]
    predictions = None
    if strategy.needs_predictions:
        if rnd == 1:  # the round-0 model is shared, so are its predictions
            if run.start_predictions is None:
                run.start_predictions = _predict(run, model, unlabeled)
            predictions = run.start_predictions
        else:
            predictions = _predict(run, model, unlabeled)
    picks = select_images(
        strategy,
        run.config.budget,
        unlabeled_ids=unlabeled,
        rng=np.random.default_rng([run.seed, _SELECT_STREAM, rnd]),
        predictions=predictions,
        hashes=run.pool.hashes,
        labeled_ids=labeled,
        candidates_factor=run.config.candidates_factor,
    )
    if predictions is None:
        return picks, None
    counts = pc.list_value_length(predictions["detections"]).to_numpy(zero_copy_only=False)
    return picks, float(np.mean(counts > 0))


def _train_round(
    run: _Run, labeled: list[int], rnd: int, init: Path | None, stem: Path
) -> _RoundResult:
    """Train on the labeled set (from ``init`` when given), checkpoint, evaluate on the holdout."""
    config = run.config
    coco_json = run.pool.write_subset(labeled, stem.with_suffix(".json"))
    started = time.perf_counter()
    model = train_detector(
        coco_json,
        run.pool.split.image_dir,
        arch=config.arch,
        steps=config.initial_steps if init is None else config.round_steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=run.seed * 1000 + rnd,
        init_checkpoint=init,
    )
    seconds = time.perf_counter() - started
    checkpoint = save_checkpoint(
        stem.with_suffix(".pt"),
        model,
        arch=config.arch,
        categories=run.categories,
        meta={"round": rnd, "seed": run.seed},
    )
    model.to(run.device)
    metrics = evaluate_coco_map(model, run.holdout.coco_json, run.holdout.image_dir)
    return _RoundResult(model, checkpoint, metrics, seconds)


def _predict(run: _Run, model: nn.Module, ids: list[int]) -> pa.Table:
    """PREDICTIONS of ``ids`` with the production runner; selection sees boxes >= score_thresh."""
    extractor = ClassScoreExtractor(model, run.categories.category_ids).to(run.device).eval()
    sink = pa.BufferOutputStream()
    workers = 0 if getattr(run.device, "type", "cpu") == "cpu" else 2
    with (
        _score_threshold(model, run.config.score_thresh),
        pq.ParquetWriter(sink, schemas.PREDICTIONS) as writer,
    ):
        stats = predict_shard(
            run.pool.images_table(ids),
            extractor,
            writer,
            ShardRef("simulation", 0, "pool"),
            device=run.device,
            options=PredictOptions(num_workers=workers),
        )
    if stats.error_rows:
        first = stats.error_rows[0]
        raise SimulationError(
            f"{stats.errors} pool images failed in prediction, e.g. image {first['image_id']} "
            f"({first['stage']}): {first['error']}"
        )
    return pq.read_table(pa.BufferReader(sink.getvalue()))


@contextlib.contextmanager
def _score_threshold(model: nn.Module, score_thresh: float) -> Iterator[None]:
    """Selection's threshold for the duration of one prediction; evaluation keeps the model's."""
    target = getattr(model, "roi_heads", model)
    previous = target.score_thresh
    configure_postprocess(model, score_thresh=score_thresh)
    try:
        yield
    finally:
        configure_postprocess(model, score_thresh=previous)


def _row(
    run: _Run,
    strategy: str,
    rnd: int,
    labeled: list[int],
    picks: list[int],
    result: _RoundResult,
    pool_with_boxes: float | None,
) -> dict:
    return {
        "strategy": strategy,
        "seed": run.seed,
        "round": rnd,
        "labeled_images": len(labeled),
        "labeled_boxes": run.pool.labeled_boxes(labeled),
        "map": result.metrics["map"],
        "ap50": result.metrics["ap50"],
        "train_seconds": result.train_seconds,
        "selected_ids": list(picks),
        "pool_with_boxes": pool_with_boxes,
    }


def _log_round(log: Log | None, row: Mapping[str, object]) -> None:
    if log is None:
        return
    seen = row["pool_with_boxes"]
    log(
        f"[seed {row['seed']}] {row['strategy']} round {row['round']}: "
        f"{row['labeled_images']} images, {row['labeled_boxes']} boxes, "
        f"mAP {_fmt(row['map'])} (AP50 {_fmt(row['ap50'])}), trained {row['train_seconds']:.0f} s"
        + ("" if seen is None else f"; {seen:.0%} of the pool had boxes to rank")
    )


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class _Tracker:
    """One MLflow run per strategy x seed, through a client bound to an explicit URI."""

    def __init__(self, tracking: Tracking) -> None:
        import mlflow

        self.client = mlflow.MlflowClient(tracking.tracking_uri)
        found = self.client.get_experiment_by_name(tracking.experiment)
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(
                tracking.experiment, artifact_location=tracking.artifact_location
            )
        )

    def start(self, params: Mapping[str, str], strategy: str, seed: int) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{strategy}-seed{seed}",
            tags={"al_assets.kind": "simulation", "strategy": strategy, "seed": str(seed)},
        )
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return run.info.run_id

    def log_round(self, run_id: str, row: Mapping[str, object]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(row[key]), now, int(row["round"]))
            for key in _TRACKED
            if row[key] is not None
        ]
        self.client.log_batch(run_id, metrics=metrics)

    def finish(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)


def _skipped_hint(pool: LabeledPool) -> str:
    """Why images were left out: usually the image folder is not the one the JSON refers to."""
    if not pool.skipped:
        return ""
    first = next(iter(pool.skipped.values()))
    return (f" ({len(pool.skipped)} images could not be read from {pool.split.image_dir}, "
            f"e.g. {first}; is that the right image folder?)")


def _check_sizes(pool: LabeledPool, holdout: CocoSplit, config: SimulationConfig) -> None:
    if config.final_size > len(pool.image_ids):
        raise SimulationError(
            f"{config.initial_size} + {config.rounds} rounds x {config.budget} = "
            f"{config.final_size} images, but the pool {pool.split.coco_json} has "
            f"{len(pool.image_ids)} usable ones; use a larger pool or fewer/smaller rounds"
            + _skipped_hint(pool)
        )
    dataset = CocoDetectionDataset(holdout.coco_json, holdout.image_dir)
    if not any(len(r.category_ids) for r in dataset.records):
        raise SimulationError(f"held-out split {holdout.coco_json} has no boxes to evaluate mAP on")
    pool_categories = CategoryMap.from_coco_categories(pool.document["categories"])
    if dataset.categories != pool_categories:
        raise SimulationError(
            f"held-out split {holdout.coco_json} has categories "
            f"{list(dataset.categories.category_ids)} but the pool has "
            f"{list(pool_categories.category_ids)}; both must share one list"
        )
    overlap = {str(pool.path(i).resolve()) for i in pool.image_ids} & {
        str(r.path.resolve()) for r in dataset.records
    }
    if overlap:
        raise SimulationError(
            f"{len(overlap)} images are in both the pool and the held-out split (e.g. "
            f"{min(overlap)}); a held-out image must never be trained on"
        )


def _warn_if_malloc_unset() -> None:
    if not malloc_env_is_set():
        exports = " ".join(f"{k}={v}" for k, v in RECOMMENDED_MALLOC_ENV.items())
        warnings.warn(
            "CPU training can be 10-80x slower and erratic with glibc's default allocator; start "
            f"the process with {exports} (the Makefile exports them)",
            stacklevel=3,
        )


def _is_trainable_box(ann: Mapping) -> bool:
    """The boxes CocoDetectionDataset trains on: not crowd, positive width and height."""
    bbox = ann.get("bbox") or [0, 0, 0, 0]
    return not ann.get("iscrowd", 0) and float(bbox[2]) > 0 and float(bbox[3]) > 0


def _read_document(coco_json: Path) -> dict:
    try:
        document = json.loads(Path(coco_json).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SimulationError(f"cannot read COCO file {coco_json}: {exc}") from exc
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("images"), list)
        or not document.get("categories")
    ):
        raise SimulationError(
            f"{coco_json} is not a COCO instances file with images and categories"
        )
    return document


def _subset(document: dict, ids: Sequence[int]) -> dict:
    keep = {int(i) for i in ids}
    return {
        **{k: v for k, v in document.items() if k not in ("images", "annotations")},
        "images": [im for im in document["images"] if int(im["id"]) in keep],
        "annotations": [a for a in document.get("annotations", []) if int(a["image_id"]) in keep],
    }


def _write_json(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(document, separators=(",", ":")))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
