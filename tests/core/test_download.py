"""COCO download against a real HTTP server on 127.0.0.1 that can drop, ignore Range or 404."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from al_assets.core.coco.download import (
    ANNOTATIONS_2017,
    VAL_IMAGES_2017,
    ArchiveError,
    ChecksumError,
    DownloadError,
    download_coco,
    download_file,
    extract_zip,
    parse_checksum,
)

CHUNK = 4096
INSTANCES = {
    "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48}],
    "annotations": [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20], "area": 200.0,
         "iscrowd": 0}
    ],
    "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
}


class FileServer:
    """Serves in-memory files; records every request's path and Range header."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.drops_left = 0  # how many responses to cut short
        self.drop_after = 0  # body bytes sent before cutting
        self.ignore_range = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def ranges(self) -> list[str | None]:
        return [header for _, header in self.requests]

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                header = self.headers.get("Range")
                server.requests.append((self.path, header))
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404, "no such file")
                    return
                start = 0 if header is None or server.ignore_range else _range_start(header)
                if start >= len(body) and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._send(body, start)

            def _send(self, body: bytes, start: int) -> None:
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "none" if server.ignore_range else "bytes")
                self.end_headers()
                payload = body[start:]
                if server.drops_left:
                    server.drops_left -= 1
                    self.wfile.write(payload[: server.drop_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        return Handler


def _range_start(header: str) -> int:
    assert header.startswith("bytes=") and header.endswith("-"), header
    return int(header[len("bytes="):-1])


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    images = {f"val2017/{i:012d}.jpg": _jpeg(i) for i in range(1, 4)}
    return {
        ANNOTATIONS_2017: _zip(
            {"annotations/instances_val2017.json": json.dumps(INSTANCES).encode()}
        ),
        VAL_IMAGES_2017: _zip(images),
    }


@pytest.fixture
def server(archives: dict[str, bytes]) -> Iterator[FileServer]:
    with FileServer(dict(archives)) as running:
        yield running


def _get_val(server: FileServer, dest: Path, **kwargs: object) -> Path:
    return download_file(
        f"{server.url}/{VAL_IMAGES_2017}", dest / "val2017.zip", chunk_size=CHUNK, **kwargs
    )


def test_full_download_and_unzip(server: FileServer, archives: dict[str, bytes], tmp_path: Path):
    seen: list[tuple[str, int, int | None]] = []
    paths = download_coco(
        tmp_path, base_url=server.url, checksums={}, chunk_size=CHUNK,
        progress=lambda url, done, total: seen.append((url, done, total)),
    )

    names = [ANNOTATIONS_2017, VAL_IMAGES_2017]
    assert paths == [tmp_path / "archives" / name for name in names]
    assert [path.read_bytes() for path in paths] == [archives[name] for name in names]
    instances = json.loads((tmp_path / "annotations" / "instances_val2017.json").read_text())
    assert instances == INSTANCES
    with Image.open(tmp_path / "val2017" / "000000000002.jpg") as image:
        assert image.size == (64, 48)
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.extracting"))
    last = {url: (done, total) for url, done, total in seen}
    assert last[f"{server.url}/{VAL_IMAGES_2017}"] == (len(archives[VAL_IMAGES_2017]),) * 2


def test_resume_after_truncated_download(
    server: FileServer, archives: dict[str, bytes], tmp_path: Path
):
    size = len(archives[VAL_IMAGES_2017])
    server.drops_left, server.drop_after = 1, size // 2

    with pytest.raises(DownloadError, match="cut short.*is kept; run again to resume"):
        _get_val(server, tmp_path, retries=0)
    part = tmp_path / "val2017.zip.part"
    assert 0 < part.stat().st_size < size and not (tmp_path / "val2017.zip").exists()

    done = _get_val(server, tmp_path, retries=0)
    assert done.read_bytes() == archives[VAL_IMAGES_2017] and not part.exists()
    assert server.ranges() == [None, f"bytes={size // 2}-"]


def test_retries_resume_within_one_call(
    server: FileServer, archives: dict[str, bytes], tmp_path: Path
):
    size = len(archives[VAL_IMAGES_2017])
    server.drops_left, server.drop_after = 2, size // 3

    done = _get_val(server, tmp_path, retries=2)

    assert done.read_bytes() == archives[VAL_IMAGES_2017]
    assert server.ranges() == [None, f"bytes={size // 3}-", f"bytes={2 * (size // 3)}-"]


def test_server_ignoring_range_restarts_from_zero(
    server: FileServer, archives: dict[str, bytes], tmp_path: Path
):
    # Wrong bytes in the part: appending to them instead of restarting would corrupt the file.
    (tmp_path / "val2017.zip.part").write_bytes(b"x" * 100)
    server.ignore_range = True

    done = _get_val(server, tmp_path)

    assert done.read_bytes() == archives[VAL_IMAGES_2017]
    assert server.ranges() == ["bytes=100-"]


def test_complete_part_file_is_finished_on_416(
    server: FileServer, archives: dict[str, bytes], tmp_path: Path
):
    (tmp_path / "val2017.zip.part").write_bytes(archives[VAL_IMAGES_2017])

    done = _get_val(server, tmp_path)

    assert done.read_bytes() == archives[VAL_IMAGES_2017]
    assert server.ranges() == [f"bytes={len(archives[VAL_IMAGES_2017])}-"]


def test_server_that_keeps_dropping_gives_clear_error(server: FileServer, tmp_path: Path):
    server.drops_left, server.drop_after = 10, 1000

    with pytest.raises(DownloadError, match=r"val2017\.zip was cut short.*\(2000 bytes\) is kept"):
        _get_val(server, tmp_path, retries=1)
    assert (tmp_path / "val2017.zip.part").stat().st_size == 2000
    assert len(server.requests) == 2


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_checksum_verified(
    server: FileServer, archives: dict[str, bytes], tmp_path: Path, algorithm: str
):
    digest = hashlib.new(algorithm, archives[VAL_IMAGES_2017]).hexdigest()

    done = _get_val(server, tmp_path, checksum=f"{algorithm}:{digest}")

    assert done.read_bytes() == archives[VAL_IMAGES_2017]


def test_checksum_mismatch_deletes_partial_file(server: FileServer, tmp_path: Path):
    wrong = "sha256:" + "0" * 64

    with pytest.raises(ChecksumError, match=r"val2017\.zip: sha256 is [0-9a-f]{64}, expected 0+"):
        download_coco(
            tmp_path, base_url=server.url, files=[VAL_IMAGES_2017],
            checksums={VAL_IMAGES_2017: wrong}, chunk_size=CHUNK,
        )
    assert not any((tmp_path / "archives").rglob("*val2017*"))
    assert not (tmp_path / "val2017").exists()


def test_existing_file_with_wrong_checksum_is_reported_not_deleted(
    server: FileServer, tmp_path: Path
):
    (tmp_path / "val2017.zip").write_bytes(b"stale")

    with pytest.raises(ChecksumError, match="exists but its md5.*delete it"):
        _get_val(server, tmp_path, checksum="md5:" + "0" * 32)
    assert (tmp_path / "val2017.zip").read_bytes() == b"stale" and server.requests == []


def test_http_404_names_the_url(server: FileServer, tmp_path: Path):
    with pytest.raises(DownloadError, match=r"/zips/train2017\.zip was not found \(HTTP 404\)"):
        download_coco(tmp_path, base_url=server.url, files=["zips/train2017.zip"], checksums={})
    assert not any(tmp_path.rglob("*.zip*"))


def test_connection_refused_names_the_url(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"

    with pytest.raises(DownloadError, match=f"cannot connect to {base}/annotations/"):
        download_coco(tmp_path, base_url=base, checksums={}, timeout=5)


def test_non_zip_response_is_rejected_and_deleted(server: FileServer, tmp_path: Path):
    server.files[VAL_IMAGES_2017] = b"<html>Service unavailable</html>"

    with pytest.raises(ArchiveError, match=r"val2017\.zip is not a zip archive.*<html>"):
        download_coco(tmp_path, base_url=server.url, files=[VAL_IMAGES_2017], checksums={})
    assert not any((tmp_path / "archives").rglob("*val2017*"))


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/escaped.txt", "a/../../escaped.txt"])
def test_zip_slip_entry_is_rejected_before_anything_is_written(tmp_path: Path, evil: str):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"safe/first.txt": b"ok", evil: b"pwned"}))
    target = tmp_path / "out"

    with pytest.raises(ArchiveError, match=f"entry {evil!r} would be written outside"):
        extract_zip(archive, target)
    assert not (tmp_path / "escaped.txt").exists() and not (target / "safe").exists()


