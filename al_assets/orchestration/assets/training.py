"""The loop's model assets: train a challenger on the labels, gate it against the champion.

``challenger`` fine-tunes a registered version (default: the champion) on every labeled
train-split image and registers the result with alias ``challenger``; ``evaluation_gate``
compares challenger and champion on the labeled held-out images and moves ``champion`` only
when the challenger is better by the configured margin. Moving the alias is what the
model-version sensor watches: it then predicts every shard and the views refresh.
"""


from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.defaults import DETECTOR_MODEL
from al_assets.core.analysis.evaluation import compare_predictions
from al_assets.core.analysis.gate import GatePolicy, decide, per_class_deltas
from al_assets.core.loop.evaluation import predict_images
from al_assets.core.loop.settings import TrainSettings
from al_assets.core.loop.training import train_challenger
from al_assets.core.prediction.devices import lease_device
from al_assets.core.prediction.runner import ShardRef
from al_assets.core.splits import HELDOUT, TRAIN, ids_in
from al_assets.core.tracking import TrackedRun, TrainingRun
from al_assets.core.storage import TableStore
from al_assets.core.pool import pool_categories, pool_labels, pool_table, read_splits
from al_assets.orchestration.assets.prediction import GPU_POOL
from al_assets.orchestration.champion import ChampionConfig
from al_assets.orchestration.config import dataclass_of, derived_config
from al_assets.orchestration.metadata import markdown_preview, table_metadata
from al_assets.orchestration.partitions import MODEL_VERSION, add_partitions, model_version_key
from al_assets.orchestration.resources import (
    CocoSourceResource,
    DeviceResource,
    MlflowResource,
    StorageResource,
    scratch_dir,
)

MODELS = "models"
CHALLENGER = "challenger"


class TrainingConfig(derived_config("TrainSettingsOptions", TrainSettings, base=ChampionConfig)):
    """TrainSettings' fields (names, defaults, help) and the version to start from."""

    base_version: str | None = None
    """Model version key to fine-tune (e.g. al-class-scores-v1); default: the champion."""

    def settings(self) -> TrainSettings:
        return dataclass_of(self, TrainSettings)


@dg.asset(
    name=CHALLENGER, group_name=MODELS, kinds={"mlflow", "pytorch"}, owners=["team:ml"],
    deps=["splits", "registered_model"], pool=GPU_POOL,
    description="Fine-tune a model version (default: the champion) on every labeled "
    "train-split image; register it in MLflow with alias `challenger`.",
)
def challenger(
    context: dg.AssetExecutionContext, config: TrainingConfig, storage: StorageResource,
    mlflow: MlflowResource, coco_source: CocoSourceResource, device: DeviceResource,
) -> dg.MaterializeResult:
    store, registry = storage.tables(), mlflow.registry()
    base_name, base_version = _base(config, registry, mlflow)
    base = registry.load(base_name, base_version)
    images, annotations, lineage = _train_set(store)
    settings = config.settings()
    tracker = TrainingRun(registry.client, registry.experiment_id(),
                          model_version_key(base_name, base_version), lineage, settings,
                          context.log.info, tags={"dagster_run_id": context.run_id})
    workdir = Path(scratch_dir("training", model_version_key(base_name, base_version)))
    with lease_device(device.device, device.lease_folder()) as dev:
        result = train_challenger(
            images, annotations, pool_categories(store), init_checkpoint=Path(base.checkpoint_path),
            settings=settings, workdir=workdir, arch=base.arch, objects=coco_source.objects(),
            log=tracker.step, meta={"base_version": model_version_key(base_name, base_version)},
        )
        context.log.info(f"trained {settings.steps} steps in {result.seconds:.0f} s on {dev}")
    tracker.finish(result)
    _, scores = registry.register_detector(
        result.checkpoint, detector_name=DETECTOR_MODEL, class_scores_name=base_name,
        alias=CHALLENGER, tags=tracker.tags(result, base.arch), params=settings.params(),
        metrics={"final_loss": result.losses[-1]["loss"]}, topk=5,
    )
    key = model_version_key(scores.name, scores.version)
    add_partitions(context.instance, MODEL_VERSION, [key])
    return dg.MaterializeResult(metadata={
        "model_version": key, "model_uri": scores.uri, "alias": CHALLENGER,
        "base_version": model_version_key(base_name, base_version),
        "train_images": result.images, "train_boxes": result.boxes,
        "label_batches": ", ".join(lineage) or "none", "steps": settings.steps,
        "train_seconds": round(result.seconds, 1), "mlflow_run_id": tracker.run_id,
        "resumed_from_step": tracker.resumed_from if tracker.resumed_from is not None else "none",
        "loss_first": round(result.losses[0]["loss"], 4),
        "loss_last": round(result.losses[-1]["loss"], 4),
    })


