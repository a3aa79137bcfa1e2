"""Predict a set of images with one model and compare two models on the held-out split.

One evaluation path for the loop: the gate asset and the simulation both predict the held-out
images with the production runner (``predict_shard``, the extractor's full class
distribution) and score them with ``compare_predictions`` (COCOeval, paired bootstrap over
images), then ``decide`` whether the challenger replaces the champion.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from al_assets.core import schemas
from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.prediction.loader import ShardImages
from al_assets.core.prediction.runner import PredictOptions, ShardRef, default_workers, predict_shard
from al_assets.core.storage.s3 import S3Settings


def predict_images(
    extractor: ClassScoreExtractor, images: pa.Table, ref: ShardRef, device: torch.device,
    *, batch_size: int = 8, s3: S3Settings | None = None,
) -> tuple[pa.Table, list[dict]]:
    """(DETECTIONS of ``images``, error rows): the production runner into memory."""
    extractor = extractor.to(device).eval()
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schemas.DETECTIONS) as writer:
        stats = predict_shard(
            images.select(["image_id", "uri", "width", "height"]), extractor, writer, ref,
            device=device, options=PredictOptions(batch_size, default_workers(None, device)),
            dataset=ShardImages(images, s3),
        )
    return pq.read_table(pa.BufferReader(sink.getvalue())), stats.error_rows
