"""Fetch and unpack the official COCO 2017 archives (an optional first step before ingestion).

The archives are large (the val images alone are 815 MB), so a download must survive a dropped
connection: bytes go to ``<name>.part``, a re-run resumes it with an HTTP ``Range`` request, and
the final name only appears once the size (and checksum, when known) is verified. Extraction
refuses entries that would land outside the target folder (zip-slip), because archive contents
are untrusted input.

Layout under ``dest``: archives in ``dest/archives/<file>``, contents unpacked into ``dest``
(``annotations/instances_val2017.json``, ``val2017/*.jpg``, ...).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import requests
import urllib3

from al_assets.core.storage.files import atomic_path, file_digest, replace_durably

DEFAULT_BASE_URL = "http://images.cocodataset.org"
ANNOTATIONS_2017 = "annotations/annotations_trainval2017.zip"
VAL_IMAGES_2017 = "zips/val2017.zip"
DEFAULT_FILES: tuple[str, ...] = (ANNOTATIONS_2017, VAL_IMAGES_2017)

# Published sizes and SHA-256 of the official files, cross-checked against several independent
# public projects that pin them (their MD5s, f4bbac64... and 442b8da7..., agree as well).
# Files not listed here are simply not verified.
KNOWN_SIZES: Mapping[str, int] = {
    ANNOTATIONS_2017: 252_907_541,
    VAL_IMAGES_2017: 815_585_330,
}
KNOWN_CHECKSUMS: Mapping[str, str] = {
    ANNOTATIONS_2017: "sha256:113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
    VAL_IMAGES_2017: "sha256:4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
}

Progress = Callable[[str, int, int | None], None]
"""Called as ``progress(url, bytes_done, total_bytes_or_None)`` after every chunk."""

_HASH_LENGTHS = {32: "md5", 64: "sha256"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names the URL and what to do."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected checksum."""


class ArchiveError(DownloadError):
    """An archive is not a zip, is corrupt, or holds entries that would escape the target."""


class _Interrupted(Exception):
    """The transfer stopped early; the ``.part`` file holds what arrived and can be resumed."""


def download_coco(
    dest: Path,
    *,
    base_url: str = DEFAULT_BASE_URL,
    files: Sequence[str] = DEFAULT_FILES,
    checksums: Mapping[str, str] | None = None,
    chunk_size: int = 1 << 20,
    extract: bool = True,
    timeout: float = 30.0,
    retries: int = 2,
    progress: Progress | None = None,
) -> list[Path]:
    """Download ``files`` (paths relative to ``base_url``) into ``dest`` and unpack them.

    ``checksums`` maps a file to ``"sha256:<hex>"``/``"md5:<hex>"`` (bare hex also works).
    ``None`` means the published checksums and sizes of the official files; pass ``{}`` to
    verify nothing (a mirror with different content). Complete files are skipped, partial ones
    resumed. Returns the local archive paths, in ``files`` order.
    """
    dest = Path(dest)
    known = checksums is None
    expected = KNOWN_CHECKSUMS if checksums is None else checksums
    archives = []
    for name in files:
        relative = _safe_relative(name)
        archive = dest / "archives" / relative
        download_file(
            _join_url(base_url, relative),
            archive,
            checksum=expected.get(name),
            expected_size=KNOWN_SIZES.get(name) if known else None,
            chunk_size=chunk_size,
            timeout=timeout,
            retries=retries,
            progress=progress,
            validate=_require_zip,
        )
        if extract:
            extract_zip(archive, dest)
        archives.append(archive)
    return archives


