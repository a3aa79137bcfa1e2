"""Byte-level access to local files and S3 objects behind one URI scheme.

URIs are ``s3://bucket/key`` or local (``file:///abs/path`` or a plain path). Writes are atomic
on both: a local file is written under a hidden temporary name in the same folder and renamed;
an S3 object is uploaded whole (a multipart upload only becomes visible when it completes), so a
crash never leaves a half-written object where a reader could see it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from al_assets.core.errors import StorageError
from al_assets.core.storage.files import atomic_path
from al_assets.core.storage.s3 import (
    S3Clients,
    S3Settings,
    is_not_found,
    split_s3_uri,
    translate_s3_error,
)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """The filesystem path of a local URI (``file://`` or plain path)."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri)


def to_uri(path_or_uri: str | Path) -> str:
    """Normalize to a URI: ``s3://`` kept, local paths made absolute ``file://`` URIs."""
    text = str(path_or_uri)
    if is_s3(text) or text.startswith("file://"):
        return text
    return Path(text).resolve().as_uri()


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a URI without losing its scheme."""
    tail = "/".join(p.strip("/") for p in parts if p)
    return f"{base.rstrip('/')}/{tail}" if tail else base


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str  # S3 ETag, or "mtime_ns-size" for local files: changes when content changes


class ObjectStore:
    """Reads, lists and atomically writes objects on local disk or S3."""

    def __init__(self, s3: S3Settings | None = None) -> None:
        self.clients = S3Clients(s3)

    # -- reading ---------------------------------------------------------------------------
    def read_bytes(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        """Whole object as bytes; ``FileNotFoundError`` when absent, ``StorageError`` otherwise."""
        size = self.info(uri).size
        if max_bytes is not None and size > max_bytes:
            raise StorageError(
                f"{uri} is {size:,} bytes, over the limit of {max_bytes:,}: raise the limit "
                "in the config if this file is expected to be this large"
            )
        if not is_s3(uri):
            return local_path(uri).read_bytes()
        bucket, key = split_s3_uri(uri)
        try:
            return self.clients.boto3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore raises many unrelated types
            raise self._s3_error(exc, uri, "reading") from exc

    def info(self, uri: str) -> ObjectInfo:
        if not is_s3(uri):
            path = local_path(uri)
            try:
                st = path.stat()
            except FileNotFoundError:
                raise FileNotFoundError(f"{path} does not exist") from None
            if not path.is_file():
                raise StorageError(f"{path} is not a file")
            return ObjectInfo(uri, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")
        bucket, key = split_s3_uri(uri)
        try:
            head = self.clients.boto3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise self._s3_error(exc, uri, "inspecting") from exc
        return ObjectInfo(uri, int(head["ContentLength"]), head["ETag"].strip('"'))

    def exists(self, uri: str) -> bool:
        try:
            self.info(uri)
        except FileNotFoundError:
            return False
        return True

    def list(
        self, prefix_uri: str, *, suffix: str = "", start_after: str | None = None,
        max_keys: int = 1000,
    ) -> tuple[list[ObjectInfo], bool]:
        """One page of objects under a prefix, sorted by URI, after ``start_after``.

        Returns ``(objects, truncated)``. Paging keeps a listing of many thousands of objects
        within a bounded time per call (sensor ticks rely on it).
        """
        if is_s3(prefix_uri):
            return self._list_s3(prefix_uri, suffix, start_after, max_keys)
        return self._list_local(prefix_uri, suffix, start_after, max_keys)

    def _list_local(
        self, prefix_uri: str, suffix: str, start_after: str | None, max_keys: int
    ) -> tuple[list[ObjectInfo], bool]:
        root = local_path(prefix_uri)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")
        uris = sorted(
            to_uri(p) for p in root.iterdir() if p.is_file() and p.name.endswith(suffix)
            and not p.name.startswith(".")
        )
        if start_after:
            uris = [u for u in uris if u > start_after]
        page = uris[:max_keys]
        return [self.info(u) for u in page], len(uris) > max_keys

    def _list_s3(
        self, prefix_uri: str, suffix: str, start_after: str | None, max_keys: int
    ) -> tuple[list[ObjectInfo], bool]:
        bucket, prefix = split_s3_uri(prefix_uri.rstrip("/") + "/")
        kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys, "Delimiter": "/"}
        if start_after:
            kwargs["StartAfter"] = split_s3_uri(start_after)[1]
        try:
            response = self.clients.boto3.list_objects_v2(**kwargs)
        except Exception as exc:
            raise self._s3_error(exc, prefix_uri, "listing") from exc
        objects = [
            ObjectInfo(f"s3://{bucket}/{o['Key']}", int(o["Size"]), o["ETag"].strip('"'))
            for o in response.get("Contents", [])
            if o["Key"].endswith(suffix) and not o["Key"].rsplit("/", 1)[-1].startswith(".")
        ]
        return objects, bool(response.get("IsTruncated"))

    def presigned_url(self, uri: str, expires_s: int) -> str:
        """A GET URL of an S3 object that works without credentials for ``expires_s`` seconds.

        Signed here without a request to S3, so a missing object shows only when the URL is
        used; it stops working early if the signing credentials are temporary and expire first.
        """
        bucket, key = split_s3_uri(uri)
        try:
            return self.clients.boto3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s)
        except Exception as exc:  # e.g. botocore's NoCredentialsError
            raise self._s3_error(exc, uri, "presigning") from exc

    # -- writing ---------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Atomically replace the object at ``uri`` with ``data``."""
        with self.atomic_local_file(uri) as tmp:
            tmp.write_bytes(data)

    @contextmanager
    def atomic_local_file(self, uri: str) -> Iterator[Path]:
        """Yield a local temporary path; on success it becomes ``uri`` atomically.

        On an exception nothing is published and the temporary file is removed, so the previous
        version (if any) stays in place.
        """
        if is_s3(uri):
            with tempfile.TemporaryDirectory(prefix="al_assets-") as tmpdir:
                tmp = Path(tmpdir) / "object"
                yield tmp
                self._upload(tmp, uri)
            return
        final = local_path(uri)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create folder {final.parent}: {exc}") from exc
        _remove_stale_temporaries(final)
        try:
            with atomic_path(final) as tmp:
                yield tmp
        except OSError as exc:
            raise StorageError(
                f"writing {final} failed ({exc}); the previous version is intact — free space "
                "or fix permissions, then retry"
            ) from exc

    def _upload(self, path: Path, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        try:
            self.clients.boto3.upload_file(str(path), bucket, key)
        except Exception as exc:
            raise self._s3_error(exc, uri, "writing") from exc

    def delete(self, uri: str) -> None:
        if not is_s3(uri):
            path = local_path(uri)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            return
        bucket, key = split_s3_uri(uri)
        try:
            self.clients.boto3.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise self._s3_error(exc, uri, "deleting") from exc

    @staticmethod
    def _s3_error(exc: BaseException, uri: str, action: str) -> Exception:
        if is_not_found(exc):
            return FileNotFoundError(f"{uri} does not exist")
        return translate_s3_error(exc, uri, action)


STALE_AFTER_S = 3600.0


def _remove_stale_temporaries(final: Path) -> None:
    """Delete temporaries of ``final`` left by writers killed over an hour ago.

    Readers never see them (hidden names, never listed); this only reclaims the space. Recent
    ones may belong to a writer still running and are kept.
    """
    cutoff = time.time() - STALE_AFTER_S
    for tmp in final.parent.glob(f".{final.name}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass  # a concurrent writer finished or removed it first
