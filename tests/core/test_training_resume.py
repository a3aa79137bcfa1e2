"""Resumable training (train_state.pt) and images read through an ObjectStore by URI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from al_assets.core.demo.generator import generate_demo_dataset
from al_assets.core.detection.training import (
    TRAIN_STATE_NAME,
    CocoDetectionDataset,
    DatasetError,
    train_detector,
)
from al_assets.core.storage.objects import ObjectStore

STEPS = 6
EVERY = 2
SETTINGS: dict[str, Any] = {
    "arch": "ssdlite320_mobilenet_v3_large",
    "steps": STEPS,
    "batch_size": 2,
    "seed": 3,
    "num_threads": 2,
    "tune_malloc": False,
}


class Killed(Exception):
    """Stands for the worker process dying mid-training."""


def kill_at(step: int, records: list[dict]) -> Any:
    def log(record: dict) -> None:
        records.append(record)
        if record["step"] == step:
            raise Killed(step)

    return log


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    (coco_json,) = generate_demo_dataset(root, n_images=6, seed=0)
    return coco_json, root / "images"


@pytest.fixture(scope="module")
def uninterrupted(demo: tuple[Path, Path]) -> dict[str, torch.Tensor]:
    return train_detector(*demo, **SETTINGS).state_dict()


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, different[:5]


def saved_step(checkpoint_dir: Path) -> int:
    return torch.load(checkpoint_dir / TRAIN_STATE_NAME, weights_only=True)["step"]


def test_killed_run_resumes_to_the_uninterrupted_model(
    demo: tuple[Path, Path], uninterrupted: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    records: list[dict] = []
    with pytest.raises(Killed):
        train_detector(
            *demo, **SETTINGS, checkpoint_dir=tmp_path, checkpoint_every=EVERY,
            log=kill_at(5, records), log_every=1,
        )
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert saved_step(tmp_path) == 4  # the last multiple of checkpoint_every before the kill

    records.clear()
    model = train_detector(
        *demo, **SETTINGS, checkpoint_dir=tmp_path, checkpoint_every=EVERY,
        log=records.append, log_every=1,
    )
    assert [r["step"] for r in records] == [5, 6]
    assert records[0]["resumed_from"] == 4 and "resumed_from" not in records[1]
    assert not (tmp_path / TRAIN_STATE_NAME).exists()  # finished: nothing left to resume
    assert_same_weights(model, uninterrupted)


def test_kill_on_a_checkpoint_step_keeps_the_previous_state(
    demo: tuple[Path, Path], uninterrupted: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    with pytest.raises(Killed):
        train_detector(
            *demo, **SETTINGS, checkpoint_dir=tmp_path, checkpoint_every=EVERY,
            log=kill_at(2, []), log_every=1,
        )
    assert not (tmp_path / TRAIN_STATE_NAME).exists()  # step 2's state is saved after its log
    with pytest.raises(Killed):
        train_detector(
            *demo, **SETTINGS, checkpoint_dir=tmp_path, checkpoint_every=EVERY,
            log=kill_at(4, []), log_every=1,
        )
    assert saved_step(tmp_path) == 2


def test_changed_data_restarts_from_step_one(
    demo: tuple[Path, Path], tmp_path: Path
) -> None:
    coco_json, image_dir = demo
    with pytest.raises(Killed):
        train_detector(
            coco_json, image_dir, **SETTINGS, checkpoint_dir=tmp_path,
            checkpoint_every=EVERY, log=kill_at(3, []), log_every=1,
        )
    assert saved_step(tmp_path) == 2
    data = json.loads(coco_json.read_text())
    data["images"] = data["images"][:-1]
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))

    records: list[dict] = []
    with pytest.warns(UserWarning, match="from another run"):
        with pytest.raises(Killed):
            train_detector(
                changed, image_dir, **SETTINGS, checkpoint_dir=tmp_path,
                checkpoint_every=EVERY, log=kill_at(1, records), log_every=1,
            )
    assert [r["step"] for r in records] == [1] and "resumed_from" not in records[0]
    assert not (tmp_path / TRAIN_STATE_NAME).exists()  # the stale state was deleted


def test_corrupt_state_restarts_with_a_warning(
    demo: tuple[Path, Path], uninterrupted: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    (tmp_path / TRAIN_STATE_NAME).write_bytes(b"half a torch.save file")
    records: list[dict] = []
    with pytest.warns(UserWarning, match="unreadable or damaged"):
        model = train_detector(
            *demo, **SETTINGS, checkpoint_dir=tmp_path, checkpoint_every=EVERY,
            log=records.append, log_every=3,
        )
    assert [r["step"] for r in records] == [3, 6]
    assert not any("resumed_from" in r for r in records)
    assert not (tmp_path / TRAIN_STATE_NAME).exists()
    assert_same_weights(model, uninterrupted)


def test_images_by_absolute_uri_through_an_object_store(
    demo: tuple[Path, Path], tmp_path: Path
) -> None:
    coco_json, image_dir = demo
    data = json.loads(coco_json.read_text())
    for image in data["images"]:
        image["file_name"] = (image_dir / image["file_name"]).resolve().as_uri()
    by_uri = tmp_path / "by_uri.json"
    by_uri.write_text(json.dumps(data))

    plain = CocoDetectionDataset(coco_json, image_dir)
    dataset = CocoDetectionDataset(by_uri, tmp_path / "elsewhere", objects=ObjectStore())
    assert [r.uri for r in dataset.records] == [r.uri for r in plain.records]
    assert [r.path for r in dataset.records] == [r.path.resolve() for r in plain.records]
    assert all(r.uri.startswith("file://") for r in dataset.records)
    assert torch.equal(dataset.load_image(0), plain.load_image(0))
    assert torch.equal(dataset.target(0)["boxes"], plain.target(0)["boxes"])

    records: list[dict] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = train_detector(
            by_uri, tmp_path / "elsewhere", **{**SETTINGS, "steps": 1}, objects=ObjectStore(),
            log=records.append,
        )
    assert not model.training and records[-1]["skipped_images"] == 0
    assert not [w for w in caught if "skipping image" in str(w.message)]


def test_image_root_uri_and_s3_without_a_store(demo: tuple[Path, Path], tmp_path: Path) -> None:
    coco_json, image_dir = demo
    root_uri = image_dir.resolve().as_uri()
    dataset = CocoDetectionDataset(coco_json, root_uri, objects=ObjectStore())
    first = dataset.records[0]
    assert first.uri.startswith(root_uri) and first.path.is_file()
    assert dataset.load_image(0).shape[0] == 3

    data = json.loads(coco_json.read_text())
    data["images"][0]["file_name"] = "s3://bucket/images/0001.jpg"
    on_s3 = tmp_path / "s3.json"
    on_s3.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="pass objects=ObjectStore"):
        CocoDetectionDataset(on_s3, image_dir)
    assert CocoDetectionDataset(on_s3, image_dir, ObjectStore()).records[0].location == (
        "s3://bucket/images/0001.jpg"
    )
