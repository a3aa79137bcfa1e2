"""Atomic writes of small local files (JSON, PNG, Parquet bytes) outside an ObjectStore."""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write via a hidden temporary sibling and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
