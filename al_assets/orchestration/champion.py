"""Which model version the pool-wide views describe: the alias's version, resolved at run time."""

from collections.abc import Iterator, Sequence

import dagster as dg
import pyarrow as pa

from al_assets.core.storage import TableStore
from al_assets.orchestration.partitions import model_version_key
from al_assets.orchestration.resources import MlflowResource


class ChampionConfig(dg.Config):
    model_name: str | None = None
    """Registered class-score model whose alias the views follow (default: the mlflow
    resource's model_name, which the sensors follow too)."""
    alias: str | None = None
    """Its alias (default: the mlflow resource's alias)."""
    model_version: str | None = None
    """Pin a model-version partition key (e.g. al-class-scores-v2) instead of the alias."""

    def champion(self, mlflow: MlflowResource) -> tuple[str, str]:
        """(model name, alias): this run's, else the deployment's (the mlflow resource)."""
        return self.model_name or mlflow.model_name, self.alias or mlflow.alias


def champion_key(config: ChampionConfig, mlflow: MlflowResource) -> str:
    if config.model_version:
        return config.model_version
    name, alias = config.champion(mlflow)
    return model_version_key(name, mlflow.registry().resolve(name, alias=alias).version)


def champion_partitions(
    config: ChampionConfig, mlflow: MlflowResource, store: TableStore, table: str
) -> tuple[str, list[str]]:
    """The champion's key and the partitions of ``table`` written for it so far."""
    key = champion_key(config, mlflow)
    return key, store.partitions(table, under=key)


def read_partitions(
    store: TableStore, table: str, partitions: Sequence[str], columns: Sequence[str] | None = None
) -> Iterator[pa.Table]:
    """One partition at a time, so pool-wide views hold one shard plus their result."""
    for partition in partitions:
        yield store.read(table, partition, columns)
        pa.default_memory_pool().release_unused()  # keep the peak at one shard, not the sum