def download_file(
    url: str,
    dest: Path,
    *,
    checksum: str | None = None,
    expected_size: int | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 30.0,
    retries: int = 2,
    progress: Progress | None = None,
    validate: Callable[[Path, str], None] | None = None,
    session: requests.Session | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` via ``dest.part``, resuming a partial file; returns ``dest``.

    A transfer cut short is retried (with ``Range``) up to ``retries`` times, then reported
    with the ``.part`` kept so that the next run resumes. ``validate(part, url)`` may reject
    the complete file before it gets its final name. An existing ``dest`` is trusted (it only
    appears after verification) but its checksum is re-checked when one is given.
    """
    dest = Path(dest)
    algorithm, digest = parse_checksum(checksum) if checksum else (None, None)
    if dest.exists():
        _check_existing(dest, algorithm, digest, expected_size)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    http = session or requests.Session()
    job = _Transfer(http, url, part, expected_size, chunk_size, timeout, progress)
    try:
        _fetch_with_retries(job, retries)
    finally:
        if session is None:
            http.close()
    _verify_part(part, url, expected_size, (algorithm, digest), validate)
    replace_durably(part, dest)  # .part keeps a stable name: the next run resumes it
    return dest


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"sha256:<hex>"`` into (algorithm, hex); bare hex is md5 or sha256 by length."""
    algorithm, _, digest = checksum.strip().lower().rpartition(":")
    if not algorithm:
        algorithm = _HASH_LENGTHS.get(len(digest), "")
    if algorithm not in ("md5", "sha256") or not re.fullmatch(r"[0-9a-f]+", digest):
        raise ValueError(
            f"unsupported checksum {checksum!r}: use 'md5:<32 hex>' or 'sha256:<64 hex>'"
        )
    if len(digest) != hashlib.new(algorithm).digest_size * 2:
        raise ValueError(f"checksum {checksum!r} has the wrong length for {algorithm}")
    return algorithm, digest


def extract_zip(archive: Path, target: Path) -> list[Path]:
    """Unpack ``archive`` into ``target``; returns the file paths it holds there.

    Every entry is checked before anything is written, so a malicious archive writes nothing.
    Members already present with the right size are skipped (a re-run is cheap); the others are
    written through a temporary name so a crash never leaves a half-written member.
    """
    archive, target = Path(archive), Path(target)
    _require_zip(archive, str(archive))
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        with zipfile.ZipFile(archive) as bundle:
            infos = bundle.infolist()
            paths = [_member_path(archive, root, info.filename) for info in infos]
            return [_extract_member(bundle, i, p) for i, p in zip(infos, paths) if p is not None]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as error:
        raise ArchiveError(
            f"{archive} is corrupt ({error}); delete it and download it again"
        ) from error


@dataclass(frozen=True)
class _Transfer:
    """Everything one file's transfer attempts share."""

    http: requests.Session
    url: str
    part: Path
    expected_size: int | None
    chunk_size: int
    timeout: float
    progress: Progress | None


def _fetch_with_retries(job: _Transfer, retries: int) -> None:
    """Run transfers until the ``.part`` is complete or the retries are spent."""
    for attempt in range(retries + 1):
        try:
            _fetch(job)
            return
        except _Interrupted as error:
            if attempt == retries:
                raise DownloadError(
                    f"download of {job.url} was cut short: {error}. {_part_state(job.part)}"
                ) from error


def _part_state(part: Path) -> str:
    """What is left of a partial file, for error messages."""
    if not part.exists():
        return f"Nothing was kept in {part}; run again to start afresh"
    return f"The partial file {part} ({part.stat().st_size} bytes) is kept; run again to resume"


def _fetch(job: _Transfer) -> None:
    """One GET that appends to the ``.part`` from where it stopped (or restarts it)."""
    offset = job.part.stat().st_size if job.part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # sizes must be the bytes on disk
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with _get(job, headers) as response:
        if response.status_code == 416 and offset:
            _accept_unsatisfiable(job, response, offset)
            return
        _raise_for_status(response, job.url)
        start, total = _resume_point(job, response, offset)
        _stream(job, response, start, total if total is not None else job.expected_size)


def _get(job: _Transfer, headers: dict[str, str]) -> requests.Response:
    """Open the streaming request, turning connection failures into a clear error."""
    try:
        return job.http.get(job.url, headers=headers, stream=True, timeout=job.timeout)
    except requests.ConnectionError as error:
        raise DownloadError(
            f"cannot connect to {job.url} ({error.__class__.__name__}). Check the base URL "
            "and the network, or put the archive in place by hand"
        ) from error
    except requests.Timeout as error:
        raise DownloadError(
            f"{job.url} did not answer within {job.timeout} s; try again later"
        ) from error


def _raise_for_status(response: requests.Response, url: str) -> None:
    """Reject anything but 200/206 with a message that says what to check."""
    code = response.status_code
    if code == 404:
        raise DownloadError(
            f"{url} was not found (HTTP 404): check the base URL and the file name"
        )
    if code not in (200, 206):
        raise DownloadError(f"{url} answered HTTP {code} {response.reason}; try again later")


def _resume_point(
    job: _Transfer, response: requests.Response, offset: int
) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's total size (``None`` if unknown).

    A 200 means the server ignored ``Range`` (or none was sent): the body is the whole file.
    """
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match and int(match.group(1)) == offset:
            total = match.group(3)
            return offset, None if total == "*" else int(total)
        job.part.unlink()
        raise _Interrupted(f"server resumed at an unexpected range {match and match.group(0)}")
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _accept_unsatisfiable(job: _Transfer, response: requests.Response, offset: int) -> None:
    """A 416 for ``bytes=<size>-`` means the part already holds the whole file."""
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    if match and int(match.group(1)) == offset:
        return
    job.part.unlink()
    raise _Interrupted("the server rejected the resume range; restarting from scratch")


def _stream(job: _Transfer, response: requests.Response, start: int, total: int | None) -> None:
    """Write the body into the part file at ``start``, flushed to disk before returning."""
    done = start
    with open(job.part, "r+b" if start else "wb") as handle:
        handle.truncate(start)
        handle.seek(start)
        try:
            for block in _blocks(response, job.chunk_size):
                handle.write(block)
                done += len(block)
                if job.progress:
                    job.progress(job.url, done, total)
        finally:
            handle.flush()
            os.fsync(handle.fileno())
    if total is not None and done < total:
        raise _Interrupted(f"received {done} of {total} bytes")


def _blocks(response: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """Yield the raw body as it arrives, so a dropped connection loses nothing received.

    ``iter_content`` would discard a partly filled chunk when the connection breaks.
    """
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise DownloadError(
            f"{response.url} was sent with Content-Encoding {encoding!r}, which cannot be "
            "resumed or size-checked; download it by hand into the archives folder"
        )
    while True:
        try:
            block = response.raw.read1(chunk_size, decode_content=False)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as error:
            raise _Interrupted(f"connection lost ({error.__class__.__name__})") from error
        if not block:
            return
        yield block


def _verify_part(
    part: Path,
    url: str,
    expected_size: int | None,
    checksum: tuple[str | None, str | None],
    validate: Callable[[Path, str], None] | None,
) -> None:
    """Check the complete part file; a bad one is deleted so the next run starts clean."""
    algorithm, digest = checksum
    try:
        size = part.stat().st_size
        if expected_size is not None and size != expected_size:
            raise DownloadError(
                f"{url} gave {size} bytes, expected {expected_size}; the partial file was "
                "deleted. Check that the URL serves the official file"
            )
        actual = file_digest(part, algorithm) if algorithm else None
        if actual != digest:
            raise ChecksumError(
                f"{url}: {algorithm} is {actual}, expected {digest}. The partial file was "
                "deleted; run again to download it afresh, or check the checksum you gave"
            )
        if validate:
            validate(part, url)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise


def _check_existing(
    path: Path, algorithm: str | None, digest: str | None, expected_size: int | None
) -> None:
    """Re-verify a finished file; never delete it silently, the user decides."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(
            f"{path} exists but holds {size} bytes, expected {expected_size}; "
            "delete it and run again to download it afresh"
        )
    actual = file_digest(path, algorithm) if algorithm else None
    if actual != digest:
        raise ChecksumError(
            f"{path} exists but its {algorithm} is {actual}, expected {digest}; "
            "delete it and run again to download it afresh"
        )


def _require_zip(path: Path, source: str) -> None:
    """Reject a non-zip (often an HTML error page saved under a .zip name)."""
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as handle:
        head = handle.read(16)
    raise ArchiveError(
        f"{source} is not a zip archive (it starts with {head!r}); the server may have sent "
        "an error page. Check the URL; the bad file was deleted or must be deleted by hand"
    )


def _member_path(archive: Path, root: Path, name: str) -> Path | None:
    """Where an entry goes under ``root`` (``None`` for a directory); raise if it escapes."""
    parts = [part for part in re.split(r"[\\/]+", name) if part not in ("", ".")]
    absolute = name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
    path = root.joinpath(*parts).resolve() if parts else root
    if absolute or ".." in parts or not path.is_relative_to(root):
        raise ArchiveError(
            f"{archive}: entry {name!r} would be written outside {root}; nothing was extracted. "
            "The archive is corrupt or malicious: delete it and download it from a trusted source"
        )
    if not parts or name.endswith(("/", "\\")):
        return None  # directories are created along with the files they hold
    return path


def _extract_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> Path:
    """Write one member atomically, skipping it when it is already there in full."""
    if path.is_file() and path.stat().st_size == info.file_size:
        return path
    with atomic_path(path) as temporary, bundle.open(info) as source, \
            open(temporary, "wb") as sink:
        shutil.copyfileobj(source, sink, 1 << 20)
    return path


def _safe_relative(name: str) -> PurePosixPath:
    """A requested file must be a plain relative path, so it cannot escape ``dest``."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"file {name!r} must be a relative path like 'zips/val2017.zip'")
    return relative


def _join_url(base_url: str, relative: PurePosixPath) -> str:
    """``base_url`` plus the percent-encoded relative path."""
    return f"{base_url.rstrip('/')}/{quote(relative.as_posix())}"
