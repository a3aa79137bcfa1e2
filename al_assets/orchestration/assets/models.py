"""Model assets: the detector and its class-score extractor, registered in MLflow."""

import tempfile
from pathlib import Path

import dagster as dg

from al_assets.core.defaults import DEFAULT_ARCH, DETECTOR_MODEL
from al_assets.core.detection.compatibility import check_categories
from al_assets.core.detection.factory import load_checkpoint
from al_assets.core.detection.sources import resolve_checkpoint
from al_assets.core.pool import pool_categories
from al_assets.orchestration.partitions import (
    MODEL_VERSION,
    add_partitions,
    model_version_key,
)
from al_assets.orchestration.resources import MlflowResource, StorageResource

MODELS = "models"


class RegistrationConfig(dg.Config):
    weights: str = "demo"
    """demo (the shipped demo detector) | a checkpoint path | torchvision weights (DEFAULT, COCO_V1)."""
    arch: str = DEFAULT_ARCH
    """Architecture for torchvision weights (checkpoints say their own)."""
    detector_name: str = DETECTOR_MODEL
    class_scores_name: str | None = None
    """Default: the mlflow resource's model_name (the model the sensors and views follow)."""
    alias: str | None = None
    """Alias moved to the new versions (default: the mlflow resource's alias); prediction pins
    exact versions, never the alias."""
    topk: int = 5
    """Classes kept per box in label_ids/scores (the full distribution is kept separately)."""
    training_data: str = "demo COCO shapes"


@dg.asset(
    group_name=MODELS,
    kinds={"mlflow", "pytorch"},
    owners=["team:ml"],
    deps=["categories"],
    description="Register the detector and its class-score extractor (pyfunc) in MLflow.",
)
def registered_model(
    context: dg.AssetExecutionContext,
    config: RegistrationConfig,
    mlflow: MlflowResource,
    storage: StorageResource,
) -> dg.MaterializeResult:
    registry = mlflow.registry()
    name, alias = config.class_scores_name or mlflow.model_name, config.alias or mlflow.alias
    with tempfile.TemporaryDirectory() as workdir:
        path, source = resolve_checkpoint(config.weights, config.arch, Path(workdir))
        checkpoint = load_checkpoint(path)
        warnings = _check_against_dataset(storage, checkpoint, name)
        for warning in warnings:
            context.log.warning(warning)
        detector, scores = registry.register_detector(
            path,
            detector_name=config.detector_name,
            class_scores_name=name,
            alias=alias,
            tags=_tags(checkpoint, source, config.training_data),
            params={"arch": checkpoint.arch, "num_classes": checkpoint.num_classes,
                    "topk": config.topk},
            metrics=_numeric(checkpoint.meta.get("eval", {})),
            topk=config.topk,
        )
    key = model_version_key(scores.name, scores.version)
    add_partitions(context.instance, MODEL_VERSION, [key])
    return dg.MaterializeResult(
        metadata={
            "model_uri": scores.uri,
            "detector_uri": detector.uri,
            "version": scores.version,
            "alias": alias,
            "model_version_partition": key,
            "weights_source": source,
            "categories": ", ".join(checkpoint.category_names or ()),
            "warnings": "\n".join(warnings) or "none",
            "registered_models": _models_table(registry.list_models()),
            **{f"eval/{k}": v for k, v in _numeric(checkpoint.meta.get("eval", {})).items()},
        }
    )


def _check_against_dataset(storage: StorageResource, checkpoint, model: str) -> list[str]:
    store = storage.tables()
    if not store.partitions("categories"):
        return ["no dataset ingested yet: categories not checked"]
    dataset = pool_categories(store)
    return check_categories(
        checkpoint.category_ids or (), checkpoint.category_names or (), dataset, model=model
    )


def _tags(checkpoint, source: str, training_data: str) -> dict[str, str]:
    return {
        "architecture": str(checkpoint.arch),
        "category_ids": ",".join(str(i) for i in checkpoint.category_ids or ()),
        "category_names": ",".join(checkpoint.category_names or ()),
        "weights_source": source,
        "training_data": str(checkpoint.meta.get("training_data", training_data)),
    }


def _numeric(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def _models_table(rows: list[dict]) -> dg.TableMetadataValue:
    columns = ["name", "version", "aliases", "uri", "architecture"]
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: str(r[c]) for c in columns}) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
    )
