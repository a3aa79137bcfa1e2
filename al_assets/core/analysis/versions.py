"""Every model version's mAP on the held-out split, from stored detections, one shard at a time.

Why here and not in the asset: the loop over versions, the per-shard reads of only the columns
evaluation needs and the champion's confusion matrix are the evaluation's logic; the
``model_evaluation`` asset only reads the pool's tables, calls :func:`evaluate_versions` and
reports. Memory is one shard's box/score/label columns plus the matching state (see
``evaluation.evaluate_predictions``), whatever the number of shards or versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core import schemas
from al_assets.core.analysis.confused_pairs import category_table
from al_assets.core.analysis.evaluation import (
    evaluate_predictions,
    evaluation_table,
    prediction_leaves,
)
from al_assets.core.analysis.matching import confusion_matrix, counts_table, match_detections
from al_assets.core.storage import TableStore


@dataclass
class VersionsEvaluation:
    """What :func:`evaluate_versions` found."""

    evaluation: pa.Table  # MODEL_EVALUATION rows of every version with held-out predictions
    summary: dict[str, dict] = field(default_factory=dict)  # version -> map/ap50/ap75 (3 dp)
    matrix: pa.Table = field(default_factory=schemas.CONFUSION_MATRIX.empty_table)  # champion's


def evaluate_versions(
    store: TableStore, versions: Iterable[str], champion: str | None, heldout: pa.Array,
    annotations: pa.Table, images: pa.Table, categories: pa.Table, *,
    iou_threshold: float, score_thresh: float,
) -> VersionsEvaluation:
    """COCO mAP per version on the ``heldout`` image ids (the labeled held-out split), and the
    champion's IoU-matched confusion matrix (detections at or above ``score_thresh``).

    A version without a prediction of a held-out image gets no rows."""
    annotations = annotations.filter(pc.is_in(annotations["image_id"], value_set=heldout))
    rows, out = [], VersionsEvaluation(schemas.MODEL_EVALUATION.empty_table())
    for version in versions:
        seen = _Seen(categories)
        confusion = (seen.confusions(annotations, iou_threshold, score_thresh)
                     if version == champion else None)
        shards = _heldout_shards(store, version, heldout, seen, confusion)
        result = evaluate_predictions(shards, annotations, images, categories)
        if seen.rows == 0:
            continue
        rows.append(evaluation_table(result, categories, version))
        out.summary[version] = {**{k: _rounded(result[k]) for k in ("map", "ap50", "ap75")},
                                "num_images": result["num_images"]}
        if confusion is not None:
            out.matrix = counts_table(seen.matrix, categories)
    if rows:
        out.evaluation = pa.concat_tables(rows)
    return out


def off_diagonal(matrix: pa.Table) -> pa.Table:
    """The CONFUSION_MATRIX cells where truth and prediction differ, most frequent first."""
    if matrix.num_rows == 0:
        return matrix
    differs = pc.invert(pc.equal(pc.fill_null(matrix["gt_category_id"], -1),
                                 pc.fill_null(matrix["pred_category_id"], -1)))
    return matrix.filter(differs).sort_by([("count", "descending")])


class _Seen:
    """What the shards of one version held: prediction rows, and the confusion counts."""

    def __init__(self, categories: pa.Table) -> None:
        self.rows = 0
        size = category_table(categories).num_rows + 1  # + background
        self.matrix = np.zeros((size, size), np.int64)
        self._categories = categories

    def confusions(self, annotations: pa.Table, iou_threshold: float, score_thresh: float
                   ) -> Callable[[pa.Table], None]:
        def add(shard: pa.Table) -> None:
            matched = match_detections(shard, annotations, iou_threshold=iou_threshold,
                                       score_thresh=score_thresh)
            self.matrix += confusion_matrix(matched, self._categories)[0]
        return add


def _heldout_shards(store: TableStore, version: str, heldout: pa.Array, seen: _Seen,
                    confusion: Callable[[pa.Table], None] | None) -> Iterator[pa.Table]:
    """The version's predictions of held-out images, one shard at a time, evaluation columns
    only; counted (and matched for the confusion matrix) on the way."""
    for partition in store.partitions("detections", under=version):
        shard = _evaluation_columns(store, "detections", partition)
        shard = shard.filter(pc.is_in(shard["image_id"], value_set=heldout))
        seen.rows += shard.num_rows
        if confusion is not None and shard.num_rows:
            confusion(shard)
        yield shard
        pa.default_memory_pool().release_unused()  # keep the peak at one shard, not the sum


def _evaluation_columns(store: TableStore, table: str, partition: str) -> pa.Table:
    """image_id and each detection's box, score and label_id of one DETECTIONS partition.

    Nested columns are chosen by Parquet leaf path (TableStore.read's column names cannot
    select inside a list): the distributions, top-k lists and embeddings, most of a
    shard's bytes, are never read.
    """
    parquet = store.parquet_file(table, partition)
    return parquet.read(columns=prediction_leaves(parquet.schema))


def _rounded(value: float | None) -> float | None:
    """3 decimals, like the previews: the stored table keeps full precision."""
    return None if value is None else round(value, 3)
