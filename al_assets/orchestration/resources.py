"""Dagster resources: thin configurable handles onto the core's storage, source and S3 settings."""


import os

import dagster as dg
from pydantic import Field

from al_assets.core.storage import ObjectStore, S3Settings, TableStore, join_uri, to_uri

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
    s3: S3Config = Field(default_factory=S3Config)

    def objects(self) -> ObjectStore:
        return ObjectStore(self.s3.settings())

    def annotations_uri(self) -> str:
        return join_uri(to_uri(self.root), self.annotations_dir)

    def annotation_uri(self, batch: str) -> str:
        return join_uri(self.annotations_uri(), f"{batch}.json")

    def image_root(self) -> str:
        return join_uri(to_uri(self.root), self.images_dir)
