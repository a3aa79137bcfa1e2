"""The closed loop on a real instance and registry: queue -> labels -> train -> gate -> predict.

The pool is the demo pool with batch-001's labels withheld (as `make demo` does): batch-000 is
labeled, batch-001 is what the queue offers; the oracle's answers come from the withheld file.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from al_assets.core.coco.ingest import ingest_batch
from al_assets.core.demo.generator import GROUND_TRUTH_DIR, withhold_labels
from al_assets.core.detection.sources import DEMO_CHECKPOINT
from al_assets.core.loop.oracle import oracle_export
from al_assets.core.loop.selection import ScoringSettings, embedding_matrix, exclusions
from al_assets.core.queue import ImageUrls
from al_assets.core.queue.dedup import perceptual_hashes
from al_assets.core.queue.exports import LOCAL_FILES_ROOT_ENV
from al_assets.core.simulation.loop import queue_from_predictions
from al_assets.core.storage.objects import ObjectStore, local_path, to_uri
from al_assets.orchestration.assets.queue import IMAGE_URLS_ENV, QueueConfig
from al_assets.orchestration.partitions import LABEL_BATCH, prediction_key
from al_assets.orchestration.runs import (
    RunFailedError,
    discover_batches,
    ingest,
    predict,
    refresh_views,
    register,
    run_job,
)
from al_assets.orchestration.sensors import (
    new_data_sensor,
    new_labels_sensor,
    new_model_version_sensor,
)
from tests.orchestration.conftest import FAST, Pipeline, make_pipeline, tick

GATE = {"min_heldout_images": 1, "n_boot": 50}  # the test pool holds a handful of held-out images
CHAMPION = "al-class-scores"


@pytest.fixture
def loop(instance, demo_copy: Path, tmp_path: Path) -> Pipeline:
    withhold_labels(demo_copy / "annotations" / "batch-001.json")
    p = make_pipeline(instance, demo_copy, tmp_path)
    ingest(p.defs, p.instance, discover_batches(p.source, p.instance),
           {"shard_size": 8, "verify_images": "exists"})
    return p


def _truth(p: Pipeline):
    """The withheld ground truth of batch-001, read with the ingestion core."""
    root = Path(p.source.root)
    return ingest_batch(to_uri(root / GROUND_TRUTH_DIR / "batch-001.json"),
                        p.source.image_root(), "gt", ObjectStore())


def _champion(p: Pipeline) -> int:
    return p.mlflow.registry().alias_version(CHAMPION, "champion")


def _edit_as_a_labeler(export: list[dict]) -> dict:
    """Move a box, delete one, add one, relabel one; returns what was done for the asserts."""
    moved, deleted, added, relabeled = (export[i]["annotations"][0]["result"] for i in range(4))
    moved[0]["value"]["x"] += 5.0
    gone = deleted.pop()
    added.append({**copy.deepcopy(added[0] if added else gone), "id": "new-box"})
    added[-1]["value"].update({"x": 10.0, "y": 10.0, "width": 20.0, "height": 25.0,
                               "rectanglelabels": ["star"]})
    old_label = relabeled[0]["value"]["rectanglelabels"][0]
    new_label = "hexagon" if old_label != "hexagon" else "pentagon"
    relabeled[0]["value"]["rectanglelabels"] = [new_label]
    return {"moved": moved[0], "deleted": len(deleted), "added": len(added),
            "relabeled": (relabeled[0], new_label)}


def test_queue_labels_train_gate_predict(loop: Pipeline) -> None:
    p = loop
    good = register(p.defs, p.instance, {"weights": str(DEMO_CHECKPOINT)})  # v1, champion
    predict(p.defs, p.instance, good, config=FAST)
    refresh_views(p.defs, p.instance)

    # the queue offers only unlabeled train-split images (batch-001's), never held-out ones
    splits = p.store.read("splits")
    queue = p.store.read("labeling_queue")
    unlabeled_train = set(splits.filter(pc.and_(pc.equal(splits["split"], "train"),
                                                pc.invert(splits["labeled"])))["image_id"]
                          .to_pylist())
    assert queue.num_rows > 4 and set(queue["image_id"].to_pylist()) <= unlabeled_train

    # the oracle answers the exported tasks; a labeler then edits four of them
    tasks = json.loads(Path(p.store.file_uri("queue", "label_studio_tasks.json")[7:]).read_text())
    truth = _truth(p)
    export = oracle_export(tasks, truth.annotations, truth.images, truth.categories)
    export = [t for t in export if t["annotations"][0]["result"]][:6]  # six labeled tasks
    edits = _edit_as_a_labeler(export)
    labels = Path(p.source.root) / "labels"
    labels.mkdir()
    (labels / "round1.json").write_text(json.dumps(export))

    # the new-data sensor picks the label file up like an annotation file
    first = tick(new_data_sensor, p.instance, None, coco_source=p.source)
    label_runs = [r for r in first.run_requests if r.job_name == "label_import_job"]
    assert [r.partition_key for r in label_runs] == ["labels-round1"]
    assert p.instance.get_dynamic_partitions(LABEL_BATCH) == ["labels-round1"]
    run_job(p.defs, "label_import_job", p.instance, partition_key="labels-round1")
    labeled = p.store.read("labeled_images", "labels-round1")
    boxes = p.store.read("label_annotations", "labels-round1")
    assert sorted(labeled["image_id"].to_pylist()) == sorted(t["data"]["image_id"] for t in export)
    assert boxes.num_rows == sum(len(t["annotations"][0]["result"]) for t in export)
    _check_edits(boxes, export, edits)

    # a deliberately worse challenger (a destructive learning rate) is not promoted
    again = tick(new_labels_sensor, p.instance, None)
    assert [r.run_key.split(":")[1] for r in again.run_requests] == ["labels-round1"]
    worse = _train(p, {"steps": 3, "batch_size": 2, "lr": 3.0})
    assert tick(new_labels_sensor, p.instance, None).run_requests == []  # already trained
    assert worse["promoted"] is False and _champion(p) == 1
    assert worse["reason"].endswith(": kept") and "< margin" in worse["reason"]
    history = p.store.read("model_versions")
    assert history.num_rows == 1 and history["promoted"].to_pylist() == [False]
    assert history["train_images"][0].as_py() == splits.filter(pc.and_(
        pc.equal(splits["split"], "train"), splits["labeled"])).num_rows + sum(
        1 for t in export if _split_of(splits, t["data"]["image_id"]) == "train")

    # a better one is: the champion is made a random detector, the challenger the trained one
    from al_assets.core.demo.detector import random_demo_checkpoint

    weak = random_demo_checkpoint(Path(p.source.root).parent / "weak.pt", 7)
    register(p.defs, p.instance, {"weights": str(weak)})  # v3 becomes the champion
    assert _champion(p) == 3
    better = _train(p, {"steps": 2, "batch_size": 2, "lr": 1e-4, "base_version": good})
    assert better["promoted"] is True and _champion(p) == 4, better["reason"]
    assert better["delta_map"] > 0
    registry = p.mlflow.registry()
    run_id = registry.resolve(CHAMPION, version=4).tags["training_run_id"]
    run = registry.client.get_run(run_id)
    assert run.data.params["base_version"] == good and run.data.params["steps"] == "2"
    assert run.data.metrics["heldout_map"] == pytest.approx(better["challenger_map"], abs=1e-4)
    assert run.data.metrics["promoted"] == 1.0
    losses = registry.client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == [1, 2]  # loss per step
    assert run.data.params["label_batches"].split(",") == sorted(
        set(p.store.read("splits").filter(pc.and_(pc.equal(p.store.read("splits")["split"],
                                                           "train"),
                                                  p.store.read("splits")["labeled"]))
            ["label_batch"].to_pylist()))

    # the promotion: the model-version sensor predicts every shard under the new champion
    result = tick(new_model_version_sensor, p.instance, None, mlflow=p.mlflow)
    shards = p.instance.get_dynamic_partitions("shard")
    predicted = [r.partition_key for r in result.run_requests if r.job_name == "predict_job"]
    assert sorted(predicted, key=str) == sorted(
        [prediction_key(f"{CHAMPION}-v4", s) for s in shards], key=str)
    predict(p.defs, p.instance, f"{CHAMPION}-v4", config=FAST)
    refresh_views(p.defs, p.instance)
    tasks = json.loads(Path(p.store.file_uri("queue", "label_studio_tasks.json")[7:]).read_text())
    assert {t["predictions"][0]["model_version"] for t in tasks} == {f"{CHAMPION}-v4"}
    relabeled_ids = set(labeled["image_id"].to_pylist())
    assert not relabeled_ids & {t["data"]["image_id"] for t in tasks}  # labeled: not offered

    # the report shows the loop: both gate decisions, and the last round's per-class change
    html = Path(p.store.file_uri("report", "index.html")[7:]).read_text()
    assert "The loop: model versions over time" in html
    assert f"{CHAMPION}-v2" in html and f"What the last round changed ({CHAMPION}-v4)" in html
    deltas = p.store.read("gate_class_deltas")
    assert deltas.num_rows == 8 and set(deltas["model_version"].to_pylist()) == {f"{CHAMPION}-v4"}


def test_the_simulation_selects_what_the_queue_selects(loop: Pipeline) -> None:
    p = loop
    key = register(p.defs, p.instance, {"weights": str(DEMO_CHECKPOINT)})
    predict(p.defs, p.instance, key, config=FAST)
    config = QueueConfig(size=6, max_per_class=2)
    root = Path(p.source.root)  # Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    result = run_job(p.defs, "refresh_views_job", p.instance, run_config={
        "ops": {"labeling_queue": {"config": {"size": 6, "max_per_class": 2,
                                              "image_urls": "local-files",
                                              "local_files_root": str(root)}}}})
    queue = p.store.read("labeling_queue")
    tasks = json.loads(Path(p.store.file_uri("queue", "label_studio_tasks.json")[7:]).read_text())
    served = [parse_qs(urlparse(t["data"]["image"]).query)["d"][0] for t in tasks]
    assert all(t["data"]["image"].startswith("/data/local-files/?d=images/") for t in tasks)
    assert [(root / d).resolve() for d in served] == [
        local_path(u) for u in queue["uri"].to_pylist()]  # what Label Studio serves for d
    meta = result.asset_materializations_for_node("labeling_queue")[0].metadata
    assert meta["image_urls"].value == "local-files"
    predictions = pa.concat_tables(p.store.read("detections", part)
                                   for part in p.store.partitions("detections", under=key))
    from al_assets.core.prediction.arrow import confident_detections

    hashes, _ = perceptual_hashes(predictions["uri"].to_pylist(), ObjectStore())
    by_id = dict(zip(predictions["image_id"].to_pylist(),
                     [hashes.get(u) for u in predictions["uri"].to_pylist()], strict=True))
    from al_assets.orchestration.assets.queue import queue_class_weights

    weights = queue_class_weights(p.store, key, config.selection())
    assert weights  # the default strategy is weighted: both paths get the same weights
    simulated = queue_from_predictions(
        confident_detections(predictions, config.min_score), config.selection(),
        ScoringSettings(), excluded=exclusions(p.store.read("splits"), True),
        hashes={i: h for i, h in by_id.items() if h is not None}, class_weights=weights)
    assert queue.num_rows == 6
    assert simulated["image_id"].to_pylist() == queue["image_id"].to_pylist()
    assert simulated["reason"].to_pylist() == queue["reason"].to_pylist()

    # typical reads the labeled images' embeddings from their stored predictions
    run_job(p.defs, "refresh_views_job", p.instance, run_config={
        "ops": {"labeling_queue": {"config": {"size": 6, "strategy": "typical"}}}})
    typical = p.store.read("labeling_queue")
    splits = p.store.read("splits")
    labeled = splits.filter(splits["labeled"])["image_id"].combine_chunks()
    assert len(labeled) > 0  # the demo pool starts with labels: covered regions exist
    covered = embedding_matrix(predictions.filter(pc.is_in(predictions["image_id"], labeled)))
    simulated = queue_from_predictions(
        confident_detections(predictions, config.min_score),
        QueueConfig(size=6, strategy="typical").selection(), ScoringSettings(),
        excluded=exclusions(splits, True), hashes={i: h for i, h in by_id.items() if h is not None},
        labeled_embeddings=covered)
    assert typical.num_rows == 6 and set(typical["strategy"].to_pylist()) == {"typical"}
    assert all(r.startswith("typical pick; uncertainty ") for r in typical["reason"].to_pylist())
    assert simulated["image_id"].to_pylist() == typical["image_id"].to_pylist()

    # soft weights each box over its top-2 classes, in the asset as in the simulation
    run_job(p.defs, "refresh_views_job", p.instance, run_config={
        "ops": {"labeling_queue": {"config": {"size": 6, "max_per_class": 2,
                                              "strategy": "soft"}}}})
    soft = p.store.read("labeling_queue")
    selection = QueueConfig(size=6, max_per_class=2, strategy="soft").selection()
    soft_weights = queue_class_weights(p.store, key, selection)
    assert soft_weights == weights  # soft changes how weights apply, not the weights
    simulated = queue_from_predictions(
        confident_detections(predictions, config.min_score), selection, ScoringSettings(),
        excluded=exclusions(splits, True), hashes={i: h for i, h in by_id.items() if h is not None},
        class_weights=soft_weights)
    assert soft.num_rows == 6 and set(soft["strategy"].to_pylist()) == {"entropy"}  # its measure
    assert simulated["image_id"].to_pylist() == soft["image_id"].to_pylist()
    assert simulated["reason"].to_pylist() == soft["reason"].to_pylist()


def test_image_urls_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Automated refreshes run with the defaults: the deployment's env sets the URL form."""
    monkeypatch.delenv(IMAGE_URLS_ENV, raising=False)
    assert QueueConfig().task_images() == ImageUrls("path")
    monkeypatch.setenv(IMAGE_URLS_ENV, "presigned")
    assert QueueConfig(presign_hours=3).task_images() == ImageUrls("presigned", None, 3)
    monkeypatch.setenv(IMAGE_URLS_ENV, "local-files")
    monkeypatch.delenv(LOCAL_FILES_ROOT_ENV, raising=False)
    with pytest.raises(ValueError, match="needs local_files_root"):
        QueueConfig().task_images()


