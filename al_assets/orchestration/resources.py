"""Dagster resources: thin configurable handles onto the core (storage, source, MLflow, device)."""

import os
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from al_assets.core.defaults import CHAMPION_ALIAS, CLASS_SCORES_MODEL
from al_assets.core.storage import ObjectStore, S3Settings, TableStore, join_uri, to_uri

if TYPE_CHECKING:
    from al_assets.core.registry import ModelRegistry

DEFAULT_STORAGE_ROOT = ".storage"
DEFAULT_SOURCE_ROOT = "data/demo"


class S3Config(dg.Config):
    """S3 endpoint and credentials; empty fields use the standard AWS chain (env, profile, role)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def settings(self) -> S3Settings:
        return S3Settings(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
        )


class StorageResource(dg.ConfigurableResource):
    """The one storage root for every table, report and (by default) MLflow's store."""

    root: str = Field(
        default_factory=lambda: os.environ.get("AL_ASSETS_STORAGE_ROOT", DEFAULT_STORAGE_ROOT),
        description="Local folder or s3://bucket/prefix (env AL_ASSETS_STORAGE_ROOT).",
    )
    s3: S3Config = Field(default_factory=S3Config)

    def tables(self) -> TableStore:
        return TableStore(self.root, self.s3.settings())

    @property
    def root_uri(self) -> str:
        return to_uri(self.root)


class CocoSourceResource(dg.ConfigurableResource):
    """Where the pool lives: ``<root>/<annotations_dir>/<batch>.json`` and ``<root>/<images_dir>/``.

    Each annotation file is one ingest batch named after its file stem; ``file_name`` entries are
    relative to the images folder (COCO's own layout: ``annotations/`` + ``val2017/``).
    """

    root: str = Field(
        default_factory=lambda: os.environ.get("AL_ASSETS_SOURCE_ROOT", DEFAULT_SOURCE_ROOT),
        description="Local folder or s3://bucket/prefix (env AL_ASSETS_SOURCE_ROOT).",
    )
    annotations_dir: str = "annotations"
    images_dir: str = "images"
    labels_dir: str = "labels"
    """Label files come back here (Label Studio JSON exports, COCO from any tool)."""
    max_label_mb: int = 512
    """Refuse label files larger than this."""
    s3: S3Config = Field(default_factory=S3Config)

    def objects(self) -> ObjectStore:
        return ObjectStore(self.s3.settings())

    def annotations_uri(self) -> str:
        return join_uri(to_uri(self.root), self.annotations_dir)

    def annotation_uri(self, batch: str) -> str:
        return join_uri(self.annotations_uri(), f"{batch}.json")

    def labels_uri(self) -> str:
        return join_uri(to_uri(self.root), self.labels_dir)

    def label_uri(self, label_batch: str) -> str:
        """``labels-<stem>`` -> ``<root>/labels/<stem>.json``."""
        from al_assets.core.splits import LABEL_BATCH_PREFIX

        return join_uri(self.labels_uri(), f"{label_batch.removeprefix(LABEL_BATCH_PREFIX)}.json")

    def read_label_file(self, uri: str) -> bytes:
        from al_assets.core.errors import CocoFormatError

        try:
            return self.objects().read_bytes(uri, max_bytes=self.max_label_mb * 1024**2)
        except FileNotFoundError:
            raise CocoFormatError(f"label file {uri} not found: put the export into "
                                  f"{self.labels_uri()}/ and name the batch after it") from None

    def image_root(self) -> str:
        return join_uri(to_uri(self.root), self.images_dir)


_SQLITE_NEEDS_LOCAL = (", where MLflow's default SQLite store would live: set MLFLOW_TRACKING_URI "
                       "to an MLflow server (http://host:5000) or a database URI")


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracking store and model registry (SQLite under the storage root by default).

    Set ``tracking_uri`` to an MLflow server (``http://mlflow:5000``) or a database URI in
    production; artifacts default to ``<storage root>/mlflow/artifacts`` (local or S3).
    """

    tracking_uri: str | None = Field(
        default=None, description="Default: sqlite:///<local storage root>/mlflow/mlflow.db",
    )
    registry_uri: str | None = None
    artifact_location: str | None = None
    experiment: str = "al_assets"
    model_name: str = Field(default=CLASS_SCORES_MODEL, description=(
        "Registered class-score model the pipeline follows: the sensors, the views and the "
        "gate use its alias unless a run's config names another model"))
    alias: str = Field(default=CHAMPION_ALIAS, description="The champion alias of model_name")
    storage: dg.ResourceDependency[StorageResource]
    http_max_retries: int = 2
    http_timeout_s: int = 15

    def registry(self) -> "ModelRegistry":
        from al_assets.core.registry import ModelRegistry, limit_http_retries, sqlite_uri
        from al_assets.core.storage.tables import local_root

        limit_http_retries(self.http_max_retries, self.http_timeout_s)
        root = self.storage.root_uri
        tracking = self.tracking_uri or sqlite_uri(local_root(root, _SQLITE_NEEDS_LOCAL) / "mlflow")
        artifacts = self.artifact_location or join_uri(root, "mlflow", "artifacts")
        return ModelRegistry(tracking, self.registry_uri, artifacts, self.experiment)


class DeviceResource(dg.ConfigurableResource):
    """Which accelerator a prediction run may use; one lease per GPU so runs never share one."""

    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    lease_dir: str | None = Field(
        default=None, description="Folder of per-GPU lock files (default: $DAGSTER_HOME/gpu-leases)"
    )

    def lease_folder(self) -> str:
        home = os.environ.get("DAGSTER_HOME") or os.path.join(os.getcwd(), ".dagster_home")
        return self.lease_dir or os.path.join(home, "gpu-leases")


def scratch_dir(*parts: str) -> str:
    """A local working folder that survives a killed run (resumable training state)."""
    home = os.environ.get("DAGSTER_HOME") or os.path.join(os.getcwd(), ".dagster_home")
    path = os.path.join(home, "al_assets-work", *parts)
    os.makedirs(path, exist_ok=True)
    return path
