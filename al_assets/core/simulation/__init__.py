"""Active-learning simulation: replay selection strategies on a labeled pool, compare curves."""

from al_assets.core.simulation.loop import (
    DEFAULT_STRATEGIES,
    CocoSplit,
    SimulationConfig,
    SimulationError,
    load_pool,
    Tracking,
    demo_splits,
    run_simulation,
)
from al_assets.core.simulation.report import (
    SIMULATION_CURVES,
    LabelsSaved,
    curves_png,
    curves_table,
    default_targets,
    labels_saved,
    labels_to_reach,
    markdown_summary,
    mean_curves,
    write_outputs,
)
__all__ = [
    "DEFAULT_STRATEGIES",
    "SIMULATION_CURVES",
    "CocoSplit",
    "LabelsSaved",
    "SimulationConfig",
    "SimulationError",
    "load_pool",
    "Tracking",
    "curves_png",
    "curves_table",
    "default_targets",
    "demo_splits",
    "labels_saved",
    "labels_to_reach",
    "markdown_summary",
    "mean_curves",
    "run_simulation",
    "write_outputs",
]
