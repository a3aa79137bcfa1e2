"""Defaults that more than one part of al_assets relies on, each with why it has its value.

One place per number or name (issue 16): the modules that use them import them from here, and
configs, CLI flags and docs take their defaults from these names, so none can drift.
"""

from __future__ import annotations

import os

from al_assets.core.errors import SettingError

# -- the model registry -------------------------------------------------------------------------

CLASS_SCORES_MODEL = "al-class-scores"
"""Registered MLflow model of the class-score extractors (pyfunc): its versions are the
``model_version`` partitions, and the pipeline follows its alias."""

DETECTOR_MODEL = "al-detector"
"""Registered MLflow model of the plain torchvision detectors, versioned beside the extractors."""

SIMULATION_EXPERIMENT = "al_assets_simulation"
"""MLflow experiment of the simulation's runs (one per strategy x seed), apart from the
training runs of the real loop."""

CHAMPION_ALIAS = "champion"
"""The alias whose version the views, the queue and the sensors follow; the gate moves it."""

DEFAULT_ARCH = "ssdlite320_mobilenet_v3_large"
"""The torchvision detector trained and registered when none is named: the demo detector's,
pretrained presets' and simulation's architecture (320 px, 3.4 M parameters: CPU-trainable)."""

# -- what the CLI prints -------------------------------------------------------------------------

def console_log_level() -> str:
    """What a CLI run prints of Dagster's and MLflow's logs: ``AL_ASSETS_LOG_LEVEL``, default
    INFO (progress lines, not Dagster's DEBUG events); the instance keeps every event anyway.
    Read at each call, never at import."""
    return os.environ.get("AL_ASSETS_LOG_LEVEL", "INFO").upper()


# -- automation ----------------------------------------------------------------------------------

SENSOR_INTERVAL_S = 30
"""Seconds between two ticks of the sensors that read the instance (new shards, new labels, the
automation sensor): Dagster's own default. The two that list the source storage or poll the
MLflow registry tick at twice this, so a large S3 prefix is not listed every 30 s."""


def sensor_interval_s() -> int:
    """``AL_ASSETS_SENSOR_INTERVAL_S`` (whole seconds, at least 1) or :data:`SENSOR_INTERVAL_S`.

    Read when the code location loads (the daemon and the webserver load it at their start):
    a team raises it to poll a slow store less, the daemon test lowers it to wait less.
    """
    raw = os.environ.get("AL_ASSETS_SENSOR_INTERVAL_S", "").strip()
    if not raw:
        return SENSOR_INTERVAL_S
    if not raw.isdecimal() or not raw.isascii() or int(raw) < 1:
        raise SettingError(f"AL_ASSETS_SENSOR_INTERVAL_S={raw!r}: give whole seconds, at least 1 "
                         f"(unset: {SENSOR_INTERVAL_S})")
    return int(raw)


# -- pool layout -------------------------------------------------------------------------------

DEFAULT_SHARD_SIZE = 2000
"""Images per prediction shard (one partition, one GPU slot): ~2-4 min on a GPU, and small
enough that one bad shard costs little to redo."""

DEFAULT_HELDOUT_FRACTION = 0.2
"""One image in five is held out for evaluation (~60 of the 300 demo images)."""

# -- the views' score floors ---------------------------------------------------------------------

DEFAULT_MIN_SCORE = 0.2
"""Detector score below which a box is background noise, not a detection to rank.

torchvision detectors keep up to 300 boxes per image down to score 0.001-0.01; most are
background whose foreground distribution is near uniform, so they top every uncertainty
measure and would fill the views, the queue and the confused pairs with noise."""

DEFAULT_AGG = "max"
"""Per-image aggregation of box uncertainty: an image is as uncertain as its most uncertain box
above the floor (mean dilutes one confusing object among easy ones; sum favours crowds)."""

# -- what the prediction step stores (al_assets.core.prediction.storage.StoragePolicy) --------
# Next to the noise floor they must stay below, so the two cannot drift apart.
# Bytes per image: README "Storage"; tests/core/test_prediction_storage.py holds them to it.

STORE_MIN_SCORE = 0.05
"""Boxes below this detector score are not written at all (the write-time floor).

4x below DEFAULT_MIN_SCORE, so a read floor can still be lowered to 0.05; the usual COCO
evaluation floor (torchvision Faster R-CNN, Detectron2). Only mAP sees the boxes it drops: the
demo detector's 0.142 becomes 0.137, while 27x fewer boxes are stored (~10 instead of ~276)."""

STORE_MAX_DETECTIONS = 100
"""At most this many boxes per image, highest scores first (COCOeval's maxDets, 100)."""

STORE_TOP_K = 2
"""Length of each box's stored top-k (label_ids, scores): p1, p2 and the first/second label,
all that margin, ratio, least confidence and confused pairs read. Entropy reads the full
distribution, which every stored box keeps (STORE_DISTRIBUTION)."""

STORE_ROW_GROUP_IMAGES = 64
"""Images per Parquet row group of a detections shard (rows sorted by image_id): a lookup of
a few hundred queue candidates decodes only the groups holding one (~0.3 MB each at the
demo's ~4.9 KB per image); the price is a longer footer (one entry per leaf column and group)."""

STORE_DISTRIBUTION = True
"""Keep every stored box's full foreground distribution (float32): entropy then stays exact,
and so does every other measure, for every box the views and rankings can see."""

CONFIDENT_SCORE = 0.3
"""Detector score at which a box counts as "a detection" for class frequency, the confusion
matrix and Label Studio pre-annotations (torchvision's examples draw boxes above ~0.3)."""
