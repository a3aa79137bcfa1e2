"""Hostile input: bombs, odd pixel formats, EXIF rotation, traversal, huge JSON, bad boxes."""

from __future__ import annotations

import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from al_assets.core.coco.ingest import IngestOptions, ingest_batch
from al_assets.core.errors import ImageDecodeError, StorageError
from al_assets.core.images import decode_rgb, read_header
from al_assets.core.storage import ObjectStore, to_uri


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (never decodable cheaply)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = png_bomb(100_000, 100_000)
    assert len(data) < 2000
    with pytest.raises(ImageDecodeError, match="decompression-bomb guard"):
        decode_rgb(data, "bomb.png")


def test_max_pixels_above_pillows_own_guard_is_honoured() -> None:
    data = png_bomb(20_000, 10_001)  # 200 MP: over Pillow's 178,956,970; only its header is read
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError, match="over twice the limit of 100,000,000 pixels"):
        read_header(data, "big.png")
    with pytest.raises(ImageDecodeError, match="over the limit of 150,000,000") as refused:
        read_header(data, "big.png", max_pixels=150_000_000)
    assert "raise max_pixels to at least 200020000" in str(refused.value)
    assert "ops: {ingestion: {config: {max_pixels: N}}}" in str(refused.value)
    header = read_header(data, "big.png", max_pixels=250_000_000)
    assert (header.width, header.height) == (20_000, 10_001)
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's guard is raised only during the decode


def test_full_decode_above_pillows_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow refuses > 2,000 pixels
    data = encode(Image.new("L", (100, 60), 128), "PNG")
    tensor = decode_rgb(data, "a.png", expected_size=(100, 60), max_pixels=10_000)
    assert tuple(tensor.shape) == (3, 60, 100) and int(tensor[0, 0, 0]) == 128
    with pytest.raises(ImageDecodeError, match="6,000 pixels, over the limit of 5,000"):
        decode_rgb(data, "a.png", max_pixels=5_000)
    with ThreadPoolExecutor(8) as pool:  # overlapping decodes never see a lowered guard
        shapes = set(pool.map(
            lambda n: tuple(decode_rgb(data, "a.png", max_pixels=10_000 + n % 3).shape), range(64)))
    assert shapes == {(3, 60, 100)}
    assert Image.MAX_IMAGE_PIXELS == 1_000


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "P", "LA", "RGBA", "L", "1"])
def test_pixel_formats_decode_to_rgb(mode: str) -> None:
    rgb = Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype("uint8"))
    if mode == "I;16":
        image = Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 20).astype("uint16"))
    else:
        image = rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    tensor = decode_rgb(encode(image, fmt), f"x.{fmt.lower()}", expected_size=(60, 40))
    assert tensor.shape == (3, 40, 60) and tensor.dtype.is_floating_point is False
    if mode == "I;16":
        assert int(tensor.max()) == 255  # scaled by range, not clipped to white


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # PNG: read from the header, not by decoding
def test_exif_rotation_applied_only_when_it_matches_the_declared_size(fmt: str) -> None:
    image = Image.new("RGB", (60, 40), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the displayed image is 40 x 60
    data = encode(image, fmt, exif=exif)
    assert read_header(data, "r.jpg").exif_orientation == 6
    assert tuple(decode_rgb(data, "r.jpg", expected_size=(40, 60)).shape) == (3, 60, 40)
    assert tuple(decode_rgb(data, "r.jpg", expected_size=(60, 40)).shape) == (3, 40, 60)
    with pytest.raises(ImageDecodeError, match="differs from the declared 50x50"):
        decode_rgb(data, "r.jpg", expected_size=(50, 50))


def test_empty_and_non_image_files() -> None:
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_rgb(b"", "empty.jpg")
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_rgb(b"<html>not an image</html>", "page.jpg")


def _pool(tmp_path: Path, images: list[dict], annotations: list[dict]) -> Path:
    (tmp_path / "annotations").mkdir(parents=True)
    (tmp_path / "images").mkdir()
    for image in images:
        path = tmp_path / "images" / image["file_name"]
        if image["id"] == 1:  # only the legitimate image exists
            Image.new("RGB", (image["width"], image["height"]), "gray").save(path, "JPEG")
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "thing", "supercategory": "x"}]}
    (tmp_path / "annotations" / "b.json").write_text(json.dumps(document))
    return tmp_path


