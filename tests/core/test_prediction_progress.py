"""Progress of a long step: throttled lines (always a final one), a bar on a terminal."""

import io

import pytest

from al_assets.core import progress
from al_assets.core.progress import Progress, bars_wanted, throttled


def test_throttled_reports_at_most_every_interval_and_always_at_the_end() -> None:
    lines: list[str] = []
    update = throttled(lines.append, "predicting v1/batch-000.s000", every_s=3600)
    for done in range(8, 100, 8):
        update(done, 100)
    assert lines == []  # within the interval: silent
    update(100, 100)
    assert len(lines) == 1 and lines[0].startswith("predicting v1/batch-000.s000: 100/100 images")
    every = throttled(lines.append, "x", every_s=0)
    every(5, 10)
    assert lines[-1].startswith("x: 5/10 images (50 %")


def test_a_bar_is_drawn_on_a_terminal_and_closed_at_the_end(monkeypatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", screen)
    lines: list[str] = []
    update = Progress(lines.append, "training", unit="steps", every_s=3600, bar=True)
    for step in (1, 2, 3):
        update(step, 3)
    assert "training:" in screen.getvalue() and "/3 [" in screen.getvalue()  # a tqdm bar
    assert update.bar is None and lines == ["training: 3/3 steps (100 %, " + lines[0].split(
        "(100 %, ")[1]]


@pytest.mark.parametrize(("setting", "tty", "expected"), [
    ("auto", True, True), ("auto", False, False), ("0", True, False), ("1", False, True)])
def test_bars_follow_the_terminal_unless_set(monkeypatch, setting, tty, expected) -> None:
    monkeypatch.setenv("AL_ASSETS_PROGRESS_BARS", setting)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: tty, raising=False)
    assert bars_wanted() is expected