def test_a_bad_label_file_fails_clearly_and_writes_nothing(loop: Pipeline) -> None:
    p = loop
    labels = Path(p.source.root) / "labels"
    labels.mkdir()
    (labels / "broken.json").write_text('[{"data": {"image": "x.jpg"}, "annotations": [')
    p.instance.add_dynamic_partitions(LABEL_BATCH, ["labels-broken"])
    with pytest.raises(RunFailedError, match=r"broken\.json.*malformed JSON"):
        run_job(p.defs, "label_import_job", p.instance, partition_key="labels-broken")
    assert p.store.partitions("labeled_images") == []
    shutil.rmtree(labels)


def _split_of(splits: pa.Table, image_id: int) -> str:
    return splits.filter(pc.equal(splits["image_id"], image_id))["split"][0].as_py()


def _train(p: Pipeline, config: dict) -> dict:
    result = run_job(p.defs, "train_job", p.instance, run_config={"ops": {
        "challenger": {"config": config}, "evaluation_gate": {"config": GATE}}})
    meta = result.asset_materializations_for_node("evaluation_gate")[0].metadata
    steps = config["steps"]
    logged = "\n".join(r.user_message for r in p.instance.all_logs(result.run_id))
    assert re.search(rf"training \(loss [\d.]+\): {steps}/{steps} steps \(100 %", logged)
    return {k: meta[k].value for k in ("promoted", "reason", "delta_map", "challenger",
                                          "challenger_map")}


