"""The one atomic write of a local file: a hidden temporary sibling, fsync, rename.

Readers never see half a file, and a failed write leaves the previous version in place. Used
for local objects (ObjectStore), checkpoints, downloads and small JSON/PNG outputs.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_durably(written: Path | str, path: Path | str) -> None:
    """Give the complete file ``written`` the name ``path``: fsync, then rename, so the rename
    never lands before the bytes do. For writers whose temporary name must be stable (a
    download's resumable ``.part``); others use ``atomic_path``."""
    with open(written, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(written, path)


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """``data`` into ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def file_digest(path: Path | str, algorithm: str, chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, streamed so that large files never sit in memory."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            hasher.update(block)
    return hasher.hexdigest()
