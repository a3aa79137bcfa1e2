"""Model registration in a real MLflow registry (SQLite in a temporary folder)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from al_assets.core.registry import ModelRegistry, RegistryError
from al_assets.orchestration.runs import RunFailedError, register
from tests.conftest import free_port


def _image_bytes(demo_root: Path, n: int) -> list[bytes]:
    files = sorted((demo_root / "images").iterdir())[:n]
    return [f.read_bytes() for f in files]


def test_register_twice_moves_the_alias_and_loads_by_alias_and_version(
    ingested, checkpoints, demo_root
) -> None:
    first = register(ingested.defs, ingested.instance, {"weights": str(checkpoints[0])})
    second = register(ingested.defs, ingested.instance, {"weights": str(checkpoints[1])})
    assert (first, second) == ("al-class-scores-v1", "al-class-scores-v2")
    assert ingested.instance.get_dynamic_partitions("model_version") == [first, second]

    registry = ingested.mlflow.registry()
    assert registry.resolve("al-class-scores", alias="champion").version == 2
    assert registry.resolve("al-detector", alias="champion").version == 2
    rows = registry.list_models()
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        ("al-class-scores", 1, ""), ("al-class-scores", 2, "champion"),
        ("al-detector", 1, ""), ("al-detector", 2, "champion"),
    ]
    version = registry.client.get_model_version("al-class-scores", "2")
    assert version.tags["architecture"] == "ssdlite320_mobilenet_v3_large"
    assert version.tags["paired_model"] == "al-detector/2"
    assert "circle" in version.tags["category_names"]

    import mlflow.pyfunc

    images = pd.DataFrame({"image": _image_bytes(demo_root, 2)})
    by_alias = mlflow.pyfunc.load_model("models:/al-class-scores@champion").predict(images)
    by_version = mlflow.pyfunc.load_model("models:/al-class-scores/2").predict(images)
    pd.testing.assert_frame_equal(by_alias, by_version)
    older = mlflow.pyfunc.load_model("models:/al-class-scores/1").predict(images)
    assert not older[["score"]].equals(by_version[["score"]])
    assert set(by_version["image_index"]) <= {0, 1}
    first_row = by_version.iloc[0]
    assert sum(first_row["distribution"]) == pytest.approx(1.0, abs=1e-4)
    assert list(first_row["scores"]) == sorted(first_row["scores"], reverse=True)


def test_registered_model_loads_in_a_fresh_process_with_only_mlflow(
    ingested, checkpoints, demo_root, tmp_path
) -> None:
    """No al_assets on the path: the model brings its own code (code_paths) and weights."""
    register(ingested.defs, ingested.instance, {"weights": str(checkpoints[0])})
    image = sorted((demo_root / "images").glob("*.jpg"))[0]
    script = (
        "import sys, json\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('al_assets') is None, 'al_assets must not be importable'\n"
        "import mlflow, mlflow.pyfunc, pandas as pd\n"
        f"mlflow.set_tracking_uri({ingested.mlflow.registry().tracking_uri!r})\n"
        "model = mlflow.pyfunc.load_model('models:/al-detector@champion')\n"
        f"out = model.predict(pd.DataFrame({{'image': [open({str(image)!r}, 'rb').read()]}}))\n"
        "print(json.dumps({'columns': list(out.columns), 'rows': len(out),\n"
        "                  'inputs': model.metadata.get_input_schema().input_names()}))\n"
    )
    site = sysconfig.get_paths()["purelib"]
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": site, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["columns"] == ["image_index", "xmin", "ymin", "xmax", "ymax", "score", "label_id"]
    assert out["inputs"] == ["image"]
    assert out["rows"] > 0


def test_unknown_alias_and_version_fail_clearly(ingested, checkpoints) -> None:
    register(ingested.defs, ingested.instance, {"weights": str(checkpoints[0])})
    registry = ingested.mlflow.registry()
    with pytest.raises(RegistryError, match="alias 'staging' is not set on model 'al-class-scores'"):
        registry.resolve("al-class-scores", alias="staging")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.resolve("al-class-scores", version=42)


def test_unreachable_registry_fails_clearly(tmp_path) -> None:
    from al_assets.core.registry import limit_http_retries

    limit_http_retries(0, 5)
    registry = ModelRegistry(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryError, match="unreachable"):
        registry.versions("al-class-scores")


def test_category_mismatch_with_the_dataset_is_refused(ingested, tmp_path) -> None:
    from al_assets.core.detection.categories import CategoryMap
    from al_assets.core.detection.factory import build_detector, save_checkpoint

    wrong = CategoryMap((1, 3), ("dog", "cat"))
    path = save_checkpoint(tmp_path / "wrong.pt", build_detector(
        "ssdlite320_mobilenet_v3_large", 3), arch="ssdlite320_mobilenet_v3_large", categories=wrong)
    with pytest.raises(RunFailedError, match="disagree on category ids .*1: model 'dog' vs dataset 'circle'"):
        register(ingested.defs, ingested.instance, {"weights": str(path)})


def test_missing_checkpoint_and_bad_weights_fail_clearly(ingested, tmp_path) -> None:
    with pytest.raises(RunFailedError, match="does not exist"):
        register(ingested.defs, ingested.instance, {"weights": str(tmp_path / "nope.pt")})
    with pytest.raises(RunFailedError, match="unknown weights 'NOPE_V9'"):
        register(ingested.defs, ingested.instance, {"weights": "NOPE_V9"})
