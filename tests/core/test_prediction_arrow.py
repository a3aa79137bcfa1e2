"""Filtering a DETECTIONS table's detections by score, column-wise."""

from __future__ import annotations

import pyarrow as pa

from al_assets.core import schemas
from al_assets.core.prediction.arrow import confident_detections


def _detection(score: float, label: int) -> dict:
    return {"box": {"xmin": 0.0, "ymin": 0.0, "xmax": 1.0, "ymax": 1.0}, "score": score,
            "label_id": label, "label_ids": [label], "scores": [score], "distribution": None}


def _predictions(scores_per_image: list[list[float]]) -> pa.Table:
    rows = [{"image_id": i, "uri": f"u{i}", "width": 1, "height": 1, "model_name": "m",
             "model_version": 1, "shard": "s",
             "detections": [_detection(s, k) for k, s in enumerate(scores)]}
            for i, scores in enumerate(scores_per_image)]
    return pa.Table.from_pylist(rows, schema=schemas.DETECTIONS)


def test_low_scores_are_dropped_and_every_image_stays() -> None:
    table = _predictions([[0.9, 0.01, 0.3], [0.05], [], [0.2, 0.19]])
    kept = confident_detections(table, 0.2)
    assert kept.schema.equals(schemas.DETECTIONS)
    assert kept["image_id"].to_pylist() == [0, 1, 2, 3]
    scores = [[round(d["score"], 2) for d in row] for row in kept["detections"].to_pylist()]
    assert scores == [[0.9, 0.3], [], [], [0.2]]
    assert [d["label_id"] for d in kept["detections"][0].as_py()] == [0, 2]  # order kept
    assert table["detections"].to_pylist()[0][1]["score"] < 0.2  # input untouched


def test_sliced_input_and_no_threshold() -> None:
    table = _predictions([[0.5], [0.1, 0.6], [0.7]]).slice(1)
    kept = confident_detections(table, 0.2)
    assert [[round(d["score"], 2) for d in r] for r in kept["detections"].to_pylist()] == [
        [0.6], [0.7]]
    assert confident_detections(table, 0.0) is table
