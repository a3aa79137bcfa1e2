"""Dagster metadata of written tables: column descriptions and a readable preview."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa

from al_assets.core import schemas
from al_assets.orchestration.metadata import markdown_preview, table_metadata

ROOT = "file:///pool/images"


def _queue() -> pa.Table:
    return pa.Table.from_pylist([
        {"queue_rank": 1, "image_id": 11, "uri": f"{ROOT}/b0/000011.jpg", "strategy": "entropy",
         "agg": "max", "uncertainty": 0.9345678912345678, "n_detections": 4, "top_label_id": 3,
         "labels": [3, 5, 11, 13], "score_rank": 1, "reason": "entropy max 0.93 over 4 boxes"},
    ], schema=schemas.LABELING_QUEUE)


def test_column_schema_carries_the_schema_descriptions() -> None:
    meta = table_metadata(_queue(), "file:///store/labeling_queue.parquet")

    column_schema = meta["dagster/column_schema"]
    assert isinstance(column_schema, dg.TableSchema)
    columns = {c.name: c for c in column_schema.columns}
    assert list(columns) == schemas.LABELING_QUEUE.names
    assert all(c.description for c in columns.values())
    assert columns["queue_rank"].description == "1 = label first"
    assert columns["labels"].type == "list<item: int32>"


def test_preview_shows_names_rounded_figures_and_short_paths() -> None:
    names = {3: "car", 5: "bus", 11: "stop sign", 13: "bench"}

    text = table_metadata(_queue(), "u", names=names, root=ROOT)["preview"].value

    assert "[car, bus, stop sign, bench]" in text and "[3, 5, 11, 13]" not in text
    assert "| b0/000011.jpg |" in text and "file://" not in text
    assert "0.935" in text and "0.9345" not in text
    header = [cell.strip() for cell in text.splitlines()[0].strip("|").split("|")]
    assert header[2] == "file" and header[7] == "top_label"


def test_preview_without_names_keeps_ids_and_escapes_pipes() -> None:
    table = pa.table({"label_id": [7], "reason": ["a | b"]})
    assert markdown_preview(table).splitlines()[2] == "| 7 | a \\| b |"
    assert markdown_preview(table.slice(0, 0)) == "_empty table_"
