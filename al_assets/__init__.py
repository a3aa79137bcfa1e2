"""al_assets: active-learning data selection for object detection, as Dagster assets.

``al_assets.core`` is framework-free (COCO I/O, storage, detection, scoring, analysis, drawing);
``al_assets.orchestration`` is the thin Dagster layer that wires the core into assets.
"""

__version__ = "0.1.0"
