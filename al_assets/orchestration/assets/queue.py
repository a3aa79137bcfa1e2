"""The labeling queue: top-N images by a strategy, exported for COCO tools and Label Studio."""

import json
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.coco.categories import unique_categories
from al_assets.core.queue import (
    coco_preannotations,
    duplicate_clusters,
    label_studio_config,
    label_studio_tasks,
    perceptual_hashes,
    queue_csv,
    select_queue,
)
from al_assets.core.prediction.arrow import confident_detections
from al_assets.core.scoring.views import DEFAULT_MIN_SCORE
from al_assets.core.storage import TableStore
from al_assets.orchestration.automation import VIEW_REFRESH
from al_assets.orchestration.champion import ChampionConfig, champion_key, read_partitions
from al_assets.orchestration.metadata import table_metadata
from al_assets.orchestration.resources import CocoSourceResource, MlflowResource, StorageResource

CANDIDATE_FACTOR = 5  # rank this many x size before caps and de-duplication thin them out


class QueueConfig(ChampionConfig):
    strategy: str = "entropy"
    """least_confidence | margin | ratio | entropy (image_rankings' measures)."""
    size: int = 50
    max_per_class: int | None = None
    """Class balancing: at most this many images per (most frequent) predicted class."""
    deduplicate: bool = True
    """Skip near-identical images (difference hash within dedup_distance bits)."""
    dedup_distance: int = 4
    exclude_labeled: bool = False
    """Skip images that already have ground-truth annotations in the pool."""
    preannotation_score: float = 0.3
    """Only boxes at or above this detector score go into the exports as pre-annotations."""
    min_score: float = DEFAULT_MIN_SCORE
    """Detections below it are noise (class balancing ignores them); image_scores' value."""


@dg.asset(
    group_name="uncertainty", kinds={"parquet", "json"}, deps=["image_rankings"],
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
    key = champion_key(config, mlflow)
    rankings = store.read("image_rankings")
    ranked = rankings.filter(pc.equal(rankings["measure"], config.strategy))
    candidates = ranked.slice(0, config.size * CANDIDATE_FACTOR + _labeled_count(store, config))
    predictions = confident_detections(
        _predictions_of(store, key, candidates["image_id"]), config.min_score)
    duplicates = _duplicates(candidates, coco_source, config, context) if config.deduplicate else None
    queue = select_queue(
        candidates, predictions, size=config.size, max_per_class=config.max_per_class,
        exclude_image_ids=_labeled_ids(store) if config.exclude_labeled else (),
        duplicates=duplicates,
    )
    categories = unique_categories(store.read_many(
        "categories", store.partitions("categories"), schema=schemas.CATEGORIES))
    images = store.read_many("images", store.partitions("images"), schema=schemas.IMAGES)
    files = _export(store, queue, predictions, images, categories, key, config)
    uri = store.write("labeling_queue", queue)
    yield _size_check(queue.num_rows, config.size, ranked.num_rows, candidates.num_rows)
    yield dg.MaterializeResult(
        metadata={
            **table_metadata(queue, uri, preview_rows=10),
            "model_version": key, "strategy": config.strategy, "requested_size": config.size,
            **{f"export/{name}": dg.MetadataValue.path(path) for name, path in files.items()},
        }
    )


def _size_check(rows: int, size: int, ranked: int, candidates: int) -> dg.AssetCheckResult:
    """Short only when the candidates ran out (caps, duplicates, exclusions took the rest)."""
    exhausted = candidates >= ranked
    passed = rows == size or (rows < size and exhausted)
    return dg.AssetCheckResult(
        check_name="queue_size_as_asked", passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{rows} of {size} asked ({ranked} ranked images, {candidates} candidates)",
        metadata={"rows": rows, "asked": size, "ranked_images": ranked},
    )


def _predictions_of(store: TableStore, key: str, image_ids: pa.ChunkedArray) -> pa.Table:
    wanted = pa.array(image_ids.to_pylist(), pa.int64())
    parts = [t.filter(pc.is_in(t["image_id"], wanted))
             for t in read_partitions(store, "detections", store.partitions("detections", under=key))]
    return pa.concat_tables(parts) if parts else schemas.PREDICTIONS.empty_table()


def _duplicates(candidates: pa.Table, source: CocoSourceResource, config: QueueConfig, context):
    uris = candidates["uri"].to_pylist()
    hashes, failures = perceptual_hashes(uris, source.objects())
    for failure in failures[:10]:
        context.log.warning(f"not de-duplicated: {failure.uri}: {failure.error}")
    by_id = {i: hashes[u] for i, u in zip(candidates["image_id"].to_pylist(), uris, strict=True)
             if u in hashes}
    return duplicate_clusters(by_id, max_distance=config.dedup_distance)


def _labeled_ids(store: TableStore) -> set[int]:
    table = store.read_many("annotations", store.partitions("annotations"), ["image_id"],
                            schema=schemas.ANNOTATIONS)
    return set(table["image_id"].to_pylist())


def _labeled_count(store: TableStore, config: QueueConfig) -> int:
    return len(_labeled_ids(store)) if config.exclude_labeled else 0


def _export(store, queue, predictions, images, categories, key, config) -> dict[str, str]:
    coco = coco_preannotations(queue, predictions, images, categories,
                               score_thresh=config.preannotation_score)
    tasks = label_studio_tasks(queue, predictions, categories, model_version=key,
                               score_thresh=config.preannotation_score)
    return {
        "coco_json": store.write_file(json.dumps(coco).encode(), "queue", "labeling_queue.coco.json"),
        "label_studio_tasks": store.write_file(
            json.dumps(tasks, indent=1).encode(), "queue", "label_studio_tasks.json"),
        "label_studio_config": store.write_file(
            label_studio_config(categories).encode(), "queue", "label_studio_config.xml"),
        "csv": store.write_file(queue_csv(queue, categories), "queue", "labeling_queue.csv"),
    }
