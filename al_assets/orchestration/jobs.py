"""Jobs: the units that sensors, schedules, the CLI and the UI launch."""

import dagster as dg

from al_assets.orchestration.partitions import (
    batch_partitions,
    label_batch_partitions,
    prediction_partitions,
)

INGESTION_KEYS = [dg.AssetKey(k) for k in ("categories", "images", "annotations", "ingestion_rejects")]
PREDICTION_KEYS = [dg.AssetKey(k) for k in ("detections", "prediction_errors", "box_scores",
                                              "image_scores")]
LABEL_KEYS = [dg.AssetKey(k) for k in ("labeled_images", "label_annotations", "label_rejects")]
TRAIN_KEYS = [dg.AssetKey(k) for k in ("splits", "challenger", "evaluation_gate")]
VIEW_KEYS = [dg.AssetKey(k) for k in (
    "splits", "least_confidence", "least_margin", "entropy", "image_rankings", "labeling_queue",
    "confused_pairs", "class_frequency", "model_evaluation", "confusion_matrix",
    "uncertainty_report",
)]
INGESTION_ASSETS = dg.AssetSelection.assets(*INGESTION_KEYS)
PARTITIONED_PREDICTION = dg.AssetSelection.assets(*PREDICTION_KEYS)
VIEWS = dg.AssetSelection.assets(*VIEW_KEYS)

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
label_import_job = dg.define_asset_job(
    "label_import_job", selection=dg.AssetSelection.assets(*LABEL_KEYS),
    partitions_def=label_batch_partitions,
    description="Import one label file from <source>/labels/ as a label batch.",
)
train_job = dg.define_asset_job(
    "train_job", selection=dg.AssetSelection.assets(*TRAIN_KEYS),
    description="Splits -> train a challenger on the labels -> evaluation gate (may promote).",
)
gate_job = dg.define_asset_job(
    "gate_job", selection=dg.AssetSelection.assets("evaluation_gate"),
    description="Evaluate the current challenger against the champion; promote if better.",
)
JOBS = [ingest_job, register_job, predict_job, refresh_views_job, label_import_job, train_job,
        gate_job]

JOB_KEYS: dict[str, list[dg.AssetKey]] = {
    ingest_job.name: INGESTION_KEYS, register_job.name: [dg.AssetKey("registered_model")],
    predict_job.name: PREDICTION_KEYS, refresh_views_job.name: VIEW_KEYS,
    label_import_job.name: LABEL_KEYS, train_job.name: TRAIN_KEYS,
    gate_job.name: [dg.AssetKey("evaluation_gate")],
}
"""Every job's assets, passed as the run's asset_selection whenever we launch one: automation
recognises an update as "made by the run that also refreshed me" only from a run's
asset_selection (a plain job run has none), so without it every job run that refreshed a view
and its parents would be followed by a second, redundant refresh of that view."""


def run_request(job, **kwargs) -> dg.RunRequest:
    """A RunRequest for ``job`` that names its assets (see ``JOB_KEYS``)."""
    return dg.RunRequest(job_name=job.name, asset_selection=JOB_KEYS[job.name], **kwargs)
