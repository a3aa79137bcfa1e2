"""Class frequency and imbalance, predicted and ground truth: the notebook's last query.

A pair that the model confuses often may simply be a pair of rare classes next to a dominant one
(the notebook: ~949 "person" detections against 3 "remote"). Counting per category, with the
zero-count categories kept, shows that imbalance; comparing predicted with ground-truth counts
separates a skewed dataset from a skewed model.

A class with zero count gets a null imbalance ratio and, when nothing was counted at all, a null
share: a ratio "to nothing" is undefined, and null (unlike ``inf``) survives JSON metadata and
charts. :func:`imbalance_summary` lists such classes as ``absent``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.analysis.confused_pairs import category_index, category_table
from al_assets.core.schemas import CLASS_FREQUENCY, require_columns

_SOURCES = {"predicted": "predicted", "ground_truth": "gt"}


def class_frequency(
    predictions_or_box_scores: pa.Table,
    annotations: pa.Table | None,
    categories: pa.Table,
    *,
    score_thresh: float = 0.0,
) -> pa.Table:
    """Per category: predicted and ground-truth counts, shares and imbalance ratios.

    Takes DETECTIONS (one row per image) or BOX_SCORES (one row per detection): both give the
    same counts. Detections count when ``score >= score_thresh``; annotations count when not
    crowd. ``annotations=None`` leaves the ground-truth columns null. Returns CLASS_FREQUENCY,
    one row per category, sorted by predicted count desc, ground-truth count desc, id.
    """
    lookup = category_table(categories)
    labels = _predicted_labels(predictions_or_box_scores, score_thresh)
    predicted = _counts(labels, lookup, "predicted label_id(s)")
    gt = None if annotations is None else _counts(
        _ground_truth_labels(annotations), lookup, "annotation category_id(s)"
    )
    table = pa.table(
        {
            "category_id": lookup["category_id"],
            "name": lookup["name"],
            **_count_columns("predicted", predicted, lookup.num_rows),
            **_count_columns("gt", gt, lookup.num_rows),
        },
        schema=CLASS_FREQUENCY,
    )
    return table.sort_by([
        ("predicted_count", "descending"), ("gt_count", "descending"),
        ("category_id", "ascending"),
    ])


def imbalance_summary(
    table: pa.Table, *, source: str = "predicted", among: Sequence[str] | None = None
) -> dict:
    """Most vs least frequent class of a CLASS_FREQUENCY table, and how many times more.

    ``source`` is "predicted" or "ground_truth"; ``among`` restricts the comparison to some
    class names (the notebook's person/chair/remote/cell phone). The least frequent class is
    the rarest *present* one (count > 0); classes with count 0 are listed in ``absent``. Ties
    go to the smaller category id. Counts all 0 give None for the classes and the ratio.
    """
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {sorted(_SOURCES)}, got {source!r}")
    column = f"{_SOURCES[source]}_count"
    require_columns(table, ("category_id", "name", column), "class frequency", "CLASS_FREQUENCY")
    if table[column].null_count == table.num_rows and table.num_rows:
        raise ValueError(
            f"the class frequency table has no {column}: compute it with annotations "
            "(class_frequency(..., annotations=...)) to summarize the ground truth"
        )
    rows = _restricted(table.sort_by("category_id"), among)
    names = rows["name"].to_pylist()
    counts = rows[column].fill_null(0).to_numpy()
    present = np.flatnonzero(counts > 0)
    summary = {"source": source, "total": int(counts.sum()),
               "absent": [names[i] for i in np.flatnonzero(counts == 0)]}
    if not present.size:
        return {**summary, "most_frequent": None, "most_count": 0,
                "least_frequent": None, "least_count": 0, "ratio": None}
    most = present[np.argmax(counts[present])]  # argmax/argmin: first = smallest id on ties
    least = present[np.argmin(counts[present])]
    return {
        **summary,
        "most_frequent": names[most], "most_count": int(counts[most]),
        "least_frequent": names[least], "least_count": int(counts[least]),
        "ratio": float(counts[most] / counts[least]),
    }


def _predicted_labels(table: pa.Table, score_thresh: float) -> pa.ChunkedArray | pa.Array:
    """label_id of every detection with ``score >= score_thresh``, from either table layout."""
    if "detections" in table.column_names:
        flat = pc.list_flatten(table["detections"])
        labels, scores = pc.struct_field(flat, "label_id"), pc.struct_field(flat, "score")
    elif {"label_id", "score"} <= set(table.column_names):
        labels, scores = table["label_id"], table["score"]
    else:
        raise ValueError(
            "class_frequency needs a DETECTIONS table (a 'detections' column) or a BOX_SCORES "
            f"table ('label_id' and 'score' columns); got columns {table.column_names}"
        )
    return pc.filter(labels, pc.greater_equal(scores, score_thresh))


def _ground_truth_labels(annotations: pa.Table) -> pa.ChunkedArray:
    require_columns(annotations, ("category_id", "iscrowd"), "annotations", "ANNOTATIONS")
    return pc.filter(annotations["category_id"], pc.invert(annotations["iscrowd"]))


def _counts(labels: pa.Array | pa.ChunkedArray, lookup: pa.Table, what: str) -> np.ndarray:
    """Occurrences of each ``lookup`` category among ``labels``, in ``lookup`` order."""
    grouped = pa.table({"id": pc.drop_null(labels)}).group_by("id").aggregate([("id", "count")])
    index = category_index(lookup, grouped["id"], what).to_numpy()
    counts = np.zeros(lookup.num_rows, dtype=np.int64)
    counts[index] = grouped["id_count"].to_numpy()
    return counts


def _count_columns(prefix: str, counts: np.ndarray | None, n: int) -> dict[str, pa.Array]:
    """count, share of the total, and max / count, as the nullable columns of the schema."""
    if counts is None:
        nulls = pa.nulls(n, pa.float64())
        return {f"{prefix}_count": pa.nulls(n, pa.int64()), f"{prefix}_share": nulls,
                f"{prefix}_imbalance": nulls}
    total, present = counts.sum(), counts > 0
    share = counts / total if total else np.zeros(n)
    ratio = np.divide(counts.max(initial=0), counts, out=np.zeros(n), where=present)
    return {
        f"{prefix}_count": pa.array(counts, pa.int64()),
        f"{prefix}_share": pa.array(share, pa.float64(), mask=np.full(n, total == 0)),
        f"{prefix}_imbalance": pa.array(ratio, pa.float64(), mask=~present),
    }


def _restricted(table: pa.Table, among: Sequence[str] | None) -> pa.Table:
    if among is None:
        return table
    unknown = sorted(set(among) - set(table["name"].to_pylist()))
    if unknown:
        raise ValueError(f"imbalance_summary: class name(s) {unknown} not in the table")
    return table.filter(pc.is_in(table["name"], value_set=pa.array(list(among), pa.string())))