def _ingest(root: Path, **options):
    return ingest_batch(to_uri(root / "annotations" / "b.json"), to_uri(root / "images"), "b",
                        ObjectStore(), IngestOptions(**options))


def test_traversal_and_odd_file_names(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (10, 10)).save(secret, "JPEG")
    images = [
        {"id": 1, "file_name": "ok.jpg", "width": 10, "height": 10},
        {"id": 2, "file_name": "../secret.jpg", "width": 10, "height": 10},
        {"id": 3, "file_name": "sub/../../secret.jpg", "width": 10, "height": 10},
        {"id": 4, "file_name": "C:\\Windows\\x.jpg", "width": 10, "height": 10},
        {"id": 5, "file_name": "bad\udcff.jpg", "width": 10, "height": 10},
        {"id": 6, "file_name": "caf\u00e9 \u263a.jpg", "width": 10, "height": 10},
    ]
    root = _pool(tmp_path / "pool", images, [])
    tables = _ingest(root)
    reasons = dict(zip(tables.rejects["record_id"].to_pylist(), tables.rejects["reason"].to_pylist(),
                       strict=True))
    assert "escapes the image root" in reasons[2] and "escapes the image root" in reasons[3]
    assert "escapes the image root" in reasons[4]
    assert "not valid UTF-8" in reasons[5]
    assert "not found" in reasons[6]  # a legal unicode name that simply is not there
    assert tables.images["image_id"].to_pylist() == [1]


def test_non_image_reasons_are_stable_between_runs(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "ok.jpg", "width": 10, "height": 10},
              {"id": 2, "file_name": "notes.jpg", "width": 10, "height": 10}]
    root = _pool(tmp_path, images, [])
    (root / "images" / "notes.jpg").write_text("just some text, not a JPEG")
    first, second = (_ingest(root).rejects["reason"].to_pylist() for _ in range(2))
    assert first == second and len(first) == 1
    assert "not a readable image" in first[0] and "0x" not in first[0] and "BytesIO" not in first[0]


def test_max_pixels_reaches_the_ingest_check(tmp_path: Path) -> None:
    root = _pool(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}], [])
    assert _ingest(root, max_pixels=1_200).images.num_rows == 1
    with pytest.raises(Exception, match="1,200 pixels, over the limit of 1,000"):
        _ingest(root, max_pixels=1_000)  # the only image is rejected: nothing usable


def test_huge_annotation_file_is_refused_without_parsing(tmp_path: Path) -> None:
    root = _pool(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}], [])
    with open(root / "annotations" / "b.json", "ab") as handle:  # sparse: no real disk use
        handle.truncate(1024**3 + 10)
    with pytest.raises(StorageError, match="over the limit of .* raise the limit"):
        _ingest(root, max_json_bytes=512 * 1024**2)


def test_boxes_outside_the_image_are_clipped_or_rejected(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [90, 40, 30, 30], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [200, 10, 5, 5], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, float("nan"), 5], "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "iscrowd": 0},
    ]
    tables = _ingest(_pool(tmp_path, images, annotations))
    assert tables.annotations["ann_id"].to_pylist() == [1]
    box = tables.annotations["bbox"][0].as_py()
    assert (box["xmax"], box["ymax"]) == (100.0, 50.0)
    reasons = " ".join(tables.rejects["reason"].to_pylist())
    assert "entirely outside" in reasons and "bbox must be [x, y, width, height]" in reasons