def test_rerun_skips_download_and_extraction(server: FileServer, tmp_path: Path):
    download_coco(tmp_path, base_url=server.url, checksums={}, chunk_size=CHUNK)
    image = tmp_path / "val2017" / "000000000001.jpg"
    stamp = image.stat().st_mtime_ns
    requests_before = len(server.requests)

    download_coco(tmp_path, base_url=server.url, checksums={}, chunk_size=CHUNK)

    assert len(server.requests) == requests_before
    assert image.stat().st_mtime_ns == stamp


def test_rerun_restores_a_deleted_member(server: FileServer, tmp_path: Path):
    download_coco(tmp_path, base_url=server.url, checksums={})
    image = tmp_path / "val2017" / "000000000003.jpg"
    original = image.read_bytes()
    image.unlink()

    download_coco(tmp_path, base_url=server.url, checksums={})

    assert image.read_bytes() == original


def test_corrupt_member_gives_clear_error(tmp_path: Path):
    archive = tmp_path / "corrupt.zip"
    data = bytearray(_zip({"a.txt": b"hello world" * 100}))
    data[data.index(b"hello")] ^= 0xFF  # flip a stored byte: the CRC no longer matches
    archive.write_bytes(bytes(data))

    with pytest.raises(ArchiveError, match=r"corrupt\.zip is corrupt.*download it again"):
        extract_zip(archive, tmp_path / "out")


def test_parse_checksum_rejects_unknown_formats():
    assert parse_checksum("MD5:" + "A" * 32) == ("md5", "a" * 32)
    assert parse_checksum("b" * 64) == ("sha256", "b" * 64)
    with pytest.raises(ValueError, match="unsupported checksum"):
        parse_checksum("crc32:1234abcd")
    with pytest.raises(ValueError, match="wrong length for sha256"):
        parse_checksum("sha256:abc")


def test_download_coco_rejects_paths_escaping_dest(tmp_path: Path):
    with pytest.raises(ValueError, match="must be a relative path"):
        download_coco(tmp_path, base_url="http://127.0.0.1:9", files=["../zips/x.zip"])
