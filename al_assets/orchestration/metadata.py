"""Arrow tables as Dagster metadata: row counts, column schema, previews, counts."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

_DAGSTER_TYPES = {"int": "int", "uint": "int", "float": "float", "double": "float", "bool": "bool"}


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=f.name, type=str(f.type), description=None) for f in schema
        ]
    )


def table_metadata(table: pa.Table, uri: str, *, preview_rows: int = 5) -> dict[str, Any]:
    """Standard metadata of one written table (Dagster's row-count and schema keys)."""
    return {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": column_schema(table.schema),
        "dagster/uri": uri,
        "preview": dg.MetadataValue.md(markdown_preview(table, preview_rows)),
    }


def markdown_preview(table: pa.Table, rows: int = 5, max_chars: int = 60) -> str:
    """A small markdown table; nested values are shortened so the UI stays readable."""
    if table.num_rows == 0:
        return "_empty table_"
    head = table.slice(0, rows).to_pylist()
    names = table.column_names
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in head:
        cells = [_cell(row[n], max_chars) for n in names]
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
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
