"""Labels back from a labeling tool: a Label Studio or COCO export -> a new label batch."""

from al_assets.core.labels.imports import LabelBatch, LabelImportError, import_labels

__all__ = ["LabelBatch", "LabelImportError", "import_labels"]
