"""The labeling queue: pick the images to label next, and export them for a labeling tool."""

from al_assets.core.queue.dedup import (
    HashFailure,
    PerceptualHashes,
    dhash,
    duplicate_clusters,
    perceptual_hashes,
)
from al_assets.core.queue.exports import (
    ImageUrls,
    coco_preannotations,
    label_studio_config,
    label_studio_tasks,
    queue_csv,
)
from al_assets.core.queue.selection import select_queue

__all__ = [
    "HashFailure",
    "ImageUrls",
    "PerceptualHashes",
    "coco_preannotations",
    "dhash",
    "duplicate_clusters",
    "label_studio_config",
    "label_studio_tasks",
    "perceptual_hashes",
    "queue_csv",
    "select_queue",
]