def _check_edits(boxes: pa.Table, export: list[dict], edits: dict) -> None:
    """The imported pixels are the edited percentages times the pool image's size."""
    rows = boxes.to_pylist()
    moved = edits["moved"]
    width = moved["original_width"]
    image_id = export[0]["data"]["image_id"]
    xs = [r["bbox"]["xmin"] for r in rows if r["image_id"] == image_id]
    assert any(abs(x - moved["value"]["x"] / 100 * width) < 1e-3 for x in xs)
    assert sum(r["image_id"] == export[1]["data"]["image_id"] for r in rows) == edits["deleted"]
    added = export[2]["annotations"][0]["result"][-1]
    on_added = [r for r in rows if r["image_id"] == export[2]["data"]["image_id"]]
    assert len(on_added) == edits["added"]
    new_box = [r for r in on_added if abs(r["bbox"]["xmin"] - 0.1 * added["original_width"]) < 1e-3
               and abs(r["bbox"]["ymin"] - 0.1 * added["original_height"]) < 1e-3]
    assert len(new_box) == 1 and new_box[0]["label"] == "star"
    region, label = edits["relabeled"]
    relabeled = [r for r in rows if r["image_id"] == export[3]["data"]["image_id"]
                 and abs(r["bbox"]["xmin"] - region["value"]["x"] / 100
                         * region["original_width"]) < 1e-3]
    assert relabeled and relabeled[0]["label"] == label


