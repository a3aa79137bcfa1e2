"""The shard loader keeps failures as data: a bad image is a row, never a crashed shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from al_assets.core.prediction.loader import ShardImages, make_loader


@pytest.fixture
def shard(tmp_path: Path) -> pa.Table:
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 24), (200, 10, 10)).save(good)
    other = tmp_path / "other.jpg"
    Image.new("RGB", (16, 16), (0, 90, 0)).save(other)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    rows = [(good, 32, 24), (tmp_path / "missing.jpg", 10, 10), (corrupt, 8, 8), (other, 16, 16)]
    return pa.table({"uri": [str(p) for p, _, _ in rows], "width": [w for _, w, _ in rows],
                     "height": [h for _, _, h in rows]})


@pytest.mark.parametrize("workers", [0, 1])
def test_items_come_back_in_shard_order_with_failures_as_data(shard: pa.Table, workers) -> None:
    items = [item for batch in make_loader(ShardImages(shard), batch_size=3, num_workers=workers)
             for item in batch]
    assert [item.index for item in items] == [0, 1, 2, 3]
    good, missing, corrupt, other = items
    assert good.tensor.shape == (3, 24, 32) and good.tensor.dtype.is_floating_point is False
    assert tuple(good.tensor[:, 0, 0].tolist()) == (200, 10, 10)
    assert missing.tensor is None and missing.stage == "read" and "missing.jpg" in missing.error
    assert corrupt.tensor is None and corrupt.stage == "decode" and corrupt.error
    assert other.tensor.shape == (3, 16, 16)


def test_the_guard_is_the_ingested_size_and_a_larger_file_is_a_decode_failure(
        shard: pa.Table) -> None:
    # 32 x 24 > 100 pixels, but ingestion verified this file at 32 x 24 (a raised max_pixels
    # must not have to be raised again for prediction and training)
    item = ShardImages(shard, max_pixels=100)[0]
    assert item.tensor is not None and item.tensor.shape == (3, 24, 32)
    # the file grew past its ingested size (replaced after ingestion): refused, not decoded
    lying = shard.set_column(1, "width", pa.array([8, 10, 8, 16])).set_column(
        2, "height", pa.array([8, 10, 8, 16]))
    item = ShardImages(lying, max_pixels=100)[0]
    assert item.tensor is None and item.stage == "decode"
    assert "decompression-bomb guard" in item.error and "good.png" in item.error
