"""The CLI's answers to a user's mistakes: one or two lines naming the thing and the fix, exit
code 1, no traceback, and nothing invalid written to the instance (issue 14, item 4 and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from al_assets import cli
from al_assets.orchestration.resources import S3Config, StorageResource
from tests.orchestration.conftest import Pipeline, make_pipeline


def _use(monkeypatch: pytest.MonkeyPatch, p: Pipeline) -> None:
    """Point the CLI at this test's pipeline (its resources) and instance."""
    import al_assets.orchestration.definitions as definitions

    monkeypatch.setattr(cli, "_defs_and_instance", lambda: (p.defs, p.instance))
    monkeypatch.setattr(definitions, "defs", p.defs)


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # only what this command prints
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_unknown_shard_is_one_line_naming_the_known_ones(ingested, monkeypatch, capsys) -> None:
    from al_assets.orchestration.runs import register

    _use(monkeypatch, ingested)
    key = register(ingested.defs, ingested.instance)  # a real version: only the shard is wrong
    code, _, err = _run(capsys, "predict", "--model-version", key, "--shard", "batch-009.s000")
    assert code == 1
    (line,) = _error_lines(err)
    assert "unknown shard 'batch-009.s000'; known: batch-000.s000" in line
    assert "al-assets ingest" in line
    assert not ingested.instance.get_materialized_partitions(dg.AssetKey("detections"))


def test_typod_model_version_is_refused_and_never_becomes_a_partition(
    ingested, monkeypatch, capsys
) -> None:
    from al_assets.orchestration.runs import register

    _use(monkeypatch, ingested)
    register(ingested.defs, ingested.instance)
    before = ingested.instance.get_dynamic_partitions("model_version")
    code, _, err = _run(capsys, "predict", "--model-version", "al-class-scores-v9")
    (line,) = _error_lines(err)
    assert code == 1
    assert "'al-class-scores-v9' does not exist: al-class-scores has versions v1" in line
    assert "al-assets models" in line
    code, _, err = _run(capsys, "predict", "--model-version", "al-class-scores-9")
    assert code == 1 and "is not a model version key" in err
    assert ingested.instance.get_dynamic_partitions("model_version") == before


def test_missing_or_empty_source_folder_says_the_expected_layout(
    instance, tmp_path, monkeypatch, capsys
) -> None:
    p = make_pipeline(instance, tmp_path / "nothing", tmp_path)
    _use(monkeypatch, p)
    code, _, err = _run(capsys, "ingest")
    (line,) = _error_lines(err)
    assert code == 1 and "no annotations folder at" in line
    assert "annotations/<batch>.json" in line and "AL_ASSETS_SOURCE_ROOT" in line
    (tmp_path / "nothing" / "annotations").mkdir(parents=True)
    code, _, err = _run(capsys, "ingest")
    (line,) = _error_lines(err)
    assert code == 1 and "no annotation files in" in line
    assert instance.get_dynamic_partitions("batch") == []


def test_a_bad_annotation_file_never_blocks_the_good_ones(
    instance, demo_copy: Path, tmp_path, monkeypatch, capsys
) -> None:
    bad = demo_copy / "annotations" / "a_zero.json"
    bad.write_bytes(b"")
    p = make_pipeline(instance, demo_copy, tmp_path)
    _use(monkeypatch, p)
    code, out, err = _run(capsys, "ingest")
    assert code == 1
    assert "ingested batches: batch-000, batch-001" in out
    assert "a_zero" in err and "fix them and run `al-assets ingest` again" in err
    images = dg.AssetKey("images")
    assert instance.get_materialized_partitions(images) == {"batch-000", "batch-001"}
    code, _, err = _run(capsys, "ingest", "--batch", "batch-0001")  # a typo'd batch name
    (line,) = _error_lines(err)
    assert code == 1 and "unknown batch 'batch-0001'; known: a_zero, batch-000, batch-001" in line
    code, out, err = _run(capsys, "ingest")  # the bad one is still pending: reported again
    assert code == 1 and "a_zero" in err and "ingested batches: none new" in out
    good = json.loads((demo_copy / "annotations" / "batch-000.json").read_text())
    image = {**good["images"][0], "id": 10**6}  # a new id for an existing picture
    bad.write_text(json.dumps({"images": [image], "annotations": [],
                               "categories": good["categories"]}))
    code, out, err = _run(capsys, "ingest")
    assert code == 0 and "ingested batches: a_zero" in out and "error" not in err, err
    assert "a_zero" in instance.get_materialized_partitions(images)


