"""Analysis assets: confused class pairs, class frequency and imbalance, mAP per model version."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.analysis.confused_pairs import confused_pairs as find_confused_pairs
from al_assets.core.analysis.evaluation import (
    evaluate_predictions,
    evaluation_table,
    version_comparison,
)
from al_assets.core.analysis.frequency import class_frequency as count_classes
from al_assets.core.analysis.frequency import imbalance_summary
from al_assets.core.analysis.matching import confusion_table, match_detections
from al_assets.core.splits import HELDOUT, ids_in
from al_assets.core.storage import TableStore
from al_assets.orchestration.assets.labels import pool_categories, pool_labels, read_splits
from al_assets.orchestration.automation import VIEW_REFRESH
from al_assets.orchestration.champion import ChampionConfig, champion_partitions, read_partitions
from al_assets.orchestration.metadata import markdown_preview, table_metadata
from al_assets.orchestration.partitions import MODEL_VERSION
from al_assets.orchestration.resources import MlflowResource, StorageResource

ANALYSIS = "analysis"


def pool_table(store: TableStore, name: str, columns: list[str] | None = None) -> pa.Table:
    return store.read_many(name, store.partitions(name), columns,
                           schema=getattr(schemas, name.upper()))


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
    score_thresh: float = 0.3
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
    boxes = pa.concat_tables(list(read_partitions(store, "box_scores", partitions,
                                                  ["label_id", "score"])) or
                             [schemas.BOX_SCORES.empty_table().select(["label_id", "score"])])
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
    score_thresh: float = 0.3
    """Detections at or above this score enter the confusion matrix (mAP uses all)."""


@dg.multi_asset(
    specs=[
        dg.AssetSpec("model_evaluation", group_name=ANALYSIS, kinds={"parquet"},
                     deps=["detections", "annotations", "splits"],
                     automation_condition=VIEW_REFRESH,
                     description="COCO mAP (pycocotools) of every model version on the labeled "
                     "held-out images of the pool, per category, so versions can be compared."),
        dg.AssetSpec("confusion_matrix", group_name=ANALYSIS, kinds={"parquet"},
                     deps=["detections", "annotations"],
                     automation_condition=VIEW_REFRESH,
                     description="IoU-matched ground truth x predicted class counts (champion)."),
    ],
)
def model_evaluation(
    context: dg.AssetExecutionContext, config: EvaluationConfig, storage: StorageResource,
    mlflow: MlflowResource,
):
    store = storage.tables()
    categories, images = pool_categories(store), pool_table(store, "images")
    annotations, _ = pool_labels(store)
    labeled = ids_in(read_splits(store), HELDOUT, labeled=True)
    champion, _ = champion_partitions(config, mlflow, store, "detections")
    rows, summary, matrix = [], {}, schemas.CONFUSION_MATRIX.empty_table()
    for version in context.instance.get_dynamic_partitions(MODEL_VERSION):
        predictions = _labeled_predictions(store, version, labeled)
        if predictions.num_rows == 0:
            continue
        result = evaluate_predictions(predictions, annotations, images, categories)
        rows.append(evaluation_table(result, categories, version))
        summary[version] = {**{k: _rounded(result[k]) for k in ("map", "ap50", "ap75")},
                            "num_images": result["num_images"]}
        if version == champion:
            matched = match_detections(predictions, annotations, iou_threshold=config.iou_threshold,
                                       score_thresh=config.score_thresh)
            matrix = confusion_table(matched, categories)
    evaluation = pa.concat_tables(rows) if rows else schemas.MODEL_EVALUATION.empty_table()
    comparison = version_comparison(evaluation)
    yield dg.MaterializeResult(asset_key="model_evaluation", metadata={
        **table_metadata(evaluation, store.write("model_evaluation", evaluation)),
        # versions side by side (oldest first; delta = newest - previous), not stacked
        "preview": dg.MetadataValue.md(markdown_preview(comparison, comparison.num_rows)),
        "map_by_version": dg.MetadataValue.json(summary),
        "heldout_images": len(labeled),
    })
    yield dg.MaterializeResult(asset_key="confusion_matrix", metadata={
        **table_metadata(matrix, store.write("confusion_matrix", matrix), preview_rows=20),
        "model_version": champion,
        "top_confusions": dg.MetadataValue.md(markdown_preview(_off_diagonal(matrix), 10)),
    })


def _labeled_predictions(store: TableStore, version: str, labeled: pa.Array) -> pa.Table:
    parts = [t.filter(pc.is_in(t["image_id"], labeled)) for t in
             read_partitions(store, "detections", store.partitions("detections", under=version))]
    return pa.concat_tables(parts) if parts else schemas.PREDICTIONS.empty_table()


def _off_diagonal(matrix: pa.Table) -> pa.Table:
    if matrix.num_rows == 0:
        return matrix
    differs = pc.invert(pc.equal(pc.fill_null(matrix["gt_category_id"], -1),
                                 pc.fill_null(matrix["pred_category_id"], -1)))
    return matrix.filter(differs).sort_by([("count", "descending")])


def _rounded(value: float | None) -> float | None:
    """3 decimals, like the previews: the stored table keeps full precision."""
    return None if value is None else round(value, 3)
