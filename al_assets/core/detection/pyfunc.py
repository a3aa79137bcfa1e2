"""MLflow pyfunc wrappers: a detector or its class-score extractor, pre/post-processing inside.

A registered model must be usable by anyone with MLflow alone (``mlflow.pyfunc.load_model``),
so the wrapper takes encoded image bytes, decodes them itself, and returns plain columns with
dataset category ids. The checkpoint travels as an artifact; the code as ``code_paths``.

Input: a DataFrame with a binary ``image`` column (JPEG/PNG/... bytes).
Output: one row per detection (:data:`PYFUNC_OUTPUT_COLUMNS`): ``image_index`` (row of the
input), ``xmin, ymin, xmax, ymax`` (pixels), ``score``, ``label_id`` and, for the class-score
model, ``label_ids``/``scores`` (top-k of the foreground distribution, descending) and
``distribution`` (all classes, in ``category_ids`` order).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from al_assets.core.detection.extractor import ClassScoreExtractor
from al_assets.core.detection.factory import load_detector
from al_assets.core.images import decode_rgb

DETECTOR = "detector"
CLASS_SCORES = "class_scores"
BOX_COLUMNS = ["xmin", "ymin", "xmax", "ymax"]
PYFUNC_OUTPUT_COLUMNS = ["image_index", *BOX_COLUMNS, "score", "label_id"]
CLASS_SCORE_COLUMNS = ["label_ids", "scores", "distribution"]


def signature(kind: str) -> ModelSignature:
    """Input/output signature of the pyfunc model of ``kind`` (detector | class_scores)."""
    outputs = [ColSpec(DataType.long, "image_index")]
    outputs += [ColSpec(DataType.float, c) for c in BOX_COLUMNS + ["score"]]
    outputs += [ColSpec(DataType.long, "label_id")]
    if kind == CLASS_SCORES:
        outputs += [
            ColSpec(Array(DataType.long), "label_ids"),
            ColSpec(Array(DataType.float), "scores"),
            ColSpec(Array(DataType.float), "distribution"),
        ]
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]), outputs=Schema(outputs)
    )


class DetectionModel(mlflow.pyfunc.PythonModel):
    """Pyfunc around an al_assets checkpoint (artifact ``checkpoint``).

    Logged as code (``pyfunc_entry.py``) with ``model_config`` ``{"kind", "topk"}``, so
    loading unpickles nothing.
    """

    def __init__(self, kind: str = CLASS_SCORES, topk: int = 5, batch_size: int = 8) -> None:
        self.kind = kind
        self.topk = topk
        self.batch_size = batch_size
        self.extractor: ClassScoreExtractor | None = None

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        self.kind = config.get("kind", self.kind)
        self.topk = int(config.get("topk", self.topk))
        self.load_checkpoint(context.artifacts["checkpoint"])

    def load_checkpoint(self, path: str) -> None:
        if self.kind not in (DETECTOR, CLASS_SCORES):
            raise ValueError(f"kind must be {DETECTOR!r} or {CLASS_SCORES!r}, got {self.kind!r}")
        model, checkpoint = load_detector(path)
        self.checkpoint_path = path  # training warm-starts from the registered weights
        self.arch = checkpoint.arch
        self.extractor = ClassScoreExtractor(
            model.eval(), checkpoint.categories.category_ids, topk=self.topk,
            with_distribution=self.kind == CLASS_SCORES,
        )
        self.category_names = checkpoint.categories.names

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None):
        if "image" not in model_input.columns:
            raise ValueError("input needs a binary 'image' column of encoded image bytes")
        rows: list[dict[str, Any]] = []
        images = list(model_input["image"])
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            tensors = [
                decode_rgb(bytes(data), f"input row {start + i}").float().div_(255)
                for i, data in enumerate(chunk)
            ]
            for offset, detections in enumerate(self.detect(tensors)):
                rows += self._rows(start + offset, detections)
        columns = PYFUNC_OUTPUT_COLUMNS + (CLASS_SCORE_COLUMNS if self.kind == CLASS_SCORES else [])
        return pd.DataFrame(rows, columns=columns)

    def detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Batched inference on float tensors in [0, 1] (the prediction assets call this)."""
        if self.extractor is None:
            raise RuntimeError("model not loaded: call load_checkpoint() or load via MLflow")
        return self.extractor(images)

    def _rows(self, index: int, det: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        boxes = det["boxes"].tolist()
        rows = []
        for i, (box, score, label) in enumerate(
            zip(boxes, det["scores"].tolist(), det["labels"].tolist(), strict=True)
        ):
            row = {"image_index": index, **dict(zip(BOX_COLUMNS, box, strict=True)),
                   "score": score, "label_id": label}
            if self.kind == CLASS_SCORES:
                row["label_ids"] = det["topk_labels"][i].tolist()
                row["scores"] = det["topk_scores"][i].tolist()
                row["distribution"] = det["distribution"][i].tolist()
            rows.append(row)
        return rows