def test_s3_without_credentials_says_which_variables_to_set(
    instance, demo_root, tmp_path, monkeypatch, capsys, s3_server
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    from al_assets.orchestration.definitions import build_definitions
    from al_assets.orchestration.resources import CocoSourceResource

    p = make_pipeline(instance, demo_root, tmp_path)
    source = CocoSourceResource(root="s3://pool/data", s3=S3Config(
        endpoint_url=s3_server.endpoint_url, region="us-east-1"))
    defs = build_definitions({**p.defs.resources, "coco_source": source})
    _use(monkeypatch, Pipeline(defs, instance, p.storage, p.mlflow, source))
    code, _, err = _run(capsys, "ingest")
    (line,) = _error_lines(err)
    assert code == 1 and "s3://pool/data/annotations" in line
    assert "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in line


def test_s3_storage_without_a_tracking_uri_points_at_mlflow_tracking_uri(
    instance, demo_root, tmp_path, monkeypatch, capsys
) -> None:
    from al_assets.orchestration.resources import MlflowResource

    storage = StorageResource(root="s3://bucket/al-assets")
    p = make_pipeline(instance, demo_root, tmp_path, storage=storage,
                      mlflow=MlflowResource(storage=storage))
    _use(monkeypatch, p)
    for argv in (["models"], ["predict"]):
        code, _, err = _run(capsys, *argv)
        (line,) = _error_lines(err)
        assert code == 1 and "s3://bucket/al-assets" in line
        assert "set MLFLOW_TRACKING_URI" in line


def test_views_before_any_registered_model_are_one_line_naming_the_command(
    ingested, monkeypatch, capsys
) -> None:
    _use(monkeypatch, ingested)
    code, _, err = _run(capsys, "refresh")
    assert code == 1
    (line,) = _error_lines(err)  # no "Dependencies for step ... Not executing" lines either
    assert line.startswith("error: refresh_views_job [-] failed: class_frequency, entropy, ")
    assert line.count("does not exist") == 1  # six views, one reason: said once
    assert "`al-assets register`" in line


def test_a_negative_pretraining_extension_is_refused_before_anything_is_written(
        tmp_path, capsys) -> None:
    out = tmp_path / "sim"
    code, _, err = _run(capsys, "simulate", "--preset", "long_tail", "--pretrain-more-steps",
                        "-5", "--out", str(out), "--preset-root", str(tmp_path / "presets"),
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert code == 1
    (line,) = _error_lines(err)
    assert "more_steps >= 0" in line and "more_steps=-5" in line
    assert not out.exists() and not (tmp_path / "presets").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_a_pretraining_extension_without_a_preset_is_refused(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "simulate", "--pretrain-more-steps", "900", "--out",
                        str(tmp_path / "sim"))
    assert code == 1
    (line,) = _error_lines(err)
    assert "--pretrain-more-steps" in line and "--preset NAME" in line
    assert not (tmp_path / "sim").exists()


def test_a_merge_without_a_preset_or_of_unfinished_runs_is_one_line(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "simulate", "--merge", str(tmp_path / "a"), "--out",
                        str(tmp_path / "sim"))
    assert code == 1
    (line,) = _error_lines(err)
    assert "--merge works on the preset experiments" in line
    code, _, err = _run(capsys, "simulate", "--preset", "long_tail", "--merge",
                        str(tmp_path / "a"), "--out", str(tmp_path / "sim"))
    assert code == 1
    (line,) = _error_lines(err)
    assert "no curves.parquet in" in line and str(tmp_path / "a") in line
    assert not (tmp_path / "sim").exists()
