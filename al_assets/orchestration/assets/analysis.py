"""Analysis assets: confused class pairs, class frequency and imbalance, mAP per model version."""

from collections.abc import Callable, Iterator

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.analysis.confused_pairs import category_table
from al_assets.core.analysis.confused_pairs import confused_pairs as find_confused_pairs
from al_assets.core.analysis.evaluation import (
    evaluate_predictions,
    evaluation_table,
    prediction_leaves,
    version_comparison,
)
from al_assets.core.analysis.frequency import class_frequency as count_classes
from al_assets.core.analysis.frequency import imbalance_summary
from al_assets.core.analysis.matching import confusion_matrix, counts_table, match_detections
from al_assets.core.defaults import CONFIDENT_SCORE
from al_assets.core.scoring.views import score_at_least
from al_assets.core.splits import HELDOUT, ids_in
from al_assets.core.storage import TableStore
from al_assets.orchestration.assets.labels import pool_categories, pool_labels, read_splits
from al_assets.orchestration.automation import VIEW_REFRESH
from al_assets.orchestration.champion import ChampionConfig, champion_partitions
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
                     deps=["detections", "annotations"],
                     automation_condition=VIEW_REFRESH,
                     description="IoU-matched ground truth x predicted class counts (champion)."),
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
    categories = pool_categories(store)
    images = pool_table(store, "images", ["image_id", "width", "height"])
    labeled = ids_in(read_splits(store), HELDOUT, labeled=True)
    annotations, _ = pool_labels(store)
    annotations = annotations.filter(pc.is_in(annotations["image_id"], value_set=labeled))
    champion, _ = champion_partitions(config, mlflow, store, "detections")
    rows, summary, matrix = [], {}, schemas.CONFUSION_MATRIX.empty_table()
    for version in context.instance.get_dynamic_partitions(MODEL_VERSION):
        seen = _Seen(categories)
        confusion = (seen.confusions(annotations, config) if version == champion else None)
        shards = _heldout_shards(store, version, labeled, seen, confusion)
        result = evaluate_predictions(shards, annotations, images, categories)
        if seen.rows == 0:
            continue
        rows.append(evaluation_table(result, categories, version))
        summary[version] = {**{k: _rounded(result[k]) for k in ("map", "ap50", "ap75")},
                            "num_images": result["num_images"]}
        if confusion is not None:
            matrix = counts_table(seen.matrix, categories)
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


class _Seen:
    """What the shards of one version held: prediction rows, and the confusion counts."""

    def __init__(self, categories: pa.Table) -> None:
        self.rows = 0
        size = category_table(categories).num_rows + 1  # + background
        self.matrix = np.zeros((size, size), np.int64)
        self._categories = categories

    def confusions(self, annotations: pa.Table, config: EvaluationConfig
                   ) -> Callable[[pa.Table], None]:
        def add(shard: pa.Table) -> None:
            matched = match_detections(shard, annotations, iou_threshold=config.iou_threshold,
                                       score_thresh=config.score_thresh)
            self.matrix += confusion_matrix(matched, self._categories)[0]
        return add


def _heldout_shards(store: TableStore, version: str, heldout: pa.Array, seen: _Seen,
                    confusion: Callable[[pa.Table], None] | None) -> Iterator[pa.Table]:
    """The version's predictions of held-out images, one shard at a time, evaluation columns
    only; counted (and matched for the confusion matrix) on the way."""
    for partition in store.partitions("detections", under=version):
        shard = _evaluation_columns(store, "detections", partition)
        shard = shard.filter(pc.is_in(shard["image_id"], value_set=heldout))
        seen.rows += shard.num_rows
        if confusion is not None and shard.num_rows:
            confusion(shard)
        yield shard
        pa.default_memory_pool().release_unused()  # keep the peak at one shard, not the sum


def _evaluation_columns(store: TableStore, table: str, partition: str) -> pa.Table:
    """image_id and each detection's box, score and label_id of one DETECTIONS partition.

    Nested columns are chosen by Parquet leaf path (TableStore.read's column names cannot
    select inside a list): the distributions, top-k lists and embeddings, most of a
    shard's bytes, are never read.
    """
    parquet = store.parquet_file(table, partition)
    return parquet.read(columns=prediction_leaves(parquet.schema))


def _off_diagonal(matrix: pa.Table) -> pa.Table:
    if matrix.num_rows == 0:
        return matrix
    differs = pc.invert(pc.equal(pc.fill_null(matrix["gt_category_id"], -1),
                                 pc.fill_null(matrix["pred_category_id"], -1)))
    return matrix.filter(differs).sort_by([("count", "descending")])


def _rounded(value: float | None) -> float | None:
    """3 decimals, like the previews: the stored table keeps full precision."""
    return None if value is None else round(value, 3)