def test_label_files_on_s3_are_found_and_imported(
    instance, demo_copy: Path, tmp_path: Path, s3_server, s3_bucket
) -> None:
    from al_assets.orchestration.resources import (
        CocoSourceResource,
        DeviceResource,
        MlflowResource,
        S3Config,
        StorageResource,
    )
    from al_assets.orchestration.definitions import build_definitions

    withhold_labels(demo_copy / "annotations" / "batch-001.json")
    s3_server.upload_folder(demo_copy, s3_bucket, "pool")
    config = S3Config(endpoint_url=s3_server.endpoint_url, region="us-east-1",
                      access_key_id=s3_server.access_key_id,
                      secret_access_key=s3_server.secret_access_key)
    storage = StorageResource(root=f"s3://{s3_bucket}/store", s3=config)
    source = CocoSourceResource(root=f"s3://{s3_bucket}/pool", s3=config)
    defs = build_definitions({"storage": storage, "coco_source": source,
                              "mlflow": MlflowResource(storage=storage,
                                                       tracking_uri=f"sqlite:///{tmp_path}/m.db"),
                              "device": DeviceResource(device="cpu")})
    ingest(defs, instance, discover_batches(source, instance), {"verify_images": "exists"})
    images = storage.tables().read("images", "batch-001")
    truth = ingest_batch(to_uri(demo_copy / GROUND_TRUTH_DIR / "batch-001.json"),
                         to_uri(demo_copy / "images"), "gt", ObjectStore())
    tasks = [{"data": {"image": u, "image_id": i}} for i, u in
             zip(images["image_id"].to_pylist()[:3], images["uri"].to_pylist()[:3], strict=True)]
    export = oracle_export(tasks, truth.annotations, truth.images, truth.categories)
    s3_server.client().put_object(Bucket=s3_bucket, Key="pool/labels/from-s3.json",
                                  Body=json.dumps(export).encode())

    first = tick(new_data_sensor, instance, None, coco_source=source)
    assert [r.partition_key for r in first.run_requests if r.job_name == "label_import_job"] == [
        "labels-from-s3"]
    run_job(defs, "label_import_job", instance, partition_key="labels-from-s3")
    labeled = storage.tables().read("labeled_images", "labels-from-s3")
    assert sorted(labeled["image_id"].to_pylist()) == sorted(t["data"]["image_id"] for t in tasks)
    assert labeled["source"][0].as_py() == f"s3://{s3_bucket}/pool/labels/from-s3.json"
