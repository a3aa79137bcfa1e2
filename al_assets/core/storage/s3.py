"""S3 connection settings shared by boto3 (writes, listings) and pyarrow (Parquet reads).

Both clients read the same :class:`S3Settings`, so a custom endpoint (MinIO, moto, Ceph) or
explicit keys configured once apply everywhere. Unset fields fall back to the standard AWS
chain (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, profiles, instance roles).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from al_assets.core.errors import StorageError

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "UnrecognizedClientException",
    "403",  # HEAD requests carry no error body: a bare 403 is a refused key or a missing grant
    "Forbidden",
}


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and how to authenticate; ``None`` means "use the AWS default chain"."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )

    def resolved_region(self) -> str:
        return self.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get(
            "AWS_REGION", "us-east-1"
        )

    def boto3_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"region_name": self.resolved_region()}
        if self.resolved_endpoint():
            kwargs["endpoint_url"] = self.resolved_endpoint()
        if self.access_key_id:
            kwargs["aws_access_key_id"] = self.access_key_id
            kwargs["aws_secret_access_key"] = self.secret_access_key
            if self.session_token:
                kwargs["aws_session_token"] = self.session_token
        return kwargs

    def pyarrow_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"region": self.resolved_region()}
        endpoint = self.resolved_endpoint()
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        key = self.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = self.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            kwargs["access_key"] = key
            kwargs["secret_key"] = secret
            token = self.session_token or os.environ.get("AWS_SESSION_TOKEN")
            if token:
                kwargs["session_token"] = token
        return kwargs


class S3Clients:
    """Lazily built boto3 client and pyarrow filesystem for one :class:`S3Settings`."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        self.settings = settings or S3Settings()

    @cached_property
    def boto3(self) -> Any:
        import boto3
        from botocore.config import Config

        # s3v4 everywhere: boto3 still presigns with the deprecated SigV2 unless told
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10,
                        signature_version="s3v4")
        return boto3.client("s3", config=config, **self.settings.boto3_kwargs())

    @cached_property
    def arrow(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(**self.settings.pyarrow_kwargs())


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; rejects anything else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def translate_s3_error(exc: BaseException, uri: str, action: str) -> StorageError:
    """Turn a botocore/pyarrow error into a StorageError that says what to do."""
    code = _error_code(exc)
    message = str(exc)
    if code in _CREDENTIAL_CODES or "ACCESS_DENIED" in message or "InvalidAccessKeyId" in message:
        hint = (
            "S3 rejected the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the "
            "storage resource's s3 settings) and that they may access this bucket"
        )
    elif "Unable to locate credentials" in message or type(exc).__name__ == "NoCredentialsError":
        hint = (
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE, or the resource's s3 settings; AWS_ENDPOINT_URL for a non-AWS server)"
        )
    elif code == "NoSuchBucket" or "NoSuchBucket" in message:
        hint = "the bucket does not exist: create it or fix the URI"
    elif code in {"NoSuchKey", "404", "NotFound"}:
        hint = "the object does not exist: check the path"
    elif "Could not connect" in message or "EndpointConnectionError" in type(exc).__name__:
        hint = "S3 endpoint unreachable: check AWS_ENDPOINT_URL / network"
    else:
        hint = "S3 request failed"
    return StorageError(f"{action} {uri}: {hint} ({code or type(exc).__name__}: {message})")


def is_not_found(exc: BaseException) -> bool:
    return _error_code(exc) in {"NoSuchKey", "404", "NotFound"} or isinstance(
        exc, FileNotFoundError
    )


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None
