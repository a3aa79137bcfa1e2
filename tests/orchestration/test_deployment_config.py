"""docs/deployment.md's Kubernetes config, checked by Dagster's and dagster-k8s's own schemas.

The cluster is not here; what can be checked is that the documented run launcher config loads
as dagster.yaml would load it, and that the GPU request tag is one dagster-k8s understands and
turns into one ``nvidia.com/gpu`` per prediction run.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_documented_k8s_run_launcher_config_passes_its_schema() -> None:
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    launcher = next(yaml.safe_load(b)["run_launcher"] for b in _blocks("yaml")
                    if "K8sRunLauncher" in b)
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    assert result.value["job_namespace"] == "al-assets"
    wrong = process_config(K8sRunLauncher.config_type(), {**launcher["config"], "job_namspace": "x"})
    assert not wrong.success  # the schema really checks: a typo'd key is refused


def test_the_documented_gpu_tag_requests_one_gpu_per_run() -> None:
    from dagster_k8s.job import get_user_defined_k8s_config

    tag = next(ast.literal_eval(re.sub(r"#.*\n", "\n", b)) for b in _blocks("python")
               if "dagster-k8s/config" in b)
    config = get_user_defined_k8s_config({"dagster-k8s/config": json.dumps(tag["dagster-k8s/config"])})
    resources = config.container_config["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert set(resources["requests"]) == {"cpu", "memory"}
