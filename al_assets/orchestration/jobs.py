"""Jobs: the units that sensors, schedules, the CLI and the UI launch."""

import dagster as dg

from al_assets.orchestration.partitions import batch_partitions, prediction_partitions

INGESTION_ASSETS = dg.AssetSelection.groups("ingestion")
PARTITIONED_PREDICTION = dg.AssetSelection.assets(
    "detections", "prediction_errors", "box_scores", "image_scores"
)
VIEWS = (
    dg.AssetSelection.groups("uncertainty", "analysis")
    - dg.AssetSelection.assets("box_scores", "image_scores")
)

ingest_job = dg.define_asset_job(
    "ingest_job", selection=INGESTION_ASSETS, partitions_def=batch_partitions,
    description="Ingest one COCO annotation file (a batch) into the pool tables.",
)
register_job = dg.define_asset_job(
    "register_job", selection=dg.AssetSelection.assets("registered_model"),
    description="Register the detector and its class-score extractor in MLflow.",
)
predict_job = dg.define_asset_job(
    "predict_job", selection=PARTITIONED_PREDICTION, partitions_def=prediction_partitions,
    description="Predict and score one shard with one model version (one GPU slot).",
)
refresh_views_job = dg.define_asset_job(
    "refresh_views_job", selection=VIEWS,
    description="Recompute rankings, the labeling queue, the analysis and the report.",
)
JOBS = [ingest_job, register_job, predict_job, refresh_views_job]