def _base(config: TrainingConfig, registry, mlflow: MlflowResource) -> tuple[str, int]:
    from al_assets.orchestration.partitions import parse_model_version_key

    if config.base_version:
        try:
            name, version = parse_model_version_key(config.base_version)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from None
        known = registry.versions(name)
        if version not in known:  # a typo'd version fails here, before anything is written
            raise dg.Failure(f"base_version {config.base_version} does not exist; registered "
                             f"versions of {name}: {', '.join(map(str, known)) or 'none'}")
        return name, version
    name, alias = config.champion(mlflow)
    return name, int(registry.resolve(name, alias=alias).version)


def _labeled(store: TableStore, split: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(IMAGES rows, effective labels, SPLITS rows) of the labeled images of one split."""
    splits = read_splits(store)
    ids = ids_in(splits, split, labeled=True)
    images = pool_table(store, "images")
    annotations, _ = pool_labels(store)
    return (images.filter(pc.is_in(images["image_id"], ids)), annotations,
            splits.filter(pc.is_in(splits["image_id"], ids)))


def _train_set(store: TableStore) -> tuple[pa.Table, pa.Table, list[str]]:
    """Labeled train-split images, their effective labels, and the batches they come from."""
    images, annotations, rows = _labeled(store, TRAIN)
    return images, annotations, sorted(set(rows["label_batch"].to_pylist()))


class GateConfig(derived_config("GatePolicyOptions", GatePolicy, base=ChampionConfig)):
    """GatePolicy's fields (names, defaults, help) and the bootstrap's settings."""

    n_boot: int = 200
    """Bootstrap resamples of the held-out images (paired: same resamples for both models)."""
    seed: int = 0

    def policy(self) -> GatePolicy:
        return dataclass_of(self, GatePolicy)


@dg.asset(
    group_name=MODELS, kinds={"mlflow", "parquet"}, owners=["team:ml"],
    deps=[CHALLENGER, "splits"], pool=GPU_POOL,
    check_specs=[
        dg.AssetCheckSpec("challenger_beats_champion", asset="evaluation_gate",
                          description="The challenger was better by the margin and promoted "
                          "(warns when the champion was kept)."),
        dg.AssetCheckSpec("heldout_large_enough", asset="evaluation_gate",
                          description="Enough labeled held-out images for the gate to decide."),
    ],
    description="Challenger vs champion on the held-out split (COCO mAP, AP50, per-class AP, "
    "paired bootstrap interval); moves `champion` only when the challenger is better.",
)
def evaluation_gate(
    context: dg.AssetExecutionContext, config: GateConfig, storage: StorageResource,
    mlflow: MlflowResource, coco_source: CocoSourceResource, device: DeviceResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    store, registry = storage.tables(), mlflow.registry()
    policy = config.policy()
    name, alias = config.champion(mlflow)
    chal_version = _challenger_of_run(context) or registry.alias_version(name, CHALLENGER)
    if chal_version is None:
        raise dg.Failure(f"no {CHALLENGER!r} version of {name!r}: materialize `challenger` first")
    champ_version = registry.alias_version(name, alias)
    images, annotations, heldout = _heldout_set(store)
    categories = pool_categories(store)
    with lease_device(device.device, device.lease_folder()) as dev:
        chal = _predict(registry, name, chal_version, images, dev, coco_source)
        champ = (_predict(registry, name, champ_version, images, dev, coco_source)
                 if champ_version is not None and champ_version != chal_version else None)
    comparison = compare_predictions(chal, champ, annotations, images, categories,
                                     image_ids=heldout, n_boot=config.n_boot, seed=config.seed)
    decision = decide(comparison, policy)
    if decision.promote:
        registry.move_alias(name, chal_version, alias)
    key = model_version_key(name, chal_version)
    champ_key = model_version_key(name, champ_version) if champ_version is not None else None
    history = _append_history(store, _history_row(registry, name, chal_version, champ_key,
                                                  comparison, decision, len(heldout)))
    deltas = per_class_deltas(comparison, dict(zip(categories["category_id"].to_pylist(),
                                                   categories["name"].to_pylist(), strict=True)))
    store.write("gate_class_deltas", pa.Table.from_pylist(
        [{"model_version": key, "champion_version": champ_key, **row} for row in deltas],
        schema=schemas.GATE_CLASS_DELTAS))
    _log_to_training_run(registry, name, chal_version, comparison, decision)
    context.log.info(f"gate {key} vs {champ_key}: {decision.reason}")
    yield dg.MaterializeResult(metadata={
        **table_metadata(history, store.uri("model_versions"), preview_rows=10),
        "challenger": key, "champion_before": champ_key or "none",
        "champion_after": key if decision.promote else (champ_key or "none"),
        "promoted": decision.promote, "reason": decision.reason,
        "heldout_images": len(heldout),
        "challenger_map": _num(comparison["challenger"]["map"]),
        "champion_map": _num((comparison.get("champion") or {}).get("map")),
        "delta_map": _num(comparison.get("delta_map")),
        "per_class_delta": dg.MetadataValue.md(markdown_preview(pa.Table.from_pylist(deltas), 50)
                                               if deltas else "_no champion to compare_"),
    })
    yield dg.AssetCheckResult(check_name="challenger_beats_champion", passed=decision.promote,
                              severity=dg.AssetCheckSeverity.WARN, description=decision.reason)
    yield dg.AssetCheckResult(
        check_name="heldout_large_enough", passed=len(heldout) >= policy.min_heldout_images,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(heldout)} labeled held-out images (at least "
                    f"{policy.min_heldout_images} needed to promote)")


def _challenger_of_run(context: dg.AssetExecutionContext) -> int | None:
    """The version the `challenger` step of this same run registered, if it ran here.

    Two train runs can overlap (labels arriving while one trains); each gate must judge the
    model its own run trained, not whatever the alias points to by the time its turn comes.
    """
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(CHALLENGER)), limit=50, ascending=False,
    ).records
    for record in records:
        if record.run_id == context.run_id:
            meta = record.asset_materialization.metadata
            return int(meta["model_version"].value.rpartition("-v")[2])
    return None


def _log_to_training_run(registry, name: str, version: int, comparison: dict, decision) -> None:
    """The held-out figures go to the challenger's training run too: one run, whole story."""
    run_id = registry.resolve(name, version=version).tags.get("training_run_id")
    if not run_id:
        return  # a version registered by hand has no training run
    TrackedRun(registry.client, run_id).log({
        "heldout_map": comparison["challenger"]["map"],
        "heldout_ap50": comparison["challenger"]["ap50"],
        "heldout_map_low": comparison["challenger"].get("map_low"),
        "heldout_map_high": comparison["challenger"].get("map_high"),
        "delta_map_vs_champion": comparison.get("delta_map"),
        "promoted": float(decision.promote)}, 0)
    registry.client.set_tag(run_id, "gate_reason", decision.reason[:5000])


def _heldout_set(store: TableStore) -> tuple[pa.Table, pa.Table, list[int]]:
    images, annotations, rows = _labeled(store, HELDOUT)
    return images, annotations, rows["image_id"].to_pylist()


def _predict(registry, name: str, version: int, images: pa.Table, dev, source) -> pa.Table:
    model = registry.load(name, version)
    predictions, errors = predict_images(model.extractor, images, ShardRef(name, version, HELDOUT),
                                         dev, s3=source.s3.settings())
    if errors:
        raise dg.Failure(f"{len(errors)} held-out images could not be predicted with "
                         f"{name} v{version}, e.g. {errors[0]['uri']}: {errors[0]['error']}")
    return predictions


def _history_row(registry, name, version, champ_key, comparison, decision, n_heldout) -> dict:
    tags = registry.resolve(name, version=version).tags
    chal, champ = comparison["challenger"], comparison.get("champion") or {}
    return {
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_version": model_version_key(name, version), "champion_version": champ_key,
        "label_batches": [b for b in tags.get("label_batches", "").split(",") if b],
        "train_images": int(tags.get("train_images", 0)),
        "train_boxes": int(tags.get("train_boxes", 0)), "heldout_images": n_heldout,
        "map": chal.get("map"), "map_low": chal.get("map_low"), "map_high": chal.get("map_high"),
        "champion_map": champ.get("map"), "delta_map": comparison.get("delta_map"),
        "delta_low": comparison.get("delta_low"), "delta_high": comparison.get("delta_high"),
        "ap50": chal.get("ap50"), "promoted": decision.promote, "reason": decision.reason,
    }


def _append_history(store: TableStore, row: dict) -> pa.Table:
    try:
        history = store.read("model_versions")
    except FileNotFoundError:
        history = schemas.MODEL_VERSIONS.empty_table()
    table = pa.concat_tables([history, pa.Table.from_pylist([row], schema=schemas.MODEL_VERSIONS)])
    table = table.cast(schemas.MODEL_VERSIONS)  # a history written before the docs gets them
    store.write("model_versions", table)
    return table


def _num(value) -> float | str:
    return round(float(value), 4) if value is not None else "n/a"
