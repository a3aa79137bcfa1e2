"""The labeling queue: top-N images by a strategy, exported for COCO tools and Label Studio."""

import json
import os
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from al_assets.core import schemas
from al_assets.core.loop.selection import (
    SelectionConfig,
    class_ap_of,
    class_weights,
    exclusions,
    labeled_box_counts,
    embedding_matrix,
    select_from_store,
)
from al_assets.core.queue import (
    coco_preannotations,
    label_studio_config,
    label_studio_tasks,
    perceptual_hashes,
    queue_csv,
)
from al_assets.core.prediction.storage import predictions_of
from al_assets.core.queue.exports import (
    DEFAULT_IMAGE_URLS,
    DEFAULT_PRESIGN_HOURS,
    ImageUrls,
    category_names,
)
from al_assets.core.defaults import CONFIDENT_SCORE, DEFAULT_MIN_SCORE
from al_assets.core.storage import TableStore
from al_assets.orchestration.automation import VIEW_REFRESH
from al_assets.core.pool import pool_categories, pool_labels, read_splits
from al_assets.orchestration.champion import ChampionConfig, champion_key
from al_assets.orchestration.config import dataclass_of, derived_config
from al_assets.orchestration.metadata import table_metadata
from al_assets.orchestration.resources import CocoSourceResource, MlflowResource, StorageResource

IMAGE_URLS_ENV = "AL_ASSETS_IMAGE_URLS"


SelectionOptions = derived_config("SelectionOptions", SelectionConfig, base=ChampionConfig)
"""SelectionConfig's fields (names, defaults, help) as run config, on top of the champion's."""


class QueueConfig(SelectionOptions):
    """What to pick (SelectionConfig's fields) and how the exports refer to it."""

    preannotation_score: float = CONFIDENT_SCORE
    """Only boxes at or above this detector score go into the exports as pre-annotations."""
    min_score: float = DEFAULT_MIN_SCORE
    """Detections below it are noise (class balancing ignores them); image_scores' value."""
    image_urls: str = Field(
        default_factory=lambda: os.environ.get(IMAGE_URLS_ENV, DEFAULT_IMAGE_URLS))
    """How Label Studio tasks refer to images: path | local-files | s3 | presigned (core
    ImageUrls; docs/label-studio.md). Default: env AL_ASSETS_IMAGE_URLS, else path, so that
    automated refreshes, which run with the defaults, export loadable tasks too."""
    local_files_root: str | None = None
    """local-files: the folder Label Studio serves as LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    (default: that environment variable)."""
    presign_hours: int = DEFAULT_PRESIGN_HOURS
    """presigned: hours the URLs work (at most 168, S3's limit); signed with coco_source's S3."""

    def selection(self) -> SelectionConfig:
        return dataclass_of(self, SelectionConfig)

    def task_images(self) -> ImageUrls:
        return ImageUrls(self.image_urls, self.local_files_root, self.presign_hours)


