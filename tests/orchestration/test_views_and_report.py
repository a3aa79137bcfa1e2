"""Scoring views, labeling queue, analysis and report through real runs, end to end."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.compute as pc
from PIL import Image
from pycocotools.coco import COCO

from al_assets.core import schemas
from al_assets.core.defaults import DEFAULT_MIN_SCORE
from al_assets.orchestration.runs import predict, register, run_job
from tests.orchestration.conftest import FAST, Pipeline


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):])


def test_full_chain_views_queue_analysis_report(ingested: Pipeline, checkpoints) -> None:
    p = ingested
    versions = [register(p.defs, p.instance, {"weights": str(c)}) for c in checkpoints]
    for version in versions:
        predict(p.defs, p.instance, version, config=FAST)
    # every image of this pool is labeled: ask the queue to rank labeled images too
    result = run_job(p.defs, "refresh_views_job", p.instance, run_config={
        "ops": {"labeling_queue": {"config": {"exclude_labeled": False}}}})
    champion = versions[-1]

    # notebook tables: ordered, limited, from the champion only
    least = p.store.read("least_confidence")
    scores = least["score"].to_pylist()
    assert scores == sorted(scores) and 0 < least.num_rows <= 1000
    assert scores[0] >= DEFAULT_MIN_SCORE  # background noise below it is left out
    margin = p.store.read("least_margin")["margin"].to_pylist()
    assert margin == sorted(margin)
    entropy = p.store.read("entropy")["entropy"].to_pylist()
    assert entropy == sorted(entropy, reverse=True)
    all_boxes = p.store.read_many("box_scores", p.store.partitions("box_scores", under=champion))
    confident_boxes = all_boxes.filter(pc.greater_equal(all_boxes["score"], DEFAULT_MIN_SCORE))
    assert max(entropy) == max(confident_boxes["entropy"].to_pylist())

    rankings = p.store.read("image_rankings")
    assert rankings.schema.equals(schemas.IMAGE_SCORES)
    images = p.store.read_many("images", p.store.partitions("images"))
    for measure in ("least_confidence", "margin", "ratio", "entropy"):
        ranked = rankings.filter(pc.equal(rankings["measure"], measure))
        assert ranked["rank"].to_pylist() == list(range(1, images.num_rows + 1))

    queue = p.store.read("labeling_queue")
    assert 0 < queue.num_rows <= 50
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"queue_size_as_asked": True}
    assert queue["queue_rank"].to_pylist() == list(range(1, queue.num_rows + 1))
    export = _local(p.store.file_uri("queue", "labeling_queue.coco.json"))
    coco = COCO(str(export))
    assert sorted(coco.imgs) == sorted(queue["image_id"].to_pylist())
    tasks = json.loads(_local(p.store.file_uri("queue", "label_studio_tasks.json")).read_text())
    assert [t["data"]["image_id"] for t in tasks] == queue["image_id"].to_pylist()
    assert all(t["predictions"][0]["model_version"] == champion for t in tasks)
    csv_text = _local(p.store.file_uri("queue", "labeling_queue.csv")).read_text()
    assert csv_text.splitlines()[0].startswith("queue_rank,image_id,uri")

    pairs = p.store.read("confused_pairs")
    assert pairs.num_rows > 0
    assert pairs["count"].to_pylist() == sorted(pairs["count"].to_pylist(), reverse=True)
    frequency = p.store.read("class_frequency")
    assert sum(frequency["gt_count"].to_pylist()) > 0
    evaluation = p.store.read("model_evaluation")
    assert set(evaluation["model_version"].to_pylist()) == set(versions)
    splits = p.store.read("splits")
    heldout = splits.filter(pc.and_(pc.equal(splits["split"], "heldout"), splits["labeled"]))
    meta = result.asset_materializations_for_node("model_evaluation")[0].metadata
    assert meta["heldout_images"].value == heldout.num_rows > 0  # mAP on the held-out split
    matrix = p.store.read("confusion_matrix")
    assert sum(matrix["count"].to_pylist()) > 0

    pivot = meta["preview"].value.splitlines()  # versions side by side, not stacked
    assert all(f" {v} |" in pivot[0] for v in versions) and "| delta |" in pivot[0]
    assert pivot[2].startswith("|  | all classes | mAP |")
    _assert_readable_metadata(result)

    report = _local(p.store.file_uri("report", "index.html"))
    parser = _Images()
    parser.feed(report.read_text())
    assert set(parser.sources) >= {"least_margin.png", "confusion_matrix.png", "class_frequency.png"}
    for name in (s for s in parser.sources if s.endswith(".png")):
        with Image.open(report.parent / name) as image:
            assert image.width > 200 and len(image.convert("RGB").getcolors(1 << 20)) > 50
    thumbs = [s for s in parser.sources if s.startswith("queue_")]  # one per queue row shown
    assert len(thumbs) == min(queue.num_rows, 20)
    with Image.open(report.parent / thumbs[0]) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 96
    meta = result.asset_materializations_for_node("uncertainty_report")[0].metadata
    assert "data:image/jpeg;base64," in meta["pictures"].value
    _assert_demo_summary(p, champion, queue)


def _assert_demo_summary(p: Pipeline, champion: str, queue) -> None:
    """What `make demo` ends with: pool, rejects, model and mAP, queue head, confusions."""
    from al_assets.orchestration.demo import summary

    lines = summary(p.store, champion).splitlines()
    images = p.store.read_many("images", p.store.partitions("images")).num_rows
    assert lines[0].startswith(f"  pool: {images} images, 0 rejected records")
    assert lines[1].startswith(f"  model: {champion}, held-out mAP 0.")
    assert lines[2] == f"  labeling queue, top 5 of {queue.num_rows}:"
    first = queue.slice(0, 1).to_pylist()[0]
    assert lines[3].startswith(f"    1. {first['uri'].rsplit('/', 1)[-1]}  ({first['reason']}")
    assert len(lines) == 3 + min(5, queue.num_rows) + 1 and lines[-1].startswith(
        "  most confused: ") and " -> " in lines[-1]


def _assert_readable_metadata(result) -> None:
    """Every written table documents its columns; previews show names and short paths."""
    undocumented, described = {}, set()
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        column_schema = materialization.metadata.get("dagster/column_schema")
        if column_schema is not None:
            described.add(materialization.asset_key.to_user_string())
            missing = [c.name for c in column_schema.schema.columns if not c.description]
            if missing:
                undocumented[materialization.asset_key.to_user_string()] = missing
        preview = materialization.metadata.get("preview")
        assert preview is None or "file://" not in preview.value
    assert not undocumented
    assert described >= {"splits", "least_margin", "image_rankings", "labeling_queue",
                         "confused_pairs", "class_frequency", "model_evaluation",
                         "confusion_matrix"}
    queue = result.asset_materializations_for_node("labeling_queue")[0].metadata["preview"]
    header = [cell.strip() for cell in queue.value.splitlines()[0].strip("|").split("|")]
    assert {"file", "top_label", "labels"} <= set(header)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
