"""Parquet tables under one storage root, one file per partition, written atomically.

Layout: ``<root>/tables/<table>/<partition>.parquet`` (``_all.parquet`` for unpartitioned
tables; a two-level partition ``<model_version>/<shard>`` is a folder per model version) and ``<root>/files/...`` for reports and exports. Readers only ever see complete files:
writers stream row groups into a temporary file that is renamed (local) or uploaded whole (S3)
when the writer closes without error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from al_assets.core.errors import StorageError
from al_assets.core.storage.objects import ObjectStore, is_s3, join_uri, local_path, to_uri
from al_assets.core.storage.s3 import S3Settings, split_s3_uri, translate_s3_error

UNPARTITIONED = "_all"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=@+-]*$")


def _check_key(kind: str, key: str) -> str:
    if not _SAFE_KEY.fullmatch(key) or ".." in key:
        raise StorageError(
            f"invalid {kind} name {key!r}: use letters, digits and . _ = @ + - only"
        )
    return key


class TableStore:
    """The one storage root every asset writes to (local folder or ``s3://bucket/prefix``)."""

    def __init__(self, root: str | Path, s3: S3Settings | None = None) -> None:
        self.root = to_uri(root)
        self.objects = ObjectStore(s3)

    # -- addressing ------------------------------------------------------------------------
    def uri(self, table: str, partition: str | None = None) -> str:
        name = "/".join(_check_key("partition", p) for p in partition.split("/")) if partition \
            else UNPARTITIONED
        return join_uri(self.root, "tables", _check_key("table", table), f"{name}.parquet")

    def file_uri(self, *parts: str) -> str:
        """URI of a non-table artifact (PNG, HTML, JSON export) under ``<root>/files``."""
        for part in parts:
            for piece in part.split("/"):
                _check_key("file", piece)
        return join_uri(self.root, "files", *parts)

    # -- writing ---------------------------------------------------------------------------
    def write(self, table: str, data: pa.Table, partition: str | None = None) -> str:
        """Atomically replace one partition (or the whole unpartitioned table)."""
        with self.writer(table, data.schema, partition) as writer:
            writer.write_table(data)
        return self.uri(table, partition)

    @contextmanager
    def writer(
        self, table: str, schema: pa.Schema, partition: str | None = None,
        row_group_size: int | None = None,
    ) -> Iterator[pq.ParquetWriter]:
        """Stream row groups into a partition; published only if the block exits cleanly."""
        uri = self.uri(table, partition)
        with self.objects.atomic_local_file(uri) as tmp:
            writer = pq.ParquetWriter(tmp, schema, compression="zstd",
                                      use_dictionary=dictionary_columns(schema))
            try:
                yield writer
            finally:
                writer.close()

    def write_file(self, data: bytes, *parts: str) -> str:
        uri = self.file_uri(*parts)
        self.objects.write_bytes(uri, data)
        return uri

    def delete(self, table: str, partition: str | None = None) -> None:
        self.objects.delete(self.uri(table, partition))

    # -- reading ---------------------------------------------------------------------------
    def exists(self, table: str, partition: str | None = None) -> bool:
        return self.objects.exists(self.uri(table, partition))

    def partitions(self, table: str, under: str | None = None) -> list[str]:
        """Partition names that have a complete file, sorted (``under``: a first-level folder)."""
        prefix = join_uri(self.root, "tables", _check_key("table", table))
        if under:
            prefix = join_uri(prefix, _check_key("partition", under))
        names: list[str] = []
        start_after = None
        while True:
            try:
                page, truncated = self.objects.list(
                    prefix, suffix=".parquet", start_after=start_after
                )
            except FileNotFoundError:
                return []
            names += [o.uri.rsplit("/", 1)[-1][: -len(".parquet")] for o in page]
            if not truncated or not page:
                found = sorted(n for n in names if n != UNPARTITIONED)
                return [f"{under}/{n}" for n in found] if under else found
            start_after = page[-1].uri

    def read(
        self, table: str, partition: str | None = None, columns: Sequence[str] | None = None,
        where: ds.Expression | None = None,
    ) -> pa.Table:
        """One partition; ``FileNotFoundError`` says which table/partition is missing.

        ``where`` (e.g. ``pc.field("score") >= 0.2``) is pushed into the Parquet scan: row
        groups whose statistics cannot match are skipped, and the rest are filtered batch by
        batch, so the rows left out are never all held at once.
        """
        with self._reading(table, partition) as (path, fs):
            return pq.read_table(path, filesystem=fs, columns=columns, filters=where)

    def parquet_file(self, table: str, partition: str | None = None) -> pq.ParquetFile:
        """One partition's Parquet file, for reads by leaf path (fields inside a list column,
        which ``read``'s column names cannot reach)."""
        with self._reading(table, partition) as (path, fs):
            return pq.ParquetFile(path, filesystem=fs)

    @contextmanager
    def _reading(self, table: str, partition: str | None) -> Iterator[tuple[str, object]]:
        """The Arrow path of a partition, with read errors that name it and the fix."""
        uri = self.uri(table, partition)
        try:
            yield self._arrow_path(uri)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"table {table!r} partition {partition or UNPARTITIONED!r} not found at {uri}: "
                "materialize the upstream asset first"
            ) from None
        except OSError as exc:
            raise self._read_error(exc, uri) from exc

    def read_where(
        self, table: str, partitions: Sequence[str], where: ds.Expression | None,
        columns: Sequence[str] | None = None, schema: pa.Schema | None = None,
    ) -> pa.Table:
        """The rows of ``partitions`` matching ``where``, in one pushed-down Parquet scan.

        For lookups (the queue's few hundred candidates among millions of images): with rows
        sorted by the filtered column, row-group statistics skip every group without a match.
        No partitions: an empty table with ``schema``.
        """
        if not partitions:
            if schema is None:
                raise StorageError(f"no partitions of {table!r} to read and no schema given")
            empty = schema.empty_table()
            return empty.select(list(columns)) if columns else empty
        uris = [self.uri(table, p) for p in partitions]
        paths = [self._arrow_path(u) for u in uris]
        try:
            dataset = ds.dataset([p for p, _ in paths], filesystem=paths[0][1], format="parquet")
            return dataset.to_table(columns=list(columns) if columns else None, filter=where)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"table {table!r}: a partition of {list(partitions)[:5]} is missing: "
                "materialize the upstream asset first"
            ) from None
        except OSError as exc:
            raise self._read_error(exc, uris[0]) from exc

    def read_many(
        self, table: str, partitions: Iterable[str], columns: Sequence[str] | None = None,
        schema: pa.Schema | None = None,
    ) -> pa.Table:
        """Concatenate partitions (empty table with ``schema`` when there are none)."""
        parts = [self.read(table, p, columns) for p in partitions]
        if not parts:
            if schema is None:
                raise StorageError(f"no partitions of {table!r} to read and no schema given")
            empty = schema.empty_table()
            return empty.select(list(columns)) if columns else empty
        return pa.concat_tables(parts, promote_options="default")

    def iter_batches(
        self, table: str, partition: str | None = None, columns: Sequence[str] | None = None,
        batch_size: int = 4096,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a partition in record batches (bounded memory for large shards)."""
        uri = self.uri(table, partition)
        path, fs = self._arrow_path(uri)
        try:
            dataset = ds.dataset(path, filesystem=fs, format="parquet")
            yield from dataset.to_batches(columns=columns, batch_size=batch_size)
        except FileNotFoundError:
            raise FileNotFoundError(f"table {table!r} partition {partition!r} not found") from None
        except OSError as exc:
            raise self._read_error(exc, uri) from exc

    def read_file(self, *parts: str) -> bytes:
        return self.objects.read_bytes(self.file_uri(*parts))

    # -- helpers ---------------------------------------------------------------------------
    def _arrow_path(self, uri: str) -> tuple[str, object]:
        if is_s3(uri):
            bucket, key = split_s3_uri(uri)
            return f"{bucket}/{key}", self.objects.clients.arrow
        return str(local_path(uri)), None

    @staticmethod
    def _read_error(exc: OSError, uri: str) -> StorageError:
        if is_s3(uri):
            return translate_s3_error(exc, uri, "reading")
        return StorageError(f"cannot read {uri}: {exc}")


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Parquet leaf paths worth dictionary-encoding: all but floating point.

    Probabilities, boxes and embeddings hardly ever repeat, and a dictionary attempt on them
    (kept until its 1 MiB page fills) made them ~1.6x their plain size: 6.8 KB instead of
    4.6 KB for a 1,152-value embedding. Ids, labels and strings repeat and stay encoded."""
    return [path for field in schema for path, type_ in _leaves(field.name, field.type)
            if not pa.types.is_floating(type_)]


def _leaves(path: str, type_: pa.DataType) -> Iterator[tuple[str, pa.DataType]]:
    """(Parquet leaf column path, Arrow type); lists are named ``name.list.element``."""
    if pa.types.is_struct(type_):
        for child in type_:
            yield from _leaves(f"{path}.{child.name}", child.type)
    elif pa.types.is_list(type_) or pa.types.is_large_list(type_) or \
            pa.types.is_fixed_size_list(type_):
        yield from _leaves(f"{path}.list.element", type_.value_type)
    else:
        yield path, type_


def local_root(path: str | Path, needed_for: str = "") -> Path:
    """Local folder behind a storage root, for tools (MLflow's SQLite) that need a real path."""
    uri = to_uri(path)
    if is_s3(uri):
        raise StorageError(f"{uri} is not a local folder{needed_for}")
    return local_path(uri)
