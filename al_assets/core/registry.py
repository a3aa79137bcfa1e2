"""The MLflow model registry as al_assets uses it: register, alias, list, resolve, load.

A detector is registered twice per version, as the plain detector and as its class-score
extractor (both pyfunc models over the same checkpoint, logged in one MLflow run, tagged with
each other's version). Prediction pins an exact version (``models:/<name>/<version>``), never
whatever an alias points to at run time, so a run is reproducible while the alias moves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from al_assets.core.errors import AlAssetsError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the al_assets package, shipped as code_paths
PIP_REQUIREMENTS = [
    "torch==2.14.1", "torchvision==0.29.1", "pillow", "numpy", "pandas", "pyarrow",
]


class RegistryError(AlAssetsError):
    """The registry is unreachable, or a model, version or alias does not exist."""


def open_client(tracking_uri: str, registry_uri: str | None = None) -> Any:
    """An MlflowClient whose store exists: a fresh SQLite store is created under a file lock.

    MLflow creates and migrates a SQLite store on first use; two processes doing that at once
    (two simulations side by side) make one die in its alembic migration. The lock serializes
    only that first touch; afterwards SQLite's own locking applies.
    """
    import mlflow

    registry_uri = registry_uri or tracking_uri
    if not tracking_uri.startswith("sqlite:///"):
        return mlflow.MlflowClient(tracking_uri, registry_uri)
    from filelock import FileLock

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock"):
        client = mlflow.MlflowClient(tracking_uri, registry_uri)
        client.search_experiments(max_results=1)  # creates and migrates the tracking tables
        client.search_registered_models(max_results=1)  # the registry's (same file here)
    return client


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created (with its artifact location) when missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # another process created it between the lookup and the insert
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    alias: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class ModelRegistry:
    """MlflowClient bound to one tracking/registry URI and one experiment."""

    def __init__(
        self, tracking_uri: str, registry_uri: str | None = None,
        artifact_location: str | None = None, experiment: str = "al_assets",
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.artifact_location = artifact_location
        self.experiment = experiment
        self.client = open_client(tracking_uri, self.registry_uri)

    @contextlib.contextmanager
    def _active(self) -> Iterator[Any]:
        """Point mlflow's fluent API (log_model, load_model) at this registry.

        The URIs are process-global in MLflow; they are left set afterwards on purpose, so that
        code in the same process (a notebook, a test) sees the same registry.
        """
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        yield mlflow

    def experiment_id(self) -> str:
        with self._translated("opening the experiment"):
            return get_or_create_experiment(self.client, self.experiment, self.artifact_location)

    # -- registration ----------------------------------------------------------------------
    def register_detector(
        self,
        checkpoint: Path,
        *,
        detector_name: str,
        class_scores_name: str,
        alias: str | None,
        tags: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        topk: int = 5,
    ) -> tuple[RegisteredVersion, RegisteredVersion]:
        """Log and register both pyfunc models, then move ``alias`` to the new versions."""
        from al_assets.core.detection.pyfunc import CLASS_SCORES, DETECTOR, signature

        experiment_id = self.experiment_id()
        versions = []
        with self._active() as mlflow, self._translated("registering the model"):
            for kind, name in ((DETECTOR, detector_name), (CLASS_SCORES, class_scores_name)):
                # One run per model, as the notebook did: both runs carry the same params/metrics.
                with mlflow.start_run(experiment_id=experiment_id, tags=dict(tags)):
                    mlflow.log_params(dict(params or {}))
                    mlflow.log_metrics({k: float(v) for k, v in (metrics or {}).items()})
                    versions.append(self._log_one(mlflow, kind, name, checkpoint, topk, signature(kind)))
        detector, scores = versions
        for mine, other in ((detector, scores), (scores, detector)):
            self._tag_version(mine, {**tags, "paired_model": f"{other.name}/{other.version}"})
            if alias:
                self.client.set_registered_model_alias(mine.name, alias, str(mine.version))
        return (
            RegisteredVersion(detector.name, detector.version, detector.run_id, alias),
            RegisteredVersion(scores.name, scores.version, scores.run_id, alias),
        )

    def _log_one(
        self, mlflow: Any, kind: str, name: str, checkpoint: Path, topk: int, sig: Any
    ) -> RegisteredVersion:
        from al_assets.core.detection import pyfunc_entry

        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        with tempfile.TemporaryDirectory(prefix="al_assets-code-") as staging:
            info = mlflow.pyfunc.log_model(
                name=kind,
                python_model=pyfunc_entry.__file__,  # models-from-code: no pickled objects
                model_config={"kind": kind, "topk": topk},
                artifacts={"checkpoint": str(checkpoint)},
                code_paths=[_package_code(Path(staging))],
                signature=sig,
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=name,
            )
        return RegisteredVersion(name, int(info.registered_model_version), info.run_id, None)

    def _tag_version(self, version: RegisteredVersion, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(version.name, str(version.version), key, value)

    def move_alias(self, name: str, version: int, alias: str) -> None:
        """Point ``alias`` at ``name`` v``version`` and at its paired model's version too."""
        with self._translated(f"moving alias {alias!r} of {name!r}"):
            found = self.client.get_model_version(name, str(version))
            self.client.set_registered_model_alias(name, alias, str(version))
            paired = found.tags.get("paired_model")
            if paired:
                other, _, other_version = paired.rpartition("/")
                self.client.set_registered_model_alias(other, alias, other_version)

    def alias_version(self, name: str, alias: str) -> int | None:
        """The version ``alias`` points at, or None when the model or the alias is not set."""
        try:
            return int(self.resolve(name, alias=alias).version)
        except RegistryError as exc:
            if "is not set" in str(exc) or "does not exist" in str(exc):
                return None
            raise

    # -- lookup ----------------------------------------------------------------------------
    def resolve(self, name: str, *, version: int | None = None, alias: str | None = None):
        """The MLflow ModelVersion for an exact version or an alias, with clear errors."""
        with self._translated(f"looking up model {name!r}"):
            if version is not None:
                return self.client.get_model_version(name, str(version))
            try:
                return self.client.get_model_version_by_alias(name, alias or "champion")
            except Exception as exc:
                if "alias" not in str(exc).lower():
                    raise
                known = self.client.get_registered_model(name).aliases
                raise RegistryError(
                    f"alias {alias!r} is not set on model {name!r} (aliases: {dict(known) or 'none'});"
                    " register a version or move the alias with MlflowClient.set_registered_model_alias"
                ) from None

    def versions(self, name: str) -> list[int]:
        """All version numbers of a registered model, ascending (empty if it does not exist)."""
        with self._translated(f"listing versions of {name!r}"):
            found = self.client.search_model_versions(f"name = '{name}'")
        return sorted(int(v.version) for v in found)

    def list_models(self) -> list[dict[str, Any]]:
        """Registered models, versions and aliases: the notebook's ``SHOW MODELS``."""
        with self._translated("listing registered models"):
            models = self.client.search_registered_models()
            rows = []
            for model in models:
                for version in self.client.search_model_versions(f"name = '{model.name}'"):
                    rows.append({
                        "name": model.name,
                        "version": int(version.version),
                        "aliases": ",".join(
                            a for a, v in model.aliases.items() if int(v) == int(version.version)
                        ),
                        "uri": f"models:/{model.name}/{version.version}",
                        "architecture": version.tags.get("architecture", ""),
                        "run_id": version.run_id,
                    })
        return sorted(rows, key=lambda r: (r["name"], r["version"]))

    def load(self, name: str, version: int) -> Any:
        """Load ``models:/name/version`` and return the al_assets model object inside."""
        import mlflow.pyfunc

        self.resolve(name, version=version)
        with self._active(), self._translated(f"loading models:/{name}/{version}"):
            return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """MLflow errors to RegistryError naming the registry and what to do."""
        try:
            yield
        except RegistryError:
            raise
        except Exception as exc:
            if type(exc).__name__ not in {"MlflowException", "RestException", "ConnectionError",
                                          "MaxRetryError", "OperationalError"}:
                raise
            text = str(exc)
            if "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower():
                hint = ("it does not exist; register it first (`al-assets register`, or materialize "
                        "registered_model)")
            else:
                hint = ("the registry is unreachable or failed; check the tracking URI, that the "
                        "server is up, and retry")
            raise RegistryError(f"{action} at {self.registry_uri}: {hint} ({text[:300]})") from exc


def _package_code(staging: Path) -> str:
    """The package's source for ``code_paths``: no shipped weights, caches or bytecode."""
    target = staging / PACKAGE_DIR.name
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns(
        "weights", "__pycache__", "*.pyc"))
    return str(target)


def sqlite_uri(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def limit_http_retries(max_retries: int, timeout_s: int) -> None:
    """Fail fast when a tracking server is down (MLflow's defaults retry for minutes)."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
