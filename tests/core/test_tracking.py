"""The one MLflow run helper: params once, metrics buffered until flushed, None skipped."""

from __future__ import annotations

from pathlib import Path

from al_assets.core.registry import get_or_create_experiment, open_client
from al_assets.core.tracking import TrackedRun


def test_a_tracked_run_buffers_metrics_skips_none_and_finishes(tmp_path: Path) -> None:
    client = open_client(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = get_or_create_experiment(client, "t", str(tmp_path / "artifacts"))
    run = TrackedRun.create(client, experiment, "r", {"kind": "test"}, {"steps": 3})
    assert client.get_run(run.run_id).data.params == {"steps": "3"}
    run.log({"loss": 2.0, "map_low": None}, 1, flush=False)
    run.log({"loss": 1.5}, 2, flush=False)
    assert client.get_metric_history(run.run_id, "loss") == []  # buffered, not yet written
    TrackedRun(client, run.run_id).log({"heldout_map": 0.25}, 0)  # reopened: written at once
    run.finish()
    done = client.get_run(run.run_id)
    assert done.info.status == "FINISHED" and done.data.tags["kind"] == "test"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [
        (1, 2.0), (2, 1.5)]
    assert "map_low" not in done.data.metrics and done.data.metrics["heldout_map"] == 0.25
