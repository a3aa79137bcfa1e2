"""DETECTIONS (one row per image) -> BOX_SCORES (one row per detection, with its measures).

The nested ``detections`` lists are flattened with Arrow kernels and the class probabilities
viewed as 2-D numpy arrays without copying (a zero-padded copy only when list lengths differ),
so that millions of detections are scored by a few vectorized passes instead of the notebook's
per-row UDF. Which probabilities are used, per detection:

* the full ``distribution`` when it is present (exact measures);
* otherwise the top-k ``scores``: p1/p2 are exact, entropy is a lower bound (see
  :mod:`al_assets.core.scoring.measures`), and ``num_classes`` must be known for the
  normalized measures.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.schemas import BOX_SCORES, DETECTIONS
from al_assets.core.scoring.measures import BoxMeasures, InvalidProbabilitiesError, box_measures

_MEASURE_COLUMNS = (
    "p1", "p2", "least_confidence", "least_confidence_norm", "margin",
    "margin_uncertainty", "ratio", "entropy", "entropy_norm",
)
_PASSED_THROUGH = ("image_id", "uri", "model_name", "model_version", "shard")
Where = Callable[[int], str]  # detection row -> "image_id .. (uri ..), detection .." for errors


def box_scores(
    predictions: pa.Table, *, num_classes: int | None = None, workers: int | None = None
) -> pa.Table:
    """Score every detection of ``predictions`` (DETECTIONS schema) into a BOX_SCORES table.

    ``num_classes`` is the number of foreground classes of the model; by default it is the
    length of the ``distribution`` lists, and it is required when only top-k ``scores`` exist.
    Images without detections give no rows (``aggregate_images`` brings them back). Bad
    probabilities raise a ``ValueError`` naming the image and detection.
    """
    _check_schema(predictions.schema)
    n = num_classes if num_classes is not None else _infer_num_classes(predictions)
    batches = [_score_batch(b, n, workers) for b in predictions.to_batches() if b.num_rows]
    return pa.Table.from_batches(batches, schema=BOX_SCORES)


def _check_schema(schema: pa.Schema) -> None:
    for name in (*_PASSED_THROUGH, "detections"):
        expected = DETECTIONS.field(name).type
        if name not in schema.names:
            raise ValueError(
                f"predictions table has no column {name!r} (DETECTIONS schema expected)"
            )
        if not schema.field(name).type.equals(expected):
            raise ValueError(
                f"predictions column {name!r} is {schema.field(name).type}, expected {expected} "
                "(al_assets.core.schemas.DETECTIONS)"
            )


def _infer_num_classes(predictions: pa.Table) -> int | None:
    """The length of the first ``distribution`` present, or None when there is none."""
    for chunk in predictions.column("detections").chunks:
        dist = pc.struct_field(pc.list_flatten(chunk), "distribution")
        lengths = pc.drop_null(pc.list_value_length(dist))
        if len(lengths):
            return int(lengths[0].as_py())
    return None


def _score_batch(batch: pa.RecordBatch, n: int | None, workers: int | None) -> pa.RecordBatch:
    detections = batch.column("detections")
    if detections.null_count:
        first = pc.filter(batch.column("image_id"), detections.is_null())[0]
        raise ValueError(
            f"image_id {first} has a null detections list; DETECTIONS needs [] instead"
        )
    parents = pc.list_parent_indices(detections).to_numpy()
    offsets = detections.offsets.to_numpy()
    det_index = np.arange(len(parents)) - (offsets[:-1] - offsets[0])[parents]
    flat = pc.list_flatten(detections)

    def where(row: int) -> str:
        image = batch.slice(int(parents[row]), 1).to_pylist()[0]
        return f"image_id {image['image_id']} (uri {image['uri']}), detection {det_index[row]}"

    _check_top_k_lists(flat, where)
    measures, from_dist = _detection_measures(flat, n, workers, where)
    first, second = _top_two_labels(pc.struct_field(flat, "label_ids"))
    take = pa.array(parents)
    columns = [pc.take(batch.column(name), take) for name in _PASSED_THROUGH]
    columns.append(pa.array(det_index.astype(np.int32)))
    columns += [pc.struct_field(flat, name) for name in ("box", "label_id", "score")]
    columns.append(pa.array(from_dist))
    values = [pa.array(measures[name].astype(np.float32, copy=False)) for name in _MEASURE_COLUMNS]
    columns += [*values[:2], first, second, *values[2:]]
    return pa.RecordBatch.from_arrays(columns, schema=BOX_SCORES)


def _check_top_k_lists(flat: pa.StructArray, where: Where) -> None:
    """``scores`` and ``label_ids``: non-null, non-empty, one label per score."""
    scores, labels = (pc.struct_field(flat, name) for name in ("scores", "label_ids"))
    k = np.where(scores.is_null().to_numpy(zero_copy_only=False), 0, _list_lengths(scores))
    k_labels = np.where(labels.is_null().to_numpy(zero_copy_only=False), -1, _list_lengths(labels))
    bad = (k < 1) | (k != k_labels)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where(row)}: scores has {k[row]} entries and label_ids {k_labels[row]}; both must "
            "be non-empty lists of the same length (DETECTIONS schema)"
        )


def _detection_measures(
    flat: pa.StructArray, n: int | None, workers: int | None, where: Where
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Measures of every detection: from the distribution where present, else the top-k."""
    dist = pc.struct_field(flat, "distribution")
    from_dist = dist.is_valid().to_numpy(zero_copy_only=False)
    out = {name: np.zeros(len(flat), dtype=np.float32) for name in _MEASURE_COLUMNS}
    dist_rows = np.flatnonzero(from_dist)
    topk_rows = np.flatnonzero(~from_dist)
    if dist_rows.size:
        matrix = _matrix_of_valid_lists(dist, dist_rows, n, "distribution", where)
        _scatter(out, dist_rows, _measure(matrix, n, None, workers, dist_rows, where))
    if topk_rows.size:
        scores = pc.struct_field(flat, "scores")
        _scatter(out, topk_rows, _top_k_measures(scores, topk_rows, n, workers, where))
    return out, from_dist


