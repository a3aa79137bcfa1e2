"""Table values as people read them: category names for label ids, short paths for URIs,
rounded figures.

One module, so the Dagster UI's previews and the HTML report show the same text. Only copies
for display are changed; stored tables keep ids and full URIs (exports and joins need them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyarrow as pa

DECIMALS = 3
MAX_LIST_ITEMS = 10

LABEL_COLUMNS = {
    "label_id": "label", "first_label_id": "first_label", "second_label_id": "second_label",
    "top_label_id": "top_label", "label_ids": "labels", "labels": "labels",
}
"""Columns of model label ids (category ids) and the name each gets once ids become names."""

URI_COLUMNS = {"uri": "file"}
"""Columns of image URIs and the name each gets once shortened."""


def figure(value: float) -> str:
    """A float rounded to 3 decimals (trailing zeros dropped); below 0.1, 3 significant digits
    instead, so a margin of 0.00042 does not read as 0."""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or abs(value) >= 0.1:
        text = f"{value:.{DECIMALS}f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return f"{value:.{DECIMALS}g}"


def display_text(value: object) -> str:
    """Short text of an Arrow value (structs such as boxes, lists, floats); None is empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return figure(value)
    if isinstance(value, dict):
        return ", ".join(f"{key}={display_text(item)}" for key, item in value.items())
    if isinstance(value, list):
        shown = ", ".join(display_text(item) for item in value[:MAX_LIST_ITEMS])
        more = f", ... ({len(value)} items)" if len(value) > MAX_LIST_ITEMS else ""
        return f"[{shown}{more}]"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def short_uri(uri: str, root: str | None = None) -> str:
    """The path below ``root`` when ``uri`` lies there, else the file name: enough to find the
    image, without a ``file://`` prefix and a home folder in every row."""
    if root:
        prefix = root.rstrip("/") + "/"
        if uri.startswith(prefix):
            return uri[len(prefix):]
    return uri.rstrip("/").rsplit("/", 1)[-1]


def readable(
    table: pa.Table, names: Mapping[int, str] | None = None, root: str | None = None
) -> pa.Table:
    """A copy of ``table`` for display: label ids as category names (when ``names`` is
    given; an unknown id stays a number), URI columns as :func:`short_uri` paths."""
    for index, field in enumerate(table.schema):
        if names is not None and field.name in LABEL_COLUMNS:
            column = _named(table.column(index), field.type, names)
            table = table.set_column(index, _new_name(table, field.name, LABEL_COLUMNS), column)
        elif field.name in URI_COLUMNS:
            column = pa.array([None if v is None else short_uri(v, root)
                               for v in table.column(index).to_pylist()], pa.string())
            table = table.set_column(index, _new_name(table, field.name, URI_COLUMNS), column)
    return table


def _new_name(table: pa.Table, name: str, renames: Mapping[str, str]) -> str:
    """The display name, unless the table already has a column of that name."""
    renamed = renames[name]
    return name if renamed != name and renamed in table.column_names else renamed


def _named(values: pa.ChunkedArray, type_: pa.DataType, names: Mapping[int, str]) -> pa.Array:
    def name(label: int | None) -> str | None:
        return None if label is None else names.get(label, str(label))

    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return pa.array([None if v is None else [name(x) for x in v]
                         for v in values.to_pylist()], pa.list_(pa.string()))
    return pa.array([name(v) for v in values.to_pylist()], pa.string())
