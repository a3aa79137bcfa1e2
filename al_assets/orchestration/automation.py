"""Declarative automation: when downstream assets refresh after upstream partitions change."""

import dagster as dg

PARTITION_FOLLOWS_UPSTREAM = dg.AutomationCondition.eager()
"""Per-partition scores follow their predictions partition."""

VIEW_REFRESH = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
"""Pool-wide views: once after any upstream partition updated and none is still in progress
(one refresh per burst of partition runs). ``eager`` would also wait for *missing* upstream
partitions, but model_version x shard always has some (old versions are never run on new
shards), so that clause is dropped."""

automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions (scores, views, report).",
)
