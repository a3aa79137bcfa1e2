"""COCO ingestion core: schemas, round trip, and every bad input named in the issue."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from pycocotools.coco import COCO

from al_assets.core import schemas
from al_assets.core.coco.categories import merge_categories
from al_assets.core.coco.ingest import IngestOptions, ingest_batch
from al_assets.core.coco.writer import tables_to_coco
from al_assets.core.errors import CocoFormatError, StorageError
from al_assets.core.storage import ObjectStore, to_uri
from tests.conftest import load_json

BATCH = "batch-000"


def ingest(root: Path, batch: str = BATCH, **options):
    return ingest_batch(
        to_uri(root / "annotations" / f"{batch}.json"), to_uri(root / "images"), batch,
        ObjectStore(), IngestOptions(**options),
    )


def rewrite(root: Path, mutate, batch: str = BATCH) -> dict:
    path = root / "annotations" / f"{batch}.json"
    document = load_json(path)
    mutate(document)
    path.write_text(json.dumps(document))
    return document


def reasons(tables) -> list[str]:
    return tables.rejects["reason"].to_pylist()


def test_tables_match_documented_schemas(demo_root: Path) -> None:
    tables = ingest(demo_root)
    assert tables.images.schema.equals(schemas.IMAGES)
    assert tables.annotations.schema.equals(schemas.ANNOTATIONS)
    assert tables.categories.schema.equals(schemas.CATEGORIES)
    assert tables.rejects.schema.equals(schemas.INGESTION_REJECTS)
    assert tables.rejects.num_rows == 0
    assert tables.warnings == []


def test_counts_and_values_match_pycocotools(demo_root: Path) -> None:
    path = demo_root / "annotations" / f"{BATCH}.json"
    coco = COCO(str(path))
    tables = ingest(demo_root)
    assert tables.images.num_rows == len(coco.imgs)
    assert tables.annotations.num_rows == len(coco.anns)
    assert sorted(tables.categories["category_id"].to_pylist()) == sorted(coco.cats)
    first = tables.annotations.slice(0, 1).to_pylist()[0]
    ann = coco.anns[first["ann_id"]]
    x, y, w, h = ann["bbox"]
    assert first["bbox"]["xmax"] == pytest.approx(x + w, abs=1e-3)
    assert first["bbox_xywh"] == pytest.approx([x, y, w, h], abs=1e-3)
    assert first["label"] == coco.cats[ann["category_id"]]["name"]
    assert tables.images["uri"][0].as_py().startswith("file://")


def test_polygons_and_crowd_rle_become_rle(demo_root: Path) -> None:
    from pycocotools import mask as mask_utils

    tables = ingest(demo_root)
    anns = tables.annotations.to_pylist()
    crowd = [a for a in anns if a["iscrowd"]]
    assert crowd, "demo data has crowd annotations"
    for ann in anns[:20] + crowd:
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"]}
        assert mask_utils.area(rle) > 0
        assert list(mask_utils.toBbox(rle)) == pytest.approx(ann["bbox_xywh"], abs=4.0)  # sharp tips rasterize short


def test_round_trip_to_coco_json(demo_root: Path, tmp_path: Path) -> None:
    tables = ingest(demo_root)
    out = tmp_path / "round_trip.json"
    out.write_text(json.dumps(tables_to_coco(tables.categories, tables.images, tables.annotations)))
    coco = COCO(str(out))
    original = COCO(str(demo_root / "annotations" / f"{BATCH}.json"))
    assert len(coco.imgs) == len(original.imgs)
    assert len(coco.anns) == len(original.anns)
    assert len(coco.cats) == len(original.cats)
    for ann_id in list(original.anns)[:10]:
        assert coco.annToMask(coco.anns[ann_id]).sum() == original.annToMask(
            original.anns[ann_id]
        ).sum()


def test_limit_keeps_first_images_and_their_annotations(demo_root: Path) -> None:
    tables = ingest(demo_root, limit=5)
    document = load_json(demo_root / "annotations" / f"{BATCH}.json")
    assert tables.images["image_id"].to_pylist() == [i["id"] for i in document["images"][:5]]
    assert set(tables.annotations["image_id"].to_pylist()) <= set(
        tables.images["image_id"].to_pylist()
    )


def test_shards_are_stable_and_sized(demo_root: Path) -> None:
    small = ingest(demo_root, shard_size=7)
    again = ingest(demo_root, shard_size=7)
    assert small.images["shard"].to_pylist() == again.images["shard"].to_pylist()
    counts = pa.table({"s": small.images["shard"]}).group_by("s").aggregate([("s", "count")])
    assert counts.num_rows == -(-small.images.num_rows // 7)
    assert all(s.startswith(f"{BATCH}.s") for s in small.images["shard"].to_pylist())


# -- bad input ---------------------------------------------------------------------------------
def test_missing_annotation_file(demo_copy: Path) -> None:
    with pytest.raises(CocoFormatError, match=r"nope\.json not found"):
        ingest(demo_copy, batch="nope")


def test_malformed_json_names_file_and_position(demo_copy: Path) -> None:
    (demo_copy / "annotations" / f"{BATCH}.json").write_text('{"images": [1, 2,, ]}')
    with pytest.raises(CocoFormatError, match=r"batch-000\.json: malformed JSON at line 1 column"):
        ingest(demo_copy)


def test_json_that_is_not_coco(demo_copy: Path) -> None:
    (demo_copy / "annotations" / f"{BATCH}.json").write_text('{"foo": []}')
    with pytest.raises(CocoFormatError, match="missing key\\(s\\) images, categories"):
        ingest(demo_copy)


def test_json_too_large_is_refused(demo_copy: Path) -> None:
    with pytest.raises(StorageError, match="over the limit"):
        ingest(demo_copy, max_json_bytes=100)


def test_unknown_category_and_image_ids_are_rejected(demo_copy: Path) -> None:
    def mutate(document: dict) -> None:
        document["annotations"][0]["category_id"] = 999
        document["annotations"][1]["image_id"] = 123456

    document = rewrite(demo_copy, mutate)
    tables = ingest(demo_copy)
    assert tables.annotations.num_rows == len(document["annotations"]) - 2
    text = " ".join(reasons(tables))
    assert "unknown category_id 999" in text and "unknown or rejected image_id 123456" in text
    ids = set(tables.rejects["record_id"].to_pylist())
    assert {document["annotations"][0]["id"], document["annotations"][1]["id"]} <= ids


def test_missing_and_corrupt_images_are_rejected(demo_copy: Path) -> None:
    document = load_json(demo_copy / "annotations" / f"{BATCH}.json")
    missing, truncated, not_image = document["images"][:3]
    (demo_copy / "images" / missing["file_name"]).unlink()
    data = (demo_copy / "images" / truncated["file_name"]).read_bytes()
    (demo_copy / "images" / truncated["file_name"]).write_bytes(data[: len(data) // 3])
    (demo_copy / "images" / not_image["file_name"]).write_text("not an image at all")
    tables = ingest(demo_copy)
    rejected = {
        r["record_id"]: r["reason"] for r in tables.rejects.to_pylist() if r["record_type"] == "image"
    }
    assert "not found" in rejected[missing["id"]]
    assert "truncated or corrupt" in rejected[truncated["id"]]
    assert "not a readable image" in rejected[not_image["id"]]
    kept = set(tables.images["image_id"].to_pylist())
    assert not kept & {missing["id"], truncated["id"], not_image["id"]}
    assert not set(tables.annotations["image_id"].to_pylist()) & {missing["id"], truncated["id"]}


def test_verification_reports_progress_per_image_bad_ones_included(demo_copy: Path) -> None:
    document = load_json(demo_copy / "annotations" / f"{BATCH}.json")
    (demo_copy / "images" / document["images"][0]["file_name"]).unlink()
    calls: list[tuple[int, int]] = []
    tables = ingest_batch(
        to_uri(demo_copy / "annotations" / f"{BATCH}.json"), to_uri(demo_copy / "images"), BATCH,
        ObjectStore(), IngestOptions(), progress=lambda done, total: calls.append((done, total)),
    )
    listed = len(document["images"])
    assert calls == [(done, listed) for done in range(1, listed + 1)]
    assert tables.images.num_rows == listed - 1


def test_duplicate_image_ids_reject_every_copy_and_their_annotations(demo_copy: Path) -> None:
    def mutate(document: dict) -> None:
        first, second = document["images"][0], document["images"][3]
        second["id"] = first["id"]  # which of the two do first's annotations belong to?
        mutate.id = first["id"]
        mutate.anns = [a["id"] for a in document["annotations"] if a["image_id"] == first["id"]]

    document = rewrite(demo_copy, mutate)
    tables = ingest(demo_copy)
    rows = tables.rejects.to_pylist()
    images = [r["reason"] for r in rows if r["record_type"] == "image"]
    assert len(images) == 2 and len(set(images)) == 1
    assert f"image id {mutate.id} appears 2 times in " in images[0]
    assert "batch-000.json (images[0], images[3])" in images[0] and "renumber" in images[0]
    assert mutate.id not in tables.images["image_id"].to_pylist()
    assert tables.images.num_rows == len(document["images"]) - 2
    ambiguous = [r["record_id"] for r in rows if r["record_type"] == "annotation"
                 and f"image id {mutate.id} is shared by several images" in r["reason"]]
    assert mutate.anns and sorted(ambiguous) == sorted(mutate.anns)
    assert not set(mutate.anns) & set(tables.annotations["ann_id"].to_pylist())


def test_area_larger_than_the_box_is_kept_with_a_warning(demo_copy: Path) -> None:
    def mutate(document: dict) -> None:
        anns = [a for a in document["annotations"] if not a.get("iscrowd")]
        x, y, w, h = anns[0]["bbox"]
        anns[0]["area"] = 3 * w * h
        anns[1]["area"] = w * h  # at most the box: fine
        mutate.ids = [a["id"] for a in anns[:2]]

    rewrite(demo_copy, mutate)
    tables = ingest(demo_copy)
    assert tables.rejects.num_rows == 0
    assert set(mutate.ids) <= set(tables.annotations["ann_id"].to_pylist())
    assert [(w.kind, w.record_type, w.record_id) for w in tables.warnings] == [
        ("area_exceeds_bbox", "annotation", mutate.ids[0])]
    assert "is 3.0x its bbox" in tables.warnings[0].message
    assert "check area and bbox" in tables.warnings[0].message


def test_zero_size_and_outside_boxes(demo_copy: Path) -> None:
    def mutate(document: dict) -> None:
        anns = [a for a in document["annotations"] if not a.get("iscrowd")]
        anns[0]["bbox"] = [10, 10, 0, 5]
        anns[1]["bbox"] = [-50, -50, 20, 20]
        image = next(i for i in document["images"] if i["id"] == anns[2]["image_id"])
        anns[2]["bbox"] = [image["width"] - 5, 0, 50, 10]
        mutate.ids = [a["id"] for a in anns[:3]]
        mutate.width = image["width"]

    rewrite(demo_copy, mutate)
    tables = ingest(demo_copy)
    text = " ".join(reasons(tables))
    assert "zero-size or negative bbox" in text and "entirely outside" in text
    clipped = tables.annotations.filter(pa.compute.equal(tables.annotations["ann_id"], mutate.ids[2]))
    assert clipped["bbox"][0]["xmax"].as_py() == pytest.approx(mutate.width)


def test_path_traversal_is_refused(demo_copy: Path) -> None:
    def mutate(document: dict) -> None:
        document["images"][0]["file_name"] = "../../etc/passwd"
        document["images"][1]["file_name"] = "/etc/passwd"

    rewrite(demo_copy, mutate)
    text = " ".join(reasons(ingest(demo_copy)))
    assert text.count("escapes the image root") == 2


def test_nothing_usable_fails_clearly(demo_copy: Path) -> None:
    for image in (demo_copy / "images").iterdir():
        image.unlink()
    with pytest.raises(CocoFormatError, match="nothing usable, all .* images rejected"):
        ingest(demo_copy)


def test_category_conflict_between_batches_is_an_error() -> None:
    one = pa.Table.from_pylist(
        [{"category_id": 1, "name": "circle", "supercategory": "round", "batch": "a"}],
        schema=schemas.CATEGORIES,
    )
    two = pa.Table.from_pylist(
        [{"category_id": 1, "name": "square", "supercategory": "quad", "batch": "b"}],
        schema=schemas.CATEGORIES,
    )
    assert merge_categories(one, one).num_rows == 1
    with pytest.raises(CocoFormatError, match="category id 1 is 'circle' in batch 'a' but 'square'"):
        merge_categories(one, two)


# -- the one reader, earlier batches, segmentations ----------------------------------------------
def _write(root: Path, document: dict, batch: str = BATCH) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{batch}.json").write_text(json.dumps(document))


def _square(x: float, y: float, side: float) -> list[float]:
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def test_ids_of_earlier_batches_as_arrow_numpy_or_set(demo_root: Path) -> None:
    import numpy as np

    document = load_json(demo_root / "annotations" / f"{BATCH}.json")
    ids = [img["id"] for img in document["images"]]
    earlier = [ids[3], ids[0], 10**12]  # unsorted, with an id this batch does not have
    for known in (pa.chunked_array([pa.array(earlier)]), np.array(earlier), set(earlier)):
        tables = ingest_batch(to_uri(demo_root / "annotations" / f"{BATCH}.json"),
                              to_uri(demo_root / "images"), BATCH, ObjectStore(),
                              IngestOptions(verify="none"), known_image_ids=known)
        rows = [r for r in tables.rejects.to_pylist() if r["record_type"] == "image"]
        assert sorted(r["record_id"] for r in rows) == sorted([ids[0], ids[3]])
        assert all("already ingested in an earlier batch" in r["reason"] for r in rows)
        assert tables.images["image_id"].to_pylist() == [i for i in ids if i not in earlier]


def test_polygons_batched_per_image_equal_ann_to_rle_and_bad_ones_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from al_assets.core.coco import tables as coco_tables

    segmentations = [
        [_square(5, 5, 10)], [_square(20, 20, 8), _square(40, 5, 6)], [[1, 2, 3, "x", 5, 6]],
        [[1, 2, 30, 4]],  # four values: a box to pycocotools, which refuses a list there
        {"size": [60, 80], "counts": [100, 30, 4670]}, {"size": [60, 80], "counts": 7},
        [_square(50, 30, 12)], [],
    ]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 50, 50], "iscrowd": 0,
             "segmentation": s} for i, s in enumerate(segmentations)]
    document = {"images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60}],
                "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    _write(tmp_path, document)
    monkeypatch.setattr(coco_tables._MaskColumn, "CHUNK_BYTES", 8)  # several chunks
    tables = ingest(tmp_path, verify="none")
    assert {r["record_id"] for r in tables.rejects.to_pylist()} == {3, 4, 6}
    assert "RLE counts must be text" in " ".join(reasons(tables))
    coco = COCO()
    coco.dataset = document
    coco.createIndex()
    for row in tables.annotations.to_pylist():
        ann = coco.anns[row["ann_id"]]
        if not ann["segmentation"]:
            assert row["segmentation"] is None
            continue
        expected = coco.annToRLE(ann)
        counts = expected["counts"]
        assert row["segmentation"] == {"size": list(expected["size"]), "counts": counts.decode()
                                       if isinstance(counts, bytes) else counts}
    assert tables.annotations["segmentation"].num_chunks > 1


def test_reader_messages_and_what_msgspec_refuses(tmp_path: Path) -> None:
    from al_assets.core.coco.reader import read_coco_json
    from al_assets.core.detection.training import DatasetError, read_coco

    path = tmp_path / "x.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(
        {"images": [{"id": 1, "w": float("nan")}], "categories": []}).encode())
    document = read_coco_json(path)  # BOM and NaN: the standard library decides, as before
    assert document["images"][0]["id"] == 1 and document["images"][0]["w"] != 0
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CocoFormatError, match=r"x\.json: JSON nested too deeply"):
        read_coco_json(path)
    path.write_text('{"images": [1,, 2]}')
    with pytest.raises(DatasetError, match=r"x\.json: malformed JSON at line 1 column 15: Expecting value"):
        read_coco(path)
    with pytest.raises(CocoFormatError, match=r"nope\.json not found \(it does not exist\): look"):
        read_coco_json(tmp_path / "nope.json", missing_hint="look")
    path.write_text('{"images": [], "categories": [], "annotations": []}')
    assert read_coco(path).dataset["images"] == []


def test_importing_ingestion_does_not_load_torch():
    """Ingestion-only processes (a sensor, a CPU ingest worker) skip torch's multi-second import."""
    import subprocess
    import sys

    code = "import sys, al_assets.core.coco.ingest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