@dg.asset(
    group_name="uncertainty", kinds={"parquet", "json"},
    deps=["image_rankings", "splits", "model_evaluation"],
    check_specs=[dg.AssetCheckSpec("queue_size_as_asked", asset="labeling_queue",
                                   description="The queue has `size` images, or every "
                                   "eligible image when fewer are left.")],
    automation_condition=VIEW_REFRESH,
    description="The images to label next, with COCO, Label Studio and CSV exports.",
)
def labeling_queue(
    context: dg.AssetExecutionContext, config: QueueConfig, storage: StorageResource,
    mlflow: MlflowResource, coco_source: CocoSourceResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    store = storage.tables()
    urls = config.task_images()  # a bad image_urls setting fails before any work
    key = champion_key(config, mlflow)
    splits, plan = read_splits(store), config.selection().plan
    excluded = exclusions(splits, config.exclude_labeled)
    weights = queue_class_weights(store, key, config.selection())
    embeddings = plan.diverse or plan.typical
    labeled = embedding_matrix(_predictions_of(
        store, key, splits.filter(splits["labeled"])["image_id"].combine_chunks(),
        embeddings=True)) if plan.typical else None  # the regions the labels cover
    selected = select_from_store(
        store.read("image_rankings"),
        lambda ids: _predictions_of(store, key, ids, embeddings=embeddings),
        config.selection(), excluded=excluded, min_score=config.min_score,
        hashes_of=lambda candidates: _hashes(candidates, coco_source, context),
        class_weights=weights, labeled_embeddings=labeled)
    queue, categories = selected.queue, pool_categories(store)
    images = store.read_where("images", store.partitions("images"),
                              pc.field("image_id").isin(queue["image_id"].combine_chunks()),
                              schema=schemas.IMAGES)  # the exports need the queue's rows only
    files = _export(store, queue, selected.predictions, images, categories, key, config,
                    urls, coco_source)
    uri = store.write("labeling_queue", queue)
    yield _size_check(queue.num_rows, config.size, selected.eligible)
    yield dg.MaterializeResult(
        metadata={
            **table_metadata(queue, uri, preview_rows=10, names=category_names(categories),
                             root=coco_source.image_root()),
            "model_version": key, "strategy": config.strategy, "requested_size": config.size,
            "image_urls": config.image_urls,
            "class_weights": dg.MetadataValue.json({str(k): round(v, 3)
                                                    for k, v in weights.items()}),
            "excluded_images": len(excluded),
            **{f"export/{name}": dg.MetadataValue.path(path) for name, path in files.items()},
        }
    )


def queue_class_weights(store: TableStore, key: str, selection: SelectionConfig) -> dict[int, float]:
    """Weights of a calibrated/rare strategy: the champion's per-class AP in model_evaluation
    (when that view exists) and the labeled boxes per class."""
    plan = selection.plan
    if not (plan.calibrated or plan.rare):
        return {}
    try:
        class_ap = class_ap_of(store.read("model_evaluation"), key)
    except FileNotFoundError:  # not evaluated yet: calibrated weights fall back to 1
        class_ap = None
    annotations, _ = pool_labels(store)
    return class_weights(plan, pool_categories(store)["category_id"].to_pylist(),
                         class_ap=class_ap, labeled_boxes=labeled_box_counts(annotations))


def _size_check(rows: int, size: int, eligible: int) -> dg.AssetCheckResult:
    """Short only when fewer eligible images exist; caps or duplicates thinning it warn."""
    passed = rows == min(size, eligible)
    return dg.AssetCheckResult(
        check_name="queue_size_as_asked", passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{rows} of {size} asked ({eligible} eligible ranked images)",
        metadata={"rows": rows, "asked": size, "eligible_images": eligible},
    )


PREDICTION_COLUMNS = ["image_id", "uri", "width", "height", "model_name", "model_version",
                      "shard", "detections"]
"""What selection (box_scores, class labels) and the exports (sizes, boxes) read."""


def _predictions_of(store: TableStore, key: str, image_ids: pa.Array, *,
                    embeddings: bool) -> pa.Table:
    """The candidates' DETECTIONS rows only, their columns only (embeddings: for diversity
    alone, they are most of a row's bytes)."""
    columns = PREDICTION_COLUMNS + (["embedding"] if embeddings else [])
    return predictions_of(store, key, image_ids, columns)


def _hashes(candidates: pa.Table, source: CocoSourceResource, context) -> dict[int, int]:
    uris = candidates["uri"].to_pylist()
    hashes, failures = perceptual_hashes(uris, source.objects())
    for failure in failures[:10]:
        context.log.warning(f"not de-duplicated: {failure.uri}: {failure.error}")
    return {i: hashes[u] for i, u in zip(candidates["image_id"].to_pylist(), uris, strict=True)
            if u in hashes}


def _export(store, queue, predictions, images, categories, key, config, urls: ImageUrls,
            source: CocoSourceResource) -> dict[str, str]:
    coco = coco_preannotations(queue, predictions, images, categories,
                               score_thresh=config.preannotation_score)
    tasks = label_studio_tasks(queue, predictions, categories, model_version=key,
                               score_thresh=config.preannotation_score, image_urls=urls,
                               objects=source.objects())  # the images' S3 signs their URLs
    return {
        "coco_json": store.write_file(json.dumps(coco).encode(), "queue", "labeling_queue.coco.json"),
        "label_studio_tasks": store.write_file(
            json.dumps(tasks, indent=1).encode(), "queue", "label_studio_tasks.json"),
        "label_studio_config": store.write_file(
            label_studio_config(categories).encode(), "queue", "label_studio_config.xml"),
        "csv": store.write_file(queue_csv(queue, categories), "queue", "labeling_queue.csv"),
    }
