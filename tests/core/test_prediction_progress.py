"""Progress lines of a long prediction: throttled, always a final line."""

from al_assets.core.prediction.runner import throttled


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
