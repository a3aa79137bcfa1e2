"""Uncertainty assets: per-partition box and image scores, then pool-wide views of the champion."""

from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.loop.selection import MEASURES as STRATEGIES
from al_assets.core.loop.selection import ScoringSettings, pool_ranking, rank_images
from al_assets.core.queue.exports import category_names
from al_assets.core.defaults import DEFAULT_MIN_SCORE
from al_assets.core.scoring.views import score_at_least, score_bands, top_rows
from al_assets.core.storage import TableStore
from al_assets.core.pool import pool_categories
from al_assets.orchestration.assets.prediction import storage_partition
from al_assets.orchestration.automation import PARTITION_FOLLOWS_UPSTREAM, VIEW_REFRESH
from al_assets.orchestration.config import dataclass_of, derived_config
from al_assets.orchestration.champion import ChampionConfig, champion_partitions, read_partitions
from al_assets.orchestration.metadata import markdown_preview, table_metadata
from al_assets.orchestration.partitions import prediction_partitions
from al_assets.orchestration.resources import MlflowResource, StorageResource

UNCERTAINTY = "uncertainty"


ScoringConfig = derived_config("ScoringConfig", ScoringSettings)
"""``ScoringSettings`` as run config: same names, defaults and help (the `scoring` op)."""


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "box_scores", deps=["detections"], group_name=UNCERTAINTY, kinds={"parquet"},
            description="One row per detection: least confidence, margin, ratio, entropy.",
            automation_condition=PARTITION_FOLLOWS_UPSTREAM,
        ),
        dg.AssetSpec(
            "image_scores", deps=["detections"], group_name=UNCERTAINTY, kinds={"parquet"},
            description="Per-image aggregated uncertainty for every strategy, ranked per shard.",
            automation_condition=PARTITION_FOLLOWS_UPSTREAM,
        ),
    ],
    partitions_def=prediction_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def scoring(
    context: dg.AssetExecutionContext, config: ScoringConfig, storage: StorageResource
) -> Iterator[dg.MaterializeResult]:
    store = storage.tables()
    partition = storage_partition(context)
    boxes, ranked = rank_images(store.read("detections", partition), dataclass_of(config, ScoringSettings))
    with store.writer("box_scores", boxes.schema, partition) as writer:
        for band in score_bands(boxes, config.min_score):  # views skip the band below
            writer.write_table(band)
    yield dg.MaterializeResult(
        asset_key="box_scores",
        metadata=table_metadata(boxes, store.uri("box_scores", partition),
                                names=category_names(pool_categories(store))),
    )
    yield dg.MaterializeResult(
        asset_key="image_scores",
        metadata={**table_metadata(ranked, store.write("image_scores", ranked, partition)),
                  "min_score": config.min_score,
                  "boxes_ranked": int(pc.sum(pc.greater_equal(boxes["score"], config.min_score))
                                      .as_py() or 0)},
    )


class DetectionViewConfig(ChampionConfig):
    limit: int = 1000
    """Rows kept (the notebook: 1,000 least confident, 10,000 least margin, 1,000 entropy:
    one config class per view below keeps each default)."""
    min_score: float = DEFAULT_MIN_SCORE
    """Detections below this detector score are background noise and left out (0 keeps all)."""


class LeastConfidenceConfig(DetectionViewConfig):
    limit: int = 1000


class LeastMarginConfig(DetectionViewConfig):
    limit: int = 10000


class EntropyConfig(DetectionViewConfig):
    limit: int = 1000


def _detection_view(name: str, column: str, descending: bool,
                    view_config: type[DetectionViewConfig], doc: str):
    columns = ["image_id", "uri", "det_index", "box", "label_id", "score", "first_label_id",
               "second_label_id", "p1", "p2", column]

    @dg.asset(
        name=name, group_name=UNCERTAINTY, kinds={"parquet"}, deps=["box_scores"],
        description=doc, automation_condition=VIEW_REFRESH,
    )
    def view(
        context: dg.AssetExecutionContext, config: view_config,  # type: ignore[valid-type]
        storage: StorageResource, mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        store = storage.tables()
        key, partitions = champion_partitions(config, mlflow, store, "box_scores")
        tables = _confident_boxes(store, partitions, list(dict.fromkeys(columns)),
                                  config.min_score)
        best = top_rows(tables, column, limit=config.limit, descending=descending)
        best = best if best is not None else schemas.BOX_SCORES.empty_table().select(
            list(dict.fromkeys(columns)))
        uri = store.write(name, best)
        return dg.MaterializeResult(
            metadata={**table_metadata(best, uri, preview_rows=10,
                                       names=category_names(pool_categories(store))),
                      "model_version": key,
                      "shards": len(partitions), "min_score": config.min_score}
        )

    return view


def _confident_boxes(store: TableStore, partitions: list[str], columns: list[str],
                     min_score: float) -> Iterator[pa.Table]:
    """box_scores partitions one at a time, the noise floor pushed into each Parquet read."""
    where = score_at_least(min_score)
    for partition in partitions:
        yield store.read("box_scores", partition, columns, where=where)
        pa.default_memory_pool().release_unused()  # keep the peak at one shard, not the sum


least_confidence = _detection_view(
    "least_confidence", "score", False, LeastConfidenceConfig,
    "Detections with the lowest detector score (the notebook's ORDER BY score ASC LIMIT 1000).",
)
least_margin = _detection_view(
    "least_margin", "margin", False, LeastMarginConfig,
    "Detections whose top two classes are closest (p1 - p2 ascending, LIMIT 10000).",
)
entropy = _detection_view(
    "entropy", "entropy", True, EntropyConfig,
    "Detections with the highest entropy of the class distribution (nats, DESC LIMIT 1000).",
)


class RankingConfig(ChampionConfig):
    empty_images: str | None = None
    """Where images without detections rank; default: as the `scoring` op wrote them (its
    empty_images setting, read from the shard rankings), so the two cannot disagree."""


@dg.asset(
    group_name=UNCERTAINTY, kinds={"parquet"}, deps=["image_scores"],
    automation_condition=VIEW_REFRESH,
    description="Every predicted image of the champion version ranked per strategy.",
)
def image_rankings(
    context: dg.AssetExecutionContext, config: RankingConfig, storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    store = storage.tables()
    key, partitions = champion_partitions(config, mlflow, store, "image_scores")
    rankings = pool_ranking(
        [*read_partitions(store, "image_scores", partitions), schemas.IMAGE_SCORES.empty_table()],
        empty_images=config.empty_images)
    uri = store.write("image_rankings", rankings)
    top = {m: markdown_preview(rankings.filter(pc.equal(rankings["measure"], m)), 5)
           for m in STRATEGIES}
    return dg.MaterializeResult(
        metadata={
            **table_metadata(rankings, uri), "model_version": key, "shards": len(partitions),
            **{f"top/{m}": dg.MetadataValue.md(text) for m, text in top.items()},
        }
    )
