"""How table values read in the UI and the report: names, rounded figures, short paths."""

from __future__ import annotations

import pyarrow as pa
import pytest

from al_assets.core import schemas
from al_assets.core.display import display_text, figure, readable, short_uri


@pytest.mark.parametrize(("value", "text"), [
    (0.9123456789, "0.912"), (0.5, "0.5"), (1.0, "1"), (1234.56789, "1234.568"),
    (0.00042137, "0.000421"), (-0.0123456, "-0.0123"), (0.0, "0"), (-0.0001, "-0.0001"),
    (float("nan"), "nan"),
])
def test_figures_are_rounded_to_three_decimals_or_digits(value: float, text: str) -> None:
    assert figure(value) == text


def test_nested_values_are_short() -> None:
    assert display_text({"xmin": 1.0, "ymin": 2.25}) == "xmin=1, ymin=2.25"
    assert display_text(list(range(12))) == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (12 items)]"
    assert display_text(None) == ""


def test_short_uri_is_relative_to_the_root_else_the_file_name() -> None:
    root = "file:///data/pool/images"
    assert short_uri(f"{root}/b0/000001.jpg", root) == "b0/000001.jpg"
    assert short_uri(f"{root}/b0/000001.jpg", root + "/") == "b0/000001.jpg"
    assert short_uri("s3://bucket/elsewhere/x.png", root) == "x.png"
    assert short_uri("file:///data/pool/images-old/x.png", root) == "x.png"  # not below root
    assert short_uri("file:///a/b.jpg") == "b.jpg"


def test_readable_names_labels_and_shortens_uris() -> None:
    queue = pa.Table.from_pylist([
        {"queue_rank": 1, "image_id": 7, "uri": "file:///pool/images/7.jpg", "strategy": "m",
         "agg": "max", "uncertainty": 0.5, "n_detections": 2, "top_label_id": 3,
         "labels": [3, 5, 99], "score_rank": 1, "reason": "r"},
        {"queue_rank": 2, "image_id": 8, "uri": "file:///pool/images/8.jpg", "strategy": "m",
         "agg": "max", "uncertainty": None, "n_detections": 0, "top_label_id": None,
         "labels": [], "score_rank": 2, "reason": "r"},
    ], schema=schemas.LABELING_QUEUE)

    shown = readable(queue, {3: "cat", 5: "dog"}, "file:///pool/images")

    assert shown.column_names[2] == "file" and shown.column_names[7] == "top_label"
    assert shown["file"].to_pylist() == ["7.jpg", "8.jpg"]
    assert shown["top_label"].to_pylist() == ["cat", None]
    assert shown["labels"].to_pylist() == [["cat", "dog", "99"], []]  # unknown id stays a number
    assert readable(queue)["top_label_id"].to_pylist() == [3, None]  # no names: ids kept
    assert queue["uri"][0].as_py().startswith("file://")  # the input is not changed


def test_readable_keeps_an_existing_column_name() -> None:
    table = pa.table({"label_id": [1], "label": ["given"]})
    assert readable(table, {1: "cat"}).column_names == ["label_id", "label"]
