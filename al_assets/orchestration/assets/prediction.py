"""Prediction assets, partitioned by model version x shard; one GPU slot (pool ``gpu``) each."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.detection.compatibility import check_categories
from al_assets.core.detection.extractor import Postprocess
from al_assets.core.prediction import validation
from al_assets.core.prediction.devices import lease_device
from al_assets.core.prediction.loader import ShardImages
from al_assets.core.prediction.runner import (
    PredictOptions,
    ShardRef,
    default_workers,
    errors_table,
    predict_shard,
)
from al_assets.core.prediction.storage import StoragePolicy
from al_assets.core.progress import throttled
from al_assets.core.defaults import (
    STORE_DISTRIBUTION,
    STORE_MAX_DETECTIONS,
    STORE_MIN_SCORE,
    STORE_TOP_K,
)
from al_assets.core.sharding import batch_of_shard
from al_assets.core.storage import TableStore
from al_assets.core.pool import pool_categories
from al_assets.orchestration.metadata import column_schema, table_metadata
from al_assets.orchestration.partitions import (
    MODEL_VERSION,
    SHARD,
    parse_model_version_key,
    prediction_partitions,
)
from al_assets.orchestration.resources import (
    CocoSourceResource,
    DeviceResource,
    MlflowResource,
    StorageResource,
)

PREDICTION = "prediction"
GPU_POOL = "gpu"


class PredictionConfig(dg.Config):
    batch_size: int = 8
    """Images per forward pass (the notebook used 64 on a T4)."""
    num_workers: int | None = None
    """DataLoader worker processes decoding ahead; default 2 on a GPU, 0 on the CPU (forking
    workers on a CPU-only host costs more than decoding in line: benchmarks/README.md)."""
    mixed_precision: bool = True
    """float16 autocast on CUDA (ignored on CPU)."""
    score_thresh: float | None = None
    """Drop boxes below this detector score (default: the model's own, 0.01 for SSD)."""
    topk_candidates: int | None = None
    """Candidates per class before NMS (SSD; the notebook used 90)."""
    detections_per_img: int | None = None
    """Keep at most this many boxes per image (default: the model's own)."""
    store_min_score: float = STORE_MIN_SCORE
    """Boxes below this detector score are not stored (0 keeps all); keep it at or below the
    views' min_score. README "Storage" gives the bytes per image this costs."""
    store_max_detections: int | None = STORE_MAX_DETECTIONS
    """Store at most this many boxes per image, highest scores first (None: no cap)."""
    store_top_k: int | None = STORE_TOP_K
    """Entries of each box's stored top-k label_ids/scores (None: the extractor's 5)."""
    store_distribution: bool = STORE_DISTRIBUTION
    """Keep the full class distribution per box (exact entropy; without it entropy is the
    top-k lower bound)."""

    def storage_policy(self) -> StoragePolicy:
        return StoragePolicy(self.store_min_score, self.store_max_detections, self.store_top_k,
                             self.store_distribution)


def storage_partition(context: dg.AssetExecutionContext) -> str:
    """``<model_version>/<shard>``: one folder per model version under each table."""
    keys = context.partition_key.keys_by_dimension
    return f"{keys[MODEL_VERSION]}/{keys[SHARD]}"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "detections",
            description="One row per image: its detections with box, score, label and the "
            "class distribution (top-k and full), from one registered model version.",
            deps=[
                dg.AssetDep("images", partition_mapping=dg.AllPartitionMapping()),
                "registered_model",
            ],
            group_name=PREDICTION, kinds={"parquet", "pytorch"}, owners=["team:ml"],
        ),
        dg.AssetSpec(
            "prediction_errors",
            description="Images of the shard that could not be read, decoded or predicted.",
            group_name=PREDICTION, kinds={"parquet"}, owners=["team:ml"],
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(name, asset="detections", blocking=True, description=doc)
        for name, doc in (
            ("schema_matches", "The written Parquet file has the documented DETECTIONS schema."),
            ("distributions_sum_to_one", "Every stored class distribution sums to 1."),
            ("no_duplicate_detections", "No image twice; no box+label twice in one image."),
            ("every_image_accounted_for", "Every shard image has a prediction or an error row."),
        )
    ],
    partitions_def=prediction_partitions,
    pool=GPU_POOL,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def detections(
    context: dg.AssetExecutionContext,
    config: PredictionConfig,
    storage: StorageResource,
    coco_source: CocoSourceResource,
    mlflow: MlflowResource,
    device: DeviceResource,
):
    keys = context.partition_key.keys_by_dimension
    model_name, version = parse_model_version_key(keys[MODEL_VERSION])
    shard = keys[SHARD]
    store = storage.tables()
    model = mlflow.registry().load(model_name, version)  # the exact version, never the alias
    _check_model_fits_dataset(store, model, keys[MODEL_VERSION])
    extractor = model.extractor.reconfigured(
        with_distribution=config.store_distribution,
        postprocess=Postprocess(config.score_thresh, config.topk_candidates,
                                config.detections_per_img))
    images = _shard_images(store, shard)
    partition = storage_partition(context)
    with lease_device(device.device, device.lease_folder()) as dev:
        extractor.to(dev)
        options = PredictOptions(config.batch_size, default_workers(config.num_workers, dev),
                                 config.mixed_precision, storage=config.storage_policy())
        with store.writer("detections", schemas.DETECTIONS, partition) as writer:
            stats = predict_shard(
                images, extractor, writer, ShardRef(model_name, version, shard), device=dev,
                options=options, dataset=ShardImages(images, coco_source.s3.settings()),
                progress=throttled(context.log.info, f"predicting {partition} on {dev}"),
            )
    errors = errors_table(stats.error_rows)
    errors_uri = store.write("prediction_errors", errors, partition)
    for row in stats.error_rows[:20]:
        context.log.warning(f"image {row['image_id']} ({row['stage']}): {row['error']}")
    yield dg.MaterializeResult(
        asset_key="detections",
        metadata={
            "dagster/row_count": stats.images,
            "dagster/column_schema": column_schema(schemas.DETECTIONS),  # streamed: no table
            "dagster/uri": store.uri("detections", partition),
            "images": stats.images,
            "detections": stats.detections,
            "detections_not_stored": stats.detections_dropped,
            "store_min_score": config.store_min_score,
            "errors": stats.errors,
            "images_per_second": round(stats.images_per_second, 2),
            "device": str(dev),
            "model_uri": f"models:/{model_name}/{version}",
        },
    )
    yield dg.MaterializeResult(
        asset_key="prediction_errors",
        metadata=table_metadata(errors, errors_uri),
    )
    yield from _checks(store.read("detections", partition), images["image_id"], errors)


