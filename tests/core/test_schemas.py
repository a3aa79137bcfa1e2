"""Every column of every table al_assets writes is documented where the data carries it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from al_assets.core import schemas
from al_assets.core.storage import TableStore

SCHEMAS = {name: value for name, value in vars(schemas).items()
           if isinstance(value, pa.Schema)}
STRUCTS = {name: value for name, value in vars(schemas).items()
           if isinstance(value, pa.StructType)}


def _fields(fields: list[pa.Field], path: str) -> list[tuple[str, pa.Field]]:
    """Each field with its dotted path, nested struct fields included (e.g. list<struct>)."""
    out = []
    for field in fields:
        out.append((f"{path}.{field.name}", field))
        kind = field.type
        while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
            kind = kind.value_type
        if pa.types.is_struct(kind):
            out += _fields([kind.field(i) for i in range(kind.num_fields)], f"{path}.{field.name}")
    return out


def test_schemas_are_found() -> None:
    assert {"IMAGES", "LABELING_QUEUE", "MODEL_EVALUATION"} <= set(SCHEMAS)
    assert {"BOX2D", "DETECTION", "RLE"} <= set(STRUCTS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_column_has_a_description(name: str) -> None:
    undocumented = [path for path, field in _fields(list(SCHEMAS[name]), name)
                    if not (schemas.description(field) or "").strip()]
    assert not undocumented, f"document these columns in schemas.py (_f(..., doc)): {undocumented}"


def test_descriptions_survive_parquet(tmp_path: Path) -> None:
    store = TableStore(tmp_path)
    store.write("splits", schemas.SPLITS.empty_table())

    read = store.read("splits").schema

    assert [schemas.description(f) for f in read] == [
        schemas.description(f) for f in schemas.SPLITS]


def test_model_evaluation_documents_the_version_column() -> None:
    assert schemas.MODEL_EVALUATION.names[-1] == "model_version"
    assert not schemas.MODEL_EVALUATION.field("model_version").nullable
