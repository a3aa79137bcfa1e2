"""Asset-check invariants of a predictions partition, on hand-built tables."""

from __future__ import annotations

import pyarrow as pa

from al_assets.core import schemas
from al_assets.core.prediction import validation


def detection(box=(0, 0, 10, 10), label=1, distribution=(0.7, 0.3)):
    return {"box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)), "score": 0.5,
            "label_id": label, "label_ids": [1, 2], "scores": list(distribution)[:2],
            "distribution": list(distribution)}


def predictions(rows):
    return pa.Table.from_pylist(
        [{"image_id": i, "uri": f"file:///{i}.jpg", "width": 10, "height": 10, "model_name": "m",
          "model_version": 1, "shard": "b.s000", "detections": dets} for i, dets in rows],
        schema=schemas.DETECTIONS)


def test_distributions() -> None:
    good = predictions([(1, [detection()]), (2, [])])
    assert validation.distributions_sum_to_one(good).passed
    bad = predictions([(1, [detection(distribution=(0.7, 0.2))])])
    outcome = validation.distributions_sum_to_one(bad)
    assert not outcome.passed and outcome.metadata["bad"] == 1
    assert abs(outcome.metadata["worst_deviation"] - 0.1) < 1e-6


def test_duplicates() -> None:
    assert validation.no_duplicate_detections(
        predictions([(1, [detection(), detection(label=2)]), (2, [detection()])])).passed
    twice = validation.no_duplicate_detections(predictions([(1, [detection(), detection()])]))
    assert not twice.passed and twice.metadata["repeated_detections"] == 1
    image_twice = validation.no_duplicate_detections(predictions([(1, []), (1, [])]))
    assert not image_twice.passed and image_twice.metadata["repeated_images"] == 1


def test_every_image_accounted_for() -> None:
    errors = pa.Table.from_pylist(
        [{"image_id": 3, "uri": "u", "model_name": "m", "model_version": 1, "shard": "b.s000",
          "stage": "decode", "error": "bad"}], schema=schemas.PREDICTION_ERRORS)
    table = predictions([(1, []), (2, [])])
    assert validation.every_image_accounted_for(pa.array([1, 2, 3]), table, errors).passed
    missing = validation.every_image_accounted_for(pa.array([1, 2, 3, 4]), table, errors)
    assert not missing.passed and missing.metadata["missing"] == 1


def test_schema() -> None:
    assert validation.schema_matches(predictions([(1, [])])).passed
    assert not validation.schema_matches(predictions([(1, [])]).drop(["shard"])).passed
