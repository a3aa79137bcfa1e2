"""The storage policy: what the prediction step writes, and that it changes no measure it keeps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from al_assets.core import schemas
from al_assets.core.loop.selection import ScoringSettings, rank_images
from al_assets.core.prediction.arrow import predictions_batch
from al_assets.core.prediction.storage import KEEP_ALL, StoragePolicy, apply_policy
from al_assets.core.scoring.box_scores import box_scores
from al_assets.core.defaults import DEFAULT_MIN_SCORE
from al_assets.core.storage import TableStore

MEASURES = ("p1", "p2", "least_confidence", "least_confidence_norm", "margin",
            "margin_uncertainty", "ratio", "entropy", "entropy_norm")
COCO_CLASSES = 90  # torchvision's COCO detectors: 91 classes incl. background
EMBEDDING = 1152  # ssdlite320's pooled backbone maps


def _outputs(rng: np.random.Generator, images: int, boxes: int, classes: int,
             embedding: int = 0, min_boxes: int = 0) -> list[dict[str, torch.Tensor]]:
    """Detector-like outputs: scores from 0.001 to ~1, best first; peaked and flat
    distributions (a background box's foreground softmax is near uniform)."""
    out = []
    for _ in range(images):
        n = int(rng.integers(min_boxes, boxes + 1))
        sharpness = rng.uniform(0.1, 6.0, (n, 1))
        logits = rng.standard_normal((n, classes)) * sharpness
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        scores = np.sort(rng.beta(0.3, 3.0, n) * 0.999 + 0.001)[::-1].astype(np.float32)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :5]
        xy = rng.uniform(0, 300, (n, 2)).astype(np.float32)
        item = {
            "boxes": torch.from_numpy(np.concatenate([xy, xy + 20], axis=1)),
            "scores": torch.from_numpy(scores.copy()),
            "labels": torch.from_numpy(top[:, 0] + 1),
            "topk_labels": torch.from_numpy(top + 1),
            "topk_scores": torch.from_numpy(np.take_along_axis(probs, top, 1)),
            "distribution": torch.from_numpy(probs),
        }
        if embedding:
            item["embedding"] = torch.from_numpy(rng.standard_normal(embedding).astype(np.float32))
        out.append(item)
    return out


def _predictions(outputs: list[dict[str, torch.Tensor]], policy: StoragePolicy) -> pa.Table:
    n = len(outputs)
    images = pa.table({"image_id": pa.array(np.arange(1, n + 1)), "uri": [f"u{i}" for i in range(n)],
                       "width": pa.array([320] * n, pa.int32()),
                       "height": pa.array([320] * n, pa.int32())})
    batch = predictions_batch(images, list(range(n)), outputs, model_name="m", model_version=1,
                              shard="s")
    return pa.Table.from_batches([apply_policy(batch, policy)], schemas.DETECTIONS)


def _parquet_bytes(table: pa.Table, folder: Path) -> int:
    """Size of ``table`` as the prediction asset writes it (TableStore: zstd, no float dictionary)."""
    uri = TableStore(folder).write("detections", table, "v/s")
    return Path(uri[len("file://"):]).stat().st_size


def test_floor_cap_and_top_k_with_every_image_kept() -> None:
    outputs = _outputs(np.random.default_rng(0), images=30, boxes=300, classes=8)
    full = _predictions(outputs, KEEP_ALL)
    stored = _predictions(outputs, StoragePolicy(min_score=0.05, max_detections=4, top_k=2))
    assert stored["image_id"].to_pylist() == full["image_id"].to_pylist()
    for before, after in zip(full["detections"].to_pylist(), stored["detections"].to_pylist(),
                             strict=True):
        best = [d for d in before if d["score"] >= np.float32(0.05)][:4]
        assert [d["score"] for d in after] == [d["score"] for d in best]  # best first, as given
        assert [d["label_ids"] for d in after] == [d["label_ids"][:2] for d in best]
        assert [d["distribution"] for d in after] == [d["distribution"] for d in best]
    no_distribution = _predictions(outputs, StoragePolicy(distribution=False))
    flat = pc.list_flatten(no_distribution["detections"])
    assert len(flat) and pc.struct_field(flat, "distribution").null_count == len(flat)


