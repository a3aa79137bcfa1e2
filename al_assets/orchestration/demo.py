"""The demo: generated pool -> demo detector in MLflow -> predictions -> queue -> report."""

import os
from pathlib import Path

from al_assets.core.detection.sources import DEMO_CHECKPOINT


def run_demo(root: Path, *, n_images: int = 300, retrain: bool = False) -> None:
    """Run the whole chain on the real instance; idempotent (re-runs skip finished work)."""
    os.environ.setdefault("AL_ASSETS_SOURCE_ROOT", str(root))
    from al_assets.core.demo.generator import generate_demo_dataset, withhold_labels
    from al_assets.orchestration.champion import ChampionConfig, champion_key
    from al_assets.orchestration.definitions import defs
    from al_assets.orchestration.instance import configure_gpu_pool, get_instance
    from al_assets.orchestration.runs import (
        INGESTED,
        UNCHANGED,
        RunFailedError,
        discover_batches,
        ingest,
        pending_batches,
        predict,
        refresh_views,
    )
    from al_assets.orchestration.runs import register as register_model

    if not (root / "annotations").is_dir():
        _say(f"generating {n_images} demo images in {root}")
        _, second = generate_demo_dataset(root, n_images=n_images, seed=0, n_batches=2)
        withhold_labels(second)  # batch-001 arrives unlabeled: the queue's pool
        _say(f"{second.name} is unlabeled (its ground truth, for the oracle labeler, is in "
             f"{root / 'ground_truth'})")
    instance = get_instance()
    configure_gpu_pool(instance)
    source, storage, mlflow = (defs.resources[k] for k in ("coco_source", "storage", "mlflow"))
    discover_batches(source, instance)
    outcome = ingest(defs, instance, pending_batches(instance))
    failed = {b: o for b, o in outcome.items() if o not in (INGESTED, UNCHANGED)}
    if failed:
        raise RunFailedError("; ".join(failed.values()))
    _say(f"ingested {len(outcome)} new batch(es) from {source.root}")
    if retrain or not DEMO_CHECKPOINT.is_file():
        _train()
    registry = mlflow.registry()
    if not registry.versions(mlflow.model_name):
        _say(f"registered {register_model(defs, instance, {'weights': 'demo'})}")
    key = champion_key(ChampionConfig(), mlflow)
    store = storage.tables()
    done = {p.split("/", 1)[1] for p in store.partitions("image_scores", under=key)}
    todo = [s for s in instance.get_dynamic_partitions("shard") if s not in done]
    predict(defs, instance, key, todo)
    _say(f"predicted {len(todo)} shard(s) with {key} ({len(done)} already done)")
    refresh_views(defs, instance)
    _say("refreshed rankings, labeling queue, analysis and report")
    print(summary(store, key), flush=True)
    _say(f"tables: {store.root}/tables   report: {store.file_uri('report', 'index.html')}")
    _say(f"queue:  {store.file_uri('queue')}   UI: `make ui` then http://127.0.0.1:3000")
    _say("close the loop: .venv/bin/al-assets label-oracle && .venv/bin/al-assets ingest && "
         ".venv/bin/al-assets train   (README: Closing the loop)")


def summary(store, key: str, top: int = 5) -> str:
    """The demo's result in a few lines: pool, rejects, model and mAP, queue head, confusions."""
    from al_assets.core import schemas

    images = store.read_many("images", store.partitions("images"), ["image_id"],
                             schema=schemas.IMAGES).num_rows
    rejects = store.read_many("ingestion_rejects", store.partitions("ingestion_rejects"),
                              ["record_type"], schema=schemas.INGESTION_REJECTS).num_rows
    lines = [f"  pool: {images} images, {rejects} rejected records (table ingestion_rejects)"]
    evaluation = store.read("model_evaluation").to_pylist()
    overall = [r for r in evaluation if r["category_id"] is None
               and r.get("model_version", key) == key]
    if overall and overall[0]["ap"] is not None:
        lines.append(f"  model: {key}, held-out mAP {overall[0]['ap']:.3f} "
                     f"(AP50 {overall[0]['ap50']:.3f}) on labeled pool images")
    names = {r["category_id"]: r["name"] for r in evaluation if r["category_id"] is not None}
    queue = store.read("labeling_queue", columns=["queue_rank", "uri", "reason", "labels"])
    lines.append(f"  labeling queue, top {top} of {queue.num_rows}:")
    for row in queue.slice(0, top).to_pylist():
        labels = ", ".join(names.get(i, str(i)) for i in row["labels"])
        lines.append(f"    {row['queue_rank']}. {row['uri'].rsplit('/', 1)[-1]}  "
                     f"({row['reason']}{'; ' + labels if labels else ''})")
    pairs = store.read("confused_pairs").slice(0, 3).to_pylist()
    lines.append("  most confused: " + "; ".join(
        f"{p['first_name']} -> {p['second_name']} ({p['count']} boxes)" for p in pairs))
    return "\n".join(lines)


def _train() -> None:
    from al_assets.core.demo.detector import train_demo_detector

    _say(f"training the demo detector into {DEMO_CHECKPOINT} (a few minutes on CPU)")
    metrics = train_demo_detector(DEMO_CHECKPOINT, Path("data/demo-training"))
    _say(f"demo detector: COCO mAP {metrics.get('map', float('nan')):.3f} on held-out images")


def _say(text: str) -> None:
    print(f"[al-assets demo] {text}", flush=True)
