"""Storage: one root (local folder or s3://) for Parquet tables and files, atomic writes."""

from al_assets.core.storage.objects import ObjectInfo, ObjectStore, is_s3, join_uri, to_uri
from al_assets.core.storage.s3 import S3Settings
from al_assets.core.storage.tables import TableStore

__all__ = ["ObjectInfo", "ObjectStore", "S3Settings", "TableStore", "is_s3", "join_uri", "to_uri"]
