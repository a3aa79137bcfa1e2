"""The pool's category list: the union of every batch's categories, which must agree."""

from __future__ import annotations

import pyarrow as pa

from al_assets.core import schemas
from al_assets.core.errors import CocoFormatError


def merge_categories(existing: pa.Table, new: pa.Table) -> pa.Table:
    """Union by category id; the same id with another name is an error (labels would mix)."""
    by_id: dict[int, dict] = {}
    for row in existing.to_pylist() + new.to_pylist():
        known = by_id.setdefault(row["category_id"], row)
        if known["name"] != row["name"]:
            raise CocoFormatError(
                f"category id {row['category_id']} is {known['name']!r} in batch "
                f"{known['batch']!r} but {row['name']!r} in batch {row['batch']!r}: one id must "
                "mean one class across the pool; fix the annotation file before ingesting it"
            )
    rows = sorted(by_id.values(), key=lambda r: r["category_id"])
    return pa.Table.from_pylist(rows, schema=schemas.CATEGORIES)


def unique_categories(table: pa.Table) -> pa.Table:
    """Categories of all batches, one row per id, sorted by id."""
    return merge_categories(table.slice(0, 0), table)
