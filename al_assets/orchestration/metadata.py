"""Arrow tables as Dagster metadata: row counts, column schema, previews, counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.display import display_text, readable
from al_assets.core.schemas import description


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """The Arrow schema with each field's description (schemas.py), for the UI's column view."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=f.name, type=str(f.type), description=description(f))
            for f in schema
        ]
    )


def table_metadata(
    table: pa.Table, uri: str, *, preview_rows: int = 5, names: Mapping[int, str] | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Standard metadata of one written table (Dagster's row-count and schema keys); ``names``
    and ``root`` make the preview readable (see :func:`markdown_preview`)."""
    return {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": column_schema(table.schema),
        "dagster/uri": uri,
        "preview": dg.MetadataValue.md(
            markdown_preview(table, preview_rows, names=names, root=root)),
    }


def markdown_preview(
    table: pa.Table, rows: int = 5, max_chars: int = 60, *,
    names: Mapping[int, str] | None = None, root: str | None = None,
) -> str:
    """A small markdown table as people read it (core.display): label ids as category
    ``names`` when given, URIs as paths below ``root`` (else file names), rounded figures."""
    if table.num_rows == 0:
        return "_empty table_"
    shown = readable(table.slice(0, rows), names, root)
    columns = shown.column_names
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in shown.to_pylist():
        cells = [_cell(row[n], max_chars) for n in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts_metadata(table: pa.Table, column: str, *, top: int = 50) -> dg.TableMetadataValue:
    """Per-value counts of one column (e.g. annotations per label) as table metadata."""
    if table.num_rows == 0:
        counts: list[dict[str, Any]] = []
    else:
        counted = pc.value_counts(table[column]).to_pylist()
        counts = sorted(counted, key=lambda d: (-d["counts"], str(d["values"])))[:top]
    return dg.MetadataValue.table(
        records=[dg.TableRecord({column: str(c["values"]), "count": c["counts"]}) for c in counts],
        schema=dg.TableSchema(
            columns=[dg.TableColumn(column, "string"), dg.TableColumn("count", "int")]
        ),
    )


def _cell(value: Any, max_chars: int) -> str:
    text = display_text(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