def _checks(written, image_ids, errors):
    """Blocking checks: a failure stops the scores of this partition in the same run."""
    outcomes = {
        "schema_matches": validation.schema_matches(written),
        "distributions_sum_to_one": validation.distributions_sum_to_one(written),
        "no_duplicate_detections": validation.no_duplicate_detections(written),
        "every_image_accounted_for": validation.every_image_accounted_for(
            image_ids.combine_chunks(), written, errors),
    }
    for name, outcome in outcomes.items():
        yield dg.AssetCheckResult(
            asset_key="detections", check_name=name, passed=outcome.passed,
            description=outcome.description, metadata=outcome.metadata,
        )


def _shard_images(store: TableStore, shard: str) -> pa.Table:
    """The shard's images, by image_id: one read per run with the shard predicate pushed down.

    Sorted so that the written row groups cover disjoint id ranges: lookups by image_id (the
    queue's candidates) then skip every row group without one (TableStore.read_where)."""
    images = store.read("images", batch_of_shard(shard),
                        columns=["image_id", "uri", "width", "height", "shard"],
                        where=pc.field("shard") == shard)
    return images.sort_by("image_id")


def _check_model_fits_dataset(store: TableStore, model, model_version: str) -> None:
    dataset = pool_categories(store)
    check_categories(
        model.extractor.category_ids, model.category_names, dataset, model=model_version
    )
