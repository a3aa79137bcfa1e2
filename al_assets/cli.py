"""``al-assets``: command line for the demo, data, models and runs on the real Dagster instance.

Every command that runs assets launches the project's jobs on the instance in ``$DAGSTER_HOME``
(default ``./.dagster_home``), so its runs and materializations show up in ``dagster dev``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from al_assets.core.defaults import SIMULATION_EXPERIMENT, console_log_level
from al_assets.core.errors import AlAssetsError
from al_assets.core.options import add_options, given
from al_assets.core.analysis.gate import GatePolicy
from al_assets.core.loop.settings import TrainSettings
from al_assets.core.simulation.config import SimulationConfig, SimulationError

Handler = Callable[[argparse.Namespace], int]


def _defs_and_instance():
    from al_assets.orchestration.definitions import defs
    from al_assets.orchestration.instance import configure_gpu_pool, get_instance

    instance = get_instance()
    configure_gpu_pool(instance)
    return defs, instance


def cmd_demo_data(args: argparse.Namespace) -> int:
    from al_assets.core.demo.generator import add_demo_batch, generate_demo_dataset

    root = Path(args.root)
    if args.add_batch:
        path = add_demo_batch(root, args.add_batch, unlabeled=args.unlabeled)
        print(f"added {path}" + (" (unlabeled; ground truth withheld)" if args.unlabeled else ""))
        return 0
    for path in generate_demo_dataset(root, n_images=args.images, seed=args.seed,
                                      n_batches=args.batches):
        print(f"wrote {path}")
    return 0


def cmd_setup_instance(args: argparse.Namespace) -> int:
    from al_assets.orchestration.instance import configure_gpu_pool, ensure_dagster_home, get_instance

    home = ensure_dagster_home()
    limit = configure_gpu_pool(get_instance(), args.gpu_slots)
    print(f"DAGSTER_HOME={home}; pool 'gpu' limited to {limit} concurrent prediction step(s)")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from al_assets.orchestration.runs import (
        INGESTED,
        UNCHANGED,
        discover_batches,
        discover_label_batches,
        import_label_batches,
        ingest,
        pending_batches,
    )

    defs, instance = _defs_and_instance()
    source = defs.resources["coco_source"]
    discover_batches(source, instance)
    config = {k: v for k, v in (("limit", args.limit), ("max_pixels", args.max_pixels),
                                ("force", args.force)) if v}
    outcome = ingest(defs, instance, args.batch or pending_batches(instance), config)
    done = [b for b, o in outcome.items() if o == INGESTED]
    same = [b for b, o in outcome.items() if o == UNCHANGED]
    failed = {b: o for b, o in outcome.items() if o not in (INGESTED, UNCHANGED)}
    print(f"ingested batches: {', '.join(done) or 'none new'}"
          + (f"; unchanged, not re-read: {', '.join(same)} (--force re-reads)" if same else ""))
    labels = [] if args.batch else discover_label_batches(source, instance)
    failed |= import_label_batches(defs, instance, labels)
    print(f"imported label batches: {', '.join(b for b in labels if b not in failed) or 'none new'}")
    for error in failed.values():
        print(f"error: {error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) failed and stay pending: fix them and run `al-assets ingest` "
              "again (the others went through)", file=sys.stderr)
    return 1 if failed else 0


def cmd_register(args: argparse.Namespace) -> int:
    from al_assets.orchestration.runs import register

    defs, instance = _defs_and_instance()
    config = {"weights": args.weights, **({"alias": args.alias} if args.alias else {})}
    key = register(defs, instance, config)
    print(f"registered model version {key} (alias {args.alias or defs.resources['mlflow'].alias})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from al_assets.orchestration.champion import ChampionConfig, champion_key
    from al_assets.orchestration.runs import predict

    defs, instance = _defs_and_instance()
    key = args.model_version or champion_key(ChampionConfig(), defs.resources["mlflow"])
    shards = predict(defs, instance, key, args.shard or None)
    print(f"predicted {len(shards)} shard(s) with {key}")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from al_assets.orchestration.runs import refresh_views

    defs, instance = _defs_and_instance()
    refresh_views(defs, instance)
    print("refreshed rankings, queue, analysis and report")
    return 0


def cmd_import_labels(args: argparse.Namespace) -> int:
    from al_assets.orchestration.runs import import_labels

    defs, instance = _defs_and_instance()
    batch, summary = import_labels(defs, instance, Path(args.file), args.name)
    print(f"imported {batch}: {summary}")
    return 0


def cmd_label_oracle(args: argparse.Namespace) -> int:
    from al_assets.orchestration.runs import oracle_label

    defs, _ = _defs_and_instance()
    path = oracle_label(defs, args.name)
    print(f"wrote {path}: the exported queue answered from ground truth")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from al_assets.orchestration.runs import train

    defs, instance = _defs_and_instance()
    config = given(vars(args), TrainSettings)
    if args.base_version is not None:
        config["base_version"] = args.base_version
    gate = given(vars(args), GatePolicy)
    outcome = train(defs, instance, None if args.gate_only else config, gate,
                    refresh=not args.no_refresh)
    print(outcome)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from al_assets.orchestration.definitions import defs

    rows = defs.resources["mlflow"].registry().list_models()
    print(f"{'name':<24} {'version':>7}  {'aliases':<12} uri")
    for row in rows:
        print(f"{row['name']:<24} {row['version']:>7}  {row['aliases']:<12} {row['uri']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from al_assets.orchestration.demo import run_demo

    run_demo(Path(args.root), n_images=args.images, retrain=args.retrain)
    return 0


def cmd_train_demo(args: argparse.Namespace) -> int:
    from al_assets.core.demo.detector import DemoTraining, train_demo_detector
    from al_assets.core.detection.sources import DEMO_CHECKPOINT

    out = Path(args.out or DEMO_CHECKPOINT)
    spec = DemoTraining(steps=args.steps, train_images=args.train_images, threads=args.threads)
    metrics = train_demo_detector(out, Path(args.workdir), spec)
    print(json.dumps({"checkpoint": str(out), **metrics}, indent=2, default=str))
    return 0


def cmd_download_coco(args: argparse.Namespace) -> int:
    from al_assets.core.coco.download import DEFAULT_BASE_URL, download_coco

    for path in download_coco(Path(args.dest), base_url=args.base_url or DEFAULT_BASE_URL):
        print(f"downloaded {path}")
    return 0


SIMULATE_OUT = "data/simulation"


def cmd_simulate(args: argparse.Namespace) -> int:
    import time

    from al_assets.core.simulation import (
        CocoSplit,
        Tracking,
        demo_splits,
        run_simulation,
        write_outputs,
    )

    started = time.perf_counter()
    overrides = given(vars(args), SimulationConfig)
    if args.preset:
        return _simulate_preset(args, overrides, started)
    for flag, value in (("--pretrain-more-steps", args.pretrain_more_steps),
                        ("--merge", args.merge)):
        if value:
            raise SimulationError(f"{flag} works on the preset experiments: use it with "
                                  "--preset NAME")
    config = SimulationConfig(**overrides)
    out = Path(args.out)
    base = CocoSplit(Path(args.base_coco), Path(args.base_images or Path(args.base_coco).parent)
                     ) if args.base_coco else None
    if args.coco:
        pool = CocoSplit(Path(args.coco), Path(args.images or Path(args.coco).parent))
        holdout = (CocoSplit(Path(args.holdout_coco), Path(args.holdout_images or
                                                            Path(args.holdout_coco).parent))
                   if args.holdout_coco else None)
    else:
        pool, holdout = demo_splits(out / "data", args.pool_size, args.holdout_size)
    tracking = Tracking(args.tracking_uri or _default_tracking_uri(), args.experiment,
                        str((out / "mlflow-artifacts").resolve()))
    held = holdout.coco_json if holdout else "the production split"
    print(f"simulating {config} on {pool.coco_json} (held out: {held}); "
          f"MLflow {tracking.tracking_uri}, experiment {tracking.experiment}", flush=True)
    table = run_simulation(pool, holdout, config, out / "work", tracking,
                           log=lambda line: print(line, flush=True), base=base)
    paths = write_outputs(table, out, args.target_map)
    print(paths["markdown"].read_text())
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


def _simulate_preset(args: argparse.Namespace, overrides: dict, started: float) -> int:
    """``simulate --preset NAME``: generated pool, pretrained detector, head-only rounds."""
    import time
    from dataclasses import replace

    from al_assets.core.simulation import Tracking
    from al_assets.core.simulation.experiment import (
        PRESET_SIMULATION,
        merge_preset_runs,
        run_preset,
    )
    from al_assets.core.simulation.pretrained import PretrainRecipe

    recipe = PretrainRecipe(more_steps=args.pretrain_more_steps)  # a bad value fails first
    out = Path(args.out if args.out != SIMULATE_OUT else f"{SIMULATE_OUT}/{args.preset}")
    if args.merge:
        merge_preset_runs(args.preset, [Path(r) for r in args.merge], out)
        print((out / "summary.md").read_text())
        print((out / "evidence.md").read_text())
        return 0
    tracking = Tracking(args.tracking_uri or _default_tracking_uri(), args.experiment,
                        str((out / "mlflow-artifacts").resolve()))
    config = replace(PRESET_SIMULATION, **overrides)
    run_preset(args.preset, Path(args.preset_root), out, tracking, config=config,
               recipe=recipe, log=lambda line: print(line, flush=True))
    print((out / "summary.md").read_text())
    print((out / "evidence.md").read_text())
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


def _default_tracking_uri() -> str:
    """The project's MLflow store: $MLFLOW_TRACKING_URI, else SQLite under the storage root."""
    from al_assets.orchestration.definitions import defs

    return defs.resources["mlflow"].registry().tracking_uri


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="al-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="demo data -> model -> predictions -> queue -> report")
    p.add_argument("--root", default="data/demo")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--retrain", action="store_true", help="train the demo detector first")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-data", help="generate the demo COCO dataset (or add a batch)")
    p.add_argument("--root", default="data/demo")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--add-batch", type=int, metavar="N", help="add one batch of N images")
    p.add_argument("--unlabeled", action="store_true",
                   help="with --add-batch: withhold its labels (ground_truth/, for the oracle)")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("setup-instance", help="create DAGSTER_HOME and set the gpu pool limit")
    p.add_argument("--gpu-slots", type=int, default=None)
    p.set_defaults(func=cmd_setup_instance)

    p = sub.add_parser("ingest", help="ingest new annotation files (or --batch NAME) and "
                       "import new label files")
    p.add_argument("--batch", action="append", default=[],
                   help="(re-)ingest this batch (repeatable); default: every pending batch")
    p.add_argument("--limit", type=int, default=None, help="keep the first N images per batch")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="reject images declaring more pixels (default 100,000,000)")
    p.add_argument("--force", action="store_true",
                   help="re-read batches whose file and options are unchanged")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("register", help="register a detector version in MLflow")
    p.add_argument("--weights", default="demo", help="demo | checkpoint path | torchvision name")
    p.add_argument("--alias", default=None,
                   help="alias moved to the new version (default: champion, the one followed)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("predict", help="predict shards under a model version (default champion)")
    p.add_argument("--model-version", default=None)
    p.add_argument("--shard", action="append", default=[])
    p.set_defaults(func=cmd_predict)

    sub.add_parser("refresh", help="recompute rankings, queue, analysis, report").set_defaults(
        func=cmd_refresh)
    sub.add_parser("models", help="list registered models (SHOW MODELS)").set_defaults(
        func=cmd_models)

    p = sub.add_parser("import-labels", help="copy a label export into <source>/labels/ and "
                       "import it (Label Studio JSON export or COCO)")
    p.add_argument("file")
    p.add_argument("--name", default=None, help="label batch name (default: the file's stem)")
    p.set_defaults(func=cmd_import_labels)

    p = sub.add_parser("label-oracle", help="demo: answer the exported queue from the withheld "
                       "ground truth into <source>/labels/ (an oracle labeler)")
    p.add_argument("--name", default=None, help="file stem (default: oracle-<UTC time>)")
    p.set_defaults(func=cmd_label_oracle)

    p = sub.add_parser("train", help="train a challenger on the labels, gate it against the "
                       "champion; on promotion predict the pool and refresh the queue")
    add_options(p, TrainSettings)  # the challenger asset's run config, same fields
    p.add_argument("--base-version", default=None, help="default: the champion")
    add_options(p, GatePolicy)  # the evaluation gate's
    p.add_argument("--no-refresh", action="store_true", help="skip predicting after promotion")
    p.add_argument("--gate-only", action="store_true",
                   help="no training: gate the current challenger against the champion")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-demo", help="train and evaluate the demo detector")
    p.add_argument("--out", default=None)
    p.add_argument("--workdir", default="data/demo-training")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.set_defaults(func=cmd_train_demo)

    p = sub.add_parser("simulate", help="replay active learning: strategies vs random, mAP curves")
    add_options(p, SimulationConfig, help_extra={
        "strategies": "with --preset: random entropy default", "seeds": "with --preset: 0 1 2",
        "initial_size": "with --preset: 0, the base split",
        "cached_features": "--preset sets it"})
    p.add_argument("--out", default=SIMULATE_OUT, help="results, data and checkpoints "
                   "(with --preset: <out>/<preset>)")
    p.add_argument("--preset", default=None,
                   help="iid | long_tail | bursts | domain_shift | empty_frames: a generated "
                   "pool, the pretrained detector and head-only rounds (docs/active-learning.md)")
    p.add_argument("--preset-root", default="data/presets",
                   help="where preset data and the pretrained detector are kept")
    p.add_argument("--merge", nargs="+", default=None, metavar="RUN",
                   help="with --preset: merge the --out folders of runs made apart (one "
                   "process per seed) into --out, instead of running")
    p.add_argument("--pretrain-more-steps", type=int, default=0,
                   help="with --preset: extend the pretrained detector by this many steps "
                   "(kept beside the first stage; 0: the 900-step detector)")
    p.add_argument("--base-coco", default=None,
                   help="a labeled base split (COCO json) the loop starts with")
    p.add_argument("--base-images", default=None, help="image folder of --base-coco")
    p.add_argument("--coco", default=None, help="labeled pool (COCO json); default: demo data")
    p.add_argument("--images", default=None, help="image folder of --coco")
    p.add_argument("--holdout-coco", default=None,
                   help="held-out COCO json (else the production split of --coco)")
    p.add_argument("--holdout-images", default=None)
    p.add_argument("--holdout-size", type=int, default=100, help="held-out images (demo data)")
    p.add_argument("--pool-size", type=int, default=400, help="demo pool images")
    p.add_argument("--tracking-uri", default=None, help="default: the project's MLflow store")
    p.add_argument("--experiment", default=SIMULATION_EXPERIMENT)
    p.add_argument("--target-map", type=float, nargs="+", default=None,
                   help="labels-saved targets (default 90%% and 100%% of random's final mAP)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("download-coco", help="fetch the COCO 2017 val zips (resumable)")
    p.add_argument("--dest", default="data/coco")
    p.add_argument("--base-url", default=None)
    p.set_defaults(func=cmd_download_coco)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except AlAssetsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _quiet_libraries() -> None:
    """MLflow's INFO lines (its store's schema migration on first use) are not the user's
    business at the CLI; AL_ASSETS_LOG_LEVEL=DEBUG shows them again."""
    if console_log_level() != "DEBUG":
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