def _top_k_measures(
    scores: pa.ListArray, rows: np.ndarray, n: int | None, workers: int | None, where: Where
) -> BoxMeasures:
    """Measures from the top-k ``scores`` of the detections at ``rows`` (no distribution)."""
    if n is None:
        raise ValueError(
            f"{where(int(rows[0]))} has only top-k scores and no distribution: pass "
            "num_classes (the model's number of foreground classes) to box_scores"
        )
    lengths = _list_lengths(scores)[rows]
    _check_lengths(lengths, rows, n, "scores", where)
    subset = scores if rows.size == len(scores) else scores.take(pa.array(rows))
    return _measure(_rows_as_matrix(subset), n, lengths, workers, rows, where)


def _measure(
    matrix: np.ndarray, n: int | None, lengths: np.ndarray | None, workers: int | None,
    rows: np.ndarray, where: Where,
) -> BoxMeasures:
    """``box_measures`` with its row errors turned into image/detection references."""
    try:
        return box_measures(matrix, num_classes=n, row_lengths=lengths, workers=workers)
    except InvalidProbabilitiesError as err:
        raise ValueError(
            f"{where(int(rows[err.row]))}: class probabilities {err.reason}; fix the class-score "
            "extractor and re-run prediction for this shard"
        ) from err


def _scatter(out: dict[str, np.ndarray], rows: np.ndarray, measures: BoxMeasures) -> None:
    for name in _MEASURE_COLUMNS:
        if rows.size == len(out[name]):
            out[name] = getattr(measures, name)
        else:
            out[name][rows] = getattr(measures, name)


def _matrix_of_valid_lists(
    lists: pa.ListArray, rows: np.ndarray, n: int | None, what: str, where: Where
) -> np.ndarray:
    """The non-null lists as a 2-D array (all must have ``n`` entries)."""
    lengths = _list_lengths(lists)[rows]
    _check_lengths(lengths, rows, n, what, where, exact=True)
    values = _float_values(lists.flatten())  # flatten skips null lists
    return values.reshape(len(rows), int(lengths[0]))


def _check_lengths(
    lengths: np.ndarray,
    rows: np.ndarray,
    n: int | None,
    what: str,
    where: Where,
    exact: bool = False,
) -> None:
    """Entries per list: exactly ``n`` for distributions, 1..n for top-k scores."""
    expected = n if n is not None else int(lengths[0])
    bad = (lengths != expected) if exact else ((lengths < 1) | (lengths > expected))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rule = f"exactly {expected}" if exact else f"1 to {expected}"
        raise ValueError(
            f"{where(int(rows[i]))}: {what} has {lengths[i]} entries, expected {rule} "
            "(num_classes); all detections of a model must share one class list"
        )


def _list_lengths(lists: pa.ListArray) -> np.ndarray:
    """Entries per list from the offsets (0 for null lists that hold none)."""
    return np.diff(lists.offsets.to_numpy())


def _rows_as_matrix(lists: pa.ListArray) -> np.ndarray:
    """Non-null lists as 2-D: a zero-copy view when all lengths agree, else zero-padded."""
    lengths = _list_lengths(lists)
    values = _float_values(lists.flatten())
    width = int(lengths.max(initial=0))
    if len(lengths) and (lengths == width).all():
        return values.reshape(len(lengths), width)
    padded = np.zeros((len(lengths), width), dtype=values.dtype)
    row = np.repeat(np.arange(len(lengths)), lengths)
    col = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded[row, col] = values
    return padded


def _float_values(values: pa.Array) -> np.ndarray:
    """Float values as numpy; a null value inside a list becomes NaN (and is then rejected)."""
    return values.to_numpy(zero_copy_only=False)


def _top_two_labels(label_ids: pa.ListArray) -> tuple[pa.Array, pa.Array]:
    """``label_ids[0]`` and ``label_ids[1]`` (null when the list holds one label)."""
    lengths = _list_lengths(label_ids)
    values = label_ids.flatten().to_numpy(zero_copy_only=False)
    starts = np.cumsum(lengths) - lengths
    second = values[np.minimum(starts + 1, len(values) - 1)] if len(values) else values
    return pa.array(values[starts]), pa.array(second, mask=lengths < 2)
