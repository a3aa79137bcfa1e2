"""Progress of a long step (a shard's prediction, training steps, simulation rounds).

Two readers: a person at a terminal (the CLI, in-process runs) gets a tqdm bar; logs (Dagster's
run log, CI, run workers under the daemon) get a line at most every ``every_s`` seconds and
one at the end. ``AL_ASSETS_PROGRESS_BARS=0|1`` overrides the terminal detection.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from tqdm import tqdm


def bars_wanted() -> bool:
    setting = os.environ.get("AL_ASSETS_PROGRESS_BARS", "auto").strip().lower()
    if setting in {"0", "1"}:
        return setting == "1"
    return sys.stderr.isatty()


class Progress:
    """``progress(done, total)``: reports "label: done/total unit (%, rate)" and draws a bar."""

    def __init__(self, report: Callable[[str], None], label: str, *, unit: str = "images",
                 every_s: float = 15.0, bar: bool | None = None) -> None:
        self.report, self.label, self.unit, self.every_s = report, label, unit, every_s
        self.start = self.last = time.perf_counter()
        self.bar: tqdm | None = None
        self.want_bar = bars_wanted() if bar is None else bar

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        self._draw(done, total)
        if now - self.last >= self.every_s or done >= total:
            self.last = now
            rate = done / (now - self.start) if now > self.start else 0.0
            self.report(f"{self.label}: {done}/{total} {self.unit} "
                        f"({100 * done / max(total, 1):.0f} %, {rate:.1f} {self.unit}/s)")

    def _draw(self, done: int, total: int) -> None:
        if not self.want_bar:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, unit=self.unit.rstrip("s") or "it",
                            leave=False, file=sys.stderr, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
            self.bar = None


def throttled(report: Callable[[str], None], label: str, every_s: float = 15.0,
              unit: str = "images") -> Progress:
    """A ``progress`` callback for ``report`` (a logger's info); see ``Progress``."""
    return Progress(report, label, unit=unit, every_s=every_s)
