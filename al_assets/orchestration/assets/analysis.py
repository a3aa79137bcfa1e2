"""Analysis assets: confused class pairs, class frequency and imbalance, mAP per model version."""

import dagster as dg

from al_assets.core import schemas
from al_assets.core.analysis.confused_pairs import confused_pairs as find_confused_pairs
from al_assets.core.analysis.evaluation import version_comparison
from al_assets.core.analysis.frequency import class_frequency as count_classes
from al_assets.core.analysis.frequency import imbalance_summary
from al_assets.core.analysis.versions import evaluate_versions, off_diagonal
from al_assets.core.defaults import CONFIDENT_SCORE
from al_assets.core.scoring.views import score_at_least
from al_assets.core.splits import HELDOUT, ids_in
from al_assets.core.pool import pool_categories, pool_labels, pool_table, read_splits
from al_assets.orchestration.automation import VIEW_REFRESH
from al_assets.orchestration.champion import ChampionConfig, champion_partitions
from al_assets.orchestration.metadata import markdown_preview, table_metadata
from al_assets.orchestration.partitions import MODEL_VERSION
from al_assets.orchestration.resources import MlflowResource, StorageResource

ANALYSIS = "analysis"


class ConfusedPairsConfig(dg.Config):
    unordered: bool = False
    """Merge (a, b) with (b, a); the notebook kept them apart."""
    limit: int | None = None


@dg.asset(
    group_name=ANALYSIS, kinds={"parquet"}, deps=["least_margin"],
    automation_condition=VIEW_REFRESH,
    description="Class pairs the model hesitates between (count, average margin), computed "
    "over the least-margin detections like the notebook.",
)
def confused_pairs(config: ConfusedPairsConfig, storage: StorageResource) -> dg.MaterializeResult:
    store = storage.tables()
    pairs = find_confused_pairs(
        store.read("least_margin"), pool_categories(store), unordered=config.unordered,
        limit=config.limit,
    )
    return dg.MaterializeResult(metadata=table_metadata(pairs, store.write("confused_pairs", pairs),
                                                        preview_rows=15))


class FrequencyConfig(ChampionConfig):
    score_thresh: float = CONFIDENT_SCORE
    """Count predictions at or above this detector score."""


@dg.asset(
    group_name=ANALYSIS, kinds={"parquet"}, deps=["box_scores", "annotations"],
    automation_condition=VIEW_REFRESH,
    description="Predicted vs ground-truth count per class and the imbalance ratio.",
)
def class_frequency(
    config: FrequencyConfig, storage: StorageResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    store = storage.tables()
    key, partitions = champion_partitions(config, mlflow, store, "box_scores")
    boxes = store.read_where("box_scores", partitions, score_at_least(config.score_thresh),
                             ["label_id", "score"], schema=schemas.BOX_SCORES)
    annotations = pool_table(store, "annotations", ["category_id", "iscrowd"])
    table = count_classes(boxes, annotations if annotations.num_rows else None,
                          pool_categories(store), score_thresh=config.score_thresh)
    summary = imbalance_summary(table)
    return dg.MaterializeResult(metadata={
        **table_metadata(table, store.write("class_frequency", table), preview_rows=20),
        "model_version": key,
        "imbalance": dg.MetadataValue.json({k: v for k, v in summary.items()}),
    })


class EvaluationConfig(ChampionConfig):
    iou_threshold: float = 0.5
    score_thresh: float = CONFIDENT_SCORE
    """Detections at or above this score enter the confusion matrix (mAP uses all)."""


@dg.multi_asset(
    specs=[
        dg.AssetSpec("model_evaluation", group_name=ANALYSIS, kinds={"parquet"},
                     deps=["detections", "annotations", "splits"],
                     automation_condition=VIEW_REFRESH,
                     description="COCO mAP (pycocotools' numbers) of every model version on the "
                     "labeled held-out images of the pool, per category, so versions can be "
                     "compared."),
        dg.AssetSpec("confusion_matrix", group_name=ANALYSIS, kinds={"parquet"},
                     deps=["detections", "annotations", "splits"],
                     automation_condition=VIEW_REFRESH,
                     description="IoU-matched ground truth x predicted class counts of the "
                     "champion on the labeled held-out images."),
    ],
)
def model_evaluation(
    context: dg.AssetExecutionContext, config: EvaluationConfig, storage: StorageResource,
    mlflow: MlflowResource,
):
    """COCO mAP, AP50/AP75 and per-class AP of every model version on the fixed held-out split.

    Evaluated images: the *labeled held-out* images of SPLITS (never trained on, fixed by
    image id, so versions and rounds are compared on the same images) that have a prediction
    row of the version and at least one annotation (al_assets.core.analysis.evaluation).
    Versions without a prediction on those images get no rows. The numbers are COCOeval's;
    detections are read shard by shard (image id, box, score and label only: not the
    distributions) and matched as they come, so memory does not grow with the pool. The
    confusion matrix is the champion's on the same images, summed over shards.
    """
    store = storage.tables()
    labeled = ids_in(read_splits(store), HELDOUT, labeled=True)
    champion, _ = champion_partitions(config, mlflow, store, "detections")
    found = evaluate_versions(
        store, context.instance.get_dynamic_partitions(MODEL_VERSION), champion, labeled,
        pool_labels(store)[0], pool_table(store, "images", ["image_id", "width", "height"]),
        pool_categories(store), iou_threshold=config.iou_threshold,
        score_thresh=config.score_thresh)
    evaluation, matrix = found.evaluation, found.matrix
    comparison = version_comparison(evaluation)
    yield dg.MaterializeResult(asset_key="model_evaluation", metadata={
        **table_metadata(evaluation, store.write("model_evaluation", evaluation)),
        # versions side by side (oldest first; delta = newest - previous), not stacked
        "preview": dg.MetadataValue.md(markdown_preview(comparison, comparison.num_rows)),
        "map_by_version": dg.MetadataValue.json(found.summary),
        "heldout_images": len(labeled),
    })
    yield dg.MaterializeResult(asset_key="confusion_matrix", metadata={
        **table_metadata(matrix, store.write("confusion_matrix", matrix), preview_rows=20),
        "model_version": champion,
        "top_confusions": dg.MetadataValue.md(markdown_preview(off_diagonal(matrix), 10)),
    })
