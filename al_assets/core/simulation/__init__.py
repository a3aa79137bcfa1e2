"""Active-learning simulation: replay selection strategies on a labeled pool, compare curves.

Names are loaded on first use (PEP 562): ``core.simulation.config`` stays importable without
torch, so the CLI can build ``simulate``'s flags from ``SimulationConfig`` in milliseconds.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "DEFAULT_STRATEGIES": "config",
    "SimulationConfig": "config",
    "SimulationError": "config",
    "CocoSplit": "loop",
    "load_pool": "loop",
    "Tracking": "loop",
    "demo_splits": "loop",
    "run_simulation": "loop",
    "SIMULATION_CURVES": "report",
    "LabelsSaved": "report",
    "curves_png": "report",
    "curves_table": "report",
    "default_targets": "report",
    "labels_saved": "report",
    "labels_to_reach": "report",
    "markdown_summary": "report",
    "mean_curves": "report",
    "write_outputs": "report",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