def test_cap_keeps_the_highest_scores_whatever_their_order() -> None:
    outputs = _outputs(np.random.default_rng(1), images=3, boxes=50, classes=4)
    for item in outputs:  # shuffled: the cap must not trust the detector's order
        order = torch.randperm(item["scores"].shape[0], generator=torch.Generator().manual_seed(0))
        for key in item:
            item[key] = item[key][order]
    stored = _predictions(outputs, StoragePolicy(min_score=0.0, max_detections=5))
    for item, row in zip(outputs, stored["detections"].to_pylist(), strict=True):
        expected = sorted(item["scores"].tolist(), reverse=True)[:5]
        assert sorted((d["score"] for d in row), reverse=True) == expected


def test_default_policy_changes_no_measure_and_no_ranking() -> None:
    """The stored default must keep every measure of every box the views and rankings see
    (score >= DEFAULT_MIN_SCORE) exactly, 91-class detector-like outputs; README "Storage"."""
    outputs = _outputs(np.random.default_rng(2), images=60, boxes=300, classes=COCO_CLASSES)
    full, stored = _predictions(outputs, KEEP_ALL), _predictions(outputs, StoragePolicy())
    full_boxes, stored_boxes = box_scores(full), box_scores(stored)
    seen = full_boxes.filter(pc.greater_equal(full_boxes["score"], DEFAULT_MIN_SCORE))
    kept = stored_boxes.filter(pc.greater_equal(stored_boxes["score"], DEFAULT_MIN_SCORE))
    assert kept.num_rows == seen.num_rows > 100
    assert kept["from_distribution"].to_pylist() == [True] * kept.num_rows
    for name in MEASURES:  # tolerance 0: the stored floats are the detector's own
        np.testing.assert_array_equal(kept[name].to_numpy(), seen[name].to_numpy(), name)
    settings = ScoringSettings()
    assert rank_images(stored, settings)[1].equals(rank_images(full, settings)[1])


def test_default_policy_bytes_per_image_of_a_91_class_detector(tmp_path: Path) -> None:
    """The default's worst case (every image at the 100-box cap, none below the floor) within
    10 % of README "Storage"'s schema arithmetic, and under half of the detector's defaults
    (300 boxes down to 0.001, top-5, full distribution)."""
    outputs = _outputs(np.random.default_rng(3), images=20, boxes=300, classes=COCO_CLASSES,
                       embedding=EMBEDDING, min_boxes=300)
    everything = _parquet_bytes(_predictions(outputs, KEEP_ALL), tmp_path / "all") / 20
    for item in outputs:
        item["scores"] = torch.linspace(0.9, 0.06, item["scores"].shape[0])  # none below floor
    capped = _predictions(outputs, StoragePolicy())
    assert pc.list_value_length(capped["detections"]).to_numpy().tolist() == [100] * 20
    worst = _parquet_bytes(capped, tmp_path / "default") / 20
    per_box = 4 * 4 + 4 + 4 + 2 * (4 * 2) + 4 * COCO_CLASSES  # box, score, label, top-2, dist.
    readme = 100 * per_box + 4 * EMBEDDING  # 44,608 B
    assert 0.9 * readme <= worst <= 1.1 * readme
    assert worst < everything / 2.5


