"""The asset graph pinned: keys, deps, groups, partitions, automation, checks, jobs, sensors,
and each asset's op with its config fields (the run-config keys users write).

A change to the graph is a change to what users and their automation see; it must be made on
purpose. After an intended change: ``AL_ASSETS_UPDATE_SNAPSHOT=1 pytest`` this file and review
the diff of graph_snapshot.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

SNAPSHOT = Path(__file__).with_name("graph_snapshot.json")


def _partitions(definition) -> str | dict | None:
    if definition is None:
        return None
    if isinstance(definition, dg.MultiPartitionsDefinition):
        return {d.name: _partitions(d.partitions_def) for d in definition.partitions_defs}
    return f"{type(definition).__name__}:{getattr(definition, 'name', '')}"


def _config_fields(op) -> list[str]:
    schema = op.config_schema
    config_type = schema.as_field().config_type if schema is not None else None
    return sorted(getattr(config_type, "fields", None) or {})


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        condition = node.automation_condition
        assets[key.to_user_string()] = {
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "automation": condition.get_label() if condition else None,
            "checks": sorted(c.name for c in node.check_keys),
            "pool": next(iter(node.pools or ()), None) if hasattr(node, "pools") else None,
            "op": node.assets_def.node_def.name,
            "config": _config_fields(node.assets_def.node_def),
        }
    jobs = {job.name: sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
            for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}
    return {"assets": assets, "jobs": jobs,
            "sensors": sorted(s.name for s in defs.sensors or []),
            "schedules": sorted(s.name for s in defs.schedules or [])}


def test_the_asset_graph_matches_its_snapshot() -> None:
    from al_assets.orchestration.definitions import defs

    current = graph_snapshot(defs)
    if os.environ.get("AL_ASSETS_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, (
        "the asset graph changed; if on purpose, rerun with AL_ASSETS_UPDATE_SNAPSHOT=1 and "
        "review the diff of tests/orchestration/graph_snapshot.json")
