"""MLflow runs of the loop: one way to open a run, log params and metrics, and close it.

Why: the ``challenger`` asset (one run per training) and the simulation (one run per strategy
x seed) both track through an explicit ``MlflowClient`` (never MLflow's global active run,
which would leak between Dagster runs in one process); one class does it for both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from al_assets.core.loop.settings import TrainSettings
from al_assets.core.progress import Progress

PENDING_METRICS = 300  # metrics buffered before one log_batch call (MLflow accepts 1,000)


class TrackedRun:
    """One MLflow run: params at the start, metrics per step (buffered), a final status."""

    def __init__(self, client, run_id: str) -> None:
        """An existing run (the gate adds its figures to the challenger's training run)."""
        self.client, self.run_id = client, run_id
        self._pending: list = []

    @classmethod
    def create(cls, client, experiment_id: str, run_name: str, tags: Mapping[str, str],
               params: Mapping[str, str]) -> TrackedRun:
        from mlflow.entities import Param

        run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return cls(client, run_id)

    def log(self, metrics: Mapping[str, float | None], step: int, *, flush: bool = True) -> None:
        """Metrics of one step (None values are skipped); written now, or with a later flush."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items()
                          if v is not None]
        if flush or len(self._pending) >= PENDING_METRICS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


class TrainingRun:
    """The MLflow run of one challenger training: params, loss per step, lineage; progress
    lines through ``log`` (Dagster's log in the asset)."""

    def __init__(self, client, experiment_id: str, base: str, lineage: list[str],
                 settings: TrainSettings, log: Callable[[str], None],
                 tags: Mapping[str, str] = ()) -> None:
        self.base, self.lineage, self.log = base, lineage, log
        self.run = TrackedRun.create(
            client, experiment_id, f"train-{base}",
            {"al_assets.kind": "training", "base_version": base, **dict(tags)},
            {**settings.params(), "base_version": base, "label_batches": ",".join(lineage)[:500]})
        self.run_id = self.run.run_id
        self.progress = Progress(log, "training", unit="steps", every_s=10.0)
        self.resumed_from: int | None = None

    def step(self, entry: dict) -> None:
        """``train_challenger``'s per-step log entry."""
        if "resumed_from" in entry:
            self.resumed_from = int(entry["resumed_from"])
            self.log(f"resumed from the checkpoint of step {self.resumed_from}")
        self.run.log({k: entry[k] for k in ("loss", "lr", "images_per_s") if k in entry},
                     int(entry["step"]), flush=entry["step"] == entry["steps"])
        self.progress.label = f"training (loss {entry['loss']:.3f})"
        self.progress(int(entry["step"]), int(entry["steps"]))

    def finish(self, result) -> None:
        self.run.log({"train_images": result.images, "train_boxes": result.boxes,
                      "train_seconds": result.seconds}, 0)
        self.run.finish()

    def tags(self, result, arch: str) -> dict[str, str]:
        """The registered model version's tags: where it came from."""
        return {"training_run_id": self.run_id, "base_version": self.base,
                "label_batches": ",".join(self.lineage)[:5000],
                "train_images": str(result.images), "train_boxes": str(result.boxes),
                "architecture": arch, "weights_source": "training",
                "training_data": f"{result.images} labeled train-split images"}
