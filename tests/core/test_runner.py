"""predict_shard alone: batching, one culprit lost instead of a batch, progress, row groups."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from al_assets.core import schemas
from al_assets.core.prediction.runner import (
    PredictOptions,
    ShardRef,
    one_copy_per_key,
    predict_shard,
    to_host,
)

REF = ShardRef("m", 3, "batch-000.s000")


@pytest.fixture
def shard(tmp_path: Path) -> pa.Table:
    """Six images, widths 20..25 px (the scripted detector tells them apart by width), one
    missing file."""
    rows = []
    for k in range(6):
        path = tmp_path / f"im{k}.png"
        if k != 4:  # im4 is missing: a read error, never given to the detector
            Image.new("RGB", (20 + k, 16), (10 * k, 0, 0)).save(path)
        rows.append({"image_id": 100 + k, "uri": str(path), "width": 20 + k, "height": 16})
    return pa.Table.from_pylist(rows)


class Scripted:
    """A detector of ``k`` boxes for an image of width ``20 + k``; raises on ``poison`` widths,
    as a model can on one odd input (a CUDA error, a shape it cannot take)."""

    def __init__(self, poison: set[int]) -> None:
        self.poison, self.calls = poison, []

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        widths = [int(t.shape[-1]) for t in images]
        self.calls.append(widths)
        if self.poison & set(widths):
            raise RuntimeError("the model cannot take this image")
        return [self._output(w - 20) for w in widths]

    @staticmethod
    def _output(k: int) -> dict[str, torch.Tensor]:
        dist = torch.tensor([[0.7, 0.2, 0.1]] * k)
        return {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]] * k).reshape(k, 4),
                "scores": torch.full((k,), 0.7), "labels": torch.ones(k, dtype=torch.int64),
                "topk_labels": torch.tensor([[1, 2]] * k).reshape(k, 2),
                "topk_scores": torch.tensor([[0.7, 0.2]] * k).reshape(k, 2),
                "distribution": dist.reshape(k, 3)}


def run(shard: pa.Table, tmp_path: Path, detect, **options):
    path = tmp_path / "out.parquet"
    progress: list[tuple[int, int]] = []
    with pq.ParquetWriter(path, schemas.DETECTIONS) as writer:
        stats = predict_shard(shard, detect, writer, REF, device=torch.device("cpu"),
                              options=PredictOptions(**options),
                              progress=lambda done, total: progress.append((done, total)))
    return stats, pq.read_table(path), progress, pq.ParquetFile(path).metadata.num_row_groups


def test_every_image_is_a_row_or_an_error_and_the_culprit_alone_is_lost(shard, tmp_path):
    detect = Scripted(poison={22})  # im2 breaks the model
    stats, table, progress, _ = run(shard, tmp_path, detect, batch_size=3)
    assert table.schema.equals(schemas.DETECTIONS)
    assert table["image_id"].to_pylist() == [100, 101, 103, 105]  # shard order kept
    assert [len(d) for d in table["detections"].to_pylist()] == [0, 1, 3, 5]
    assert set(table["model_version"].to_pylist()) == {3} and set(table["shard"].to_pylist()) == {
        "batch-000.s000"}
    errors = {e["image_id"]: (e["stage"], e["error"]) for e in stats.error_rows}
    assert errors[102] == ("predict", "the model cannot take this image")
    assert errors[104][0] == "read" and "im4.png" in errors[104][1]
    assert (stats.images, stats.errors, stats.detections) == (4, 2, 9)
    # the failing batch [20, 21, 22] was retried image by image; im4 never reached the model
    assert detect.calls == [[20, 21, 22], [20], [21], [22], [23, 25]]
    assert progress == [(3, 6), (6, 6)]


def test_results_are_written_in_row_groups_of_bounded_size(shard, tmp_path):
    stats, table, _, groups = run(shard, tmp_path, Scripted(poison=set()), batch_size=1,
                                  rows_per_group=2)
    assert stats.images == 5 and table.num_rows == 5
    assert groups == 3  # 2 + 2 + 1 images: results never held for the whole shard


def test_one_copy_per_key_returns_what_a_copy_per_tensor_does() -> None:
    """The GPU path's batched copy (run here on CPU tensors, where it is the same arithmetic):
    every image's tensors come back with their shapes, values and dtypes, floats as float32,
    images without boxes included."""
    gen = torch.Generator().manual_seed(0)
    outputs = [{"boxes": torch.rand(n, 4, generator=gen),
                "scores": torch.rand(n, generator=gen).half(),
                "labels": torch.randint(1, 9, (n,), generator=gen),
                "embedding": torch.rand(16, generator=gen)} for n in (3, 0, 5)]
    batched, plain = one_copy_per_key(outputs), to_host(outputs)
    assert len(batched) == len(plain) == 3
    for got, want, original in zip(batched, plain, outputs, strict=True):
        assert list(got) == list(original)
        for key, value in want.items():
            assert got[key].dtype == value.dtype == (
                torch.float32 if original[key].is_floating_point() else original[key].dtype)
            assert got[key].shape == original[key].shape
            assert torch.equal(got[key], value)
    assert to_host([]) == []
    assert plain[0]["boxes"] is outputs[0]["boxes"]  # on the CPU: no copy, no concatenation