@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_only_entropy_is_within_its_stated_bound(k: int) -> None:
    """store_distribution=False: entropy is the renormalized top-k's, a lower bound within
    h(r) + r log(n - k) of the true entropy, r = 1 - sum(top-k) (README "Storage")."""
    outputs = _outputs(np.random.default_rng(4), images=40, boxes=50, classes=COCO_CLASSES)
    full = box_scores(_predictions(outputs, StoragePolicy(min_score=0, top_k=None)))
    top = _predictions(outputs, StoragePolicy(min_score=0, top_k=k, distribution=False))
    approx = box_scores(top, num_classes=COCO_CLASSES)
    scores = pc.struct_field(pc.list_flatten(top["detections"]), "scores")
    r = np.clip(1.0 - np.array([sum(s) for s in scores.to_pylist()]), 1e-12, 1.0)
    bound = -(r * np.log(r) + (1 - r) * np.log1p(-r + 1e-12)) + r * math.log(COCO_CLASSES - k)
    gap = full["entropy"].to_numpy() - approx["entropy"].to_numpy()
    assert np.all(gap >= -1e-5) and np.all(gap <= bound + 1e-5)
    assert gap.max() > 0.05  # the bound is needed: top-k alone is not exact
    if k >= 2:  # margin, ratio, least confidence need only the top 2
        for name in ("margin", "ratio", "least_confidence"):
            np.testing.assert_allclose(approx[name].to_numpy(), full[name].to_numpy(), atol=1e-6)


def test_box_scores_bands_let_the_floor_skip_row_groups(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from al_assets.core.scoring.views import confident, score_at_least, score_bands

    outputs = _outputs(np.random.default_rng(5), images=20, boxes=40, classes=8)
    boxes = box_scores(_predictions(outputs, StoragePolicy(min_score=0.01)))
    store = TableStore(tmp_path)
    with store.writer("box_scores", boxes.schema, "v/s") as writer:
        for band in score_bands(boxes, DEFAULT_MIN_SCORE):
            writer.write_table(band)
    meta = pq.ParquetFile(store.uri("box_scores", "v/s")[len("file://"):]).metadata
    score = [c for c in range(meta.num_columns)
             if meta.row_group(0).column(c).path_in_schema == "score"][0]
    assert meta.num_row_groups == 2
    assert meta.row_group(0).column(score).statistics.min >= np.float32(DEFAULT_MIN_SCORE)
    assert meta.row_group(1).column(score).statistics.max < np.float32(DEFAULT_MIN_SCORE)
    read = store.read("box_scores", "v/s", where=score_at_least(DEFAULT_MIN_SCORE))
    assert read.equals(confident(boxes, DEFAULT_MIN_SCORE))


def test_predictions_of_reads_each_candidate_from_its_own_shard(tmp_path: Path) -> None:
    from al_assets.core.prediction.storage import predictions_of

    store = TableStore(tmp_path)
    outputs = _outputs(np.random.default_rng(6), images=30, boxes=5, classes=4)
    table = _predictions(outputs, KEEP_ALL)  # image ids 1..30
    shard = np.where(table["image_id"].to_numpy() % 3 == 0, "b.s000", "b.s001")
    images = pa.Table.from_pylist(
        [{"image_id": i, "file_name": f"{i}.jpg", "uri": f"u{i}", "width": 1, "height": 1,
          "date_captured": None, "batch": "b", "shard": s}
         for i, s in zip(table["image_id"].to_pylist(), shard.tolist(), strict=True)],
        schema=schemas.IMAGES)
    store.write("images", images, "b")
    for name in ("b.s000", "b.s001"):
        rows = table.filter(pa.array(shard == name))
        with store.writer("detections", schemas.DETECTIONS, f"v1/{name}") as writer:
            writer.write_table(rows, row_group_size=4)
    wanted = pa.array([3, 4, 29, 30, 999], pa.int64())
    got = predictions_of(store, "v1", wanted, ["image_id", "detections"])
    assert sorted(got["image_id"].to_pylist()) == [3, 4, 29, 30]
    expected = table.filter(pc.is_in(table["image_id"], wanted)).select(["image_id", "detections"])
    assert got.sort_by("image_id").equals(expected)
    store.delete("detections", "v1/b.s001")  # a shard not predicted yet is left out
    assert sorted(predictions_of(store, "v1", wanted)["image_id"].to_pylist()) == [3, 30]
    assert predictions_of(store, "v2", wanted).num_rows == 0
