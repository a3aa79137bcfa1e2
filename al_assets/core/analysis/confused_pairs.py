"""Which class pairs the detector confuses: the notebook's "confused pairs" query.

Detections are grouped by their top two labels (``label_ids[0]``, ``label_ids[1]``): a pair with
a high count *and* a low average margin is one the model cannot tell apart, a hint to label more
of both classes or to check the class balance (:mod:`al_assets.core.analysis.frequency`).
Pyarrow's hash aggregation does the grouping; only the exact median is computed on sorted numpy
arrays, because Arrow offers approximate (t-digest) quantiles per group only.

The category helpers here are shared by the other analysis modules.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_assets.core.schemas import CONFUSED_PAIRS, require_columns

_KEYS = ["first_label_id", "second_label_id"]


def confused_pairs(
    box_scores: pa.Table,
    categories: pa.Table,
    *,
    max_margin: float | None = None,
    lowest_n: int | None = None,
    limit: int | None = None,
    unordered: bool = False,
) -> pa.Table:
    """Group the detections of ``box_scores`` (BOX_SCORES) by their top-two labels.

    ``max_margin`` keeps detections with ``margin <= max_margin``; ``lowest_n`` keeps the n
    least-margin ones (the notebook took 10,000; ties by image_id, det_index). Detections with a
    single label (null ``second_label_id``) are left out. ``unordered`` merges (a, b) with
    (b, a). Returns a CONFUSED_PAIRS table sorted by count desc, avg_margin asc, then ids;
    ``limit`` keeps its first rows.
    """
    require_columns(box_scores, ("image_id", *_KEYS, "margin"), "box_scores", "BOX_SCORES")
    _check_options(max_margin, lowest_n, limit)
    lookup = category_table(categories)
    kept = _low_margin_detections(box_scores, max_margin, lowest_n)
    if kept.num_rows == 0:
        return CONFUSED_PAIRS.empty_table()
    keyed = _keyed(kept, unordered)
    stats = keyed.group_by(_KEYS).aggregate(
        [("margin", "count"), ("margin", "mean"), ("margin", "min"),
         ("image_id", "count_distinct")]
    )
    stats = stats.join(_median_margins(keyed, lookup), keys=_KEYS)
    stats = stats.sort_by([
        ("margin_count", "descending"), ("margin_mean", "ascending"),
        ("first_label_id", "ascending"), ("second_label_id", "ascending"),
    ])
    if limit is not None:
        stats = stats.slice(0, limit)
    return _as_pairs_table(stats, lookup, unordered)


def _check_options(max_margin: float | None, lowest_n: int | None, limit: int | None) -> None:
    if max_margin is not None and not np.isfinite(max_margin):
        raise ValueError(f"max_margin must be a finite number, got {max_margin}")
    for name, value in (("lowest_n", lowest_n), ("limit", limit)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0 or None (no limit), got {value}")


def _low_margin_detections(
    box_scores: pa.Table, max_margin: float | None, lowest_n: int | None
) -> pa.Table:
    """Two-label detections, filtered by margin (the two filters commute)."""
    wanted = ("image_id", "det_index", *_KEYS, "margin")
    columns = [c for c in wanted if c in box_scores.column_names]
    table = box_scores.select(columns).filter(pc.is_valid(box_scores["second_label_id"]))
    if max_margin is not None:
        table = table.filter(pc.less_equal(table["margin"], max_margin))
    if lowest_n is not None and lowest_n < table.num_rows:
        ties = [c for c in ("image_id", "det_index") if c in table.column_names]
        keys = [("margin", "ascending")] + [(c, "ascending") for c in ties]
        table = table.take(pc.select_k_unstable(table, lowest_n, sort_keys=keys))
    return table


def _keyed(table: pa.Table, unordered: bool) -> pa.Table:
    """The grouping keys (smaller id first when unordered), image_id and margin as float64."""
    first, second = table["first_label_id"], table["second_label_id"]
    if unordered:
        first, second = pc.min_element_wise(first, second), pc.max_element_wise(first, second)
    return pa.table({
        "first_label_id": pc.cast(first, pa.int32()),
        "second_label_id": pc.cast(second, pa.int32()),
        "image_id": table["image_id"],
        "margin": pc.cast(table["margin"], pa.float64()),
    })


def _median_margins(keyed: pa.Table, lookup: pa.Table) -> pa.Table:
    """Exact median margin per pair: sort by margin, then stably by pair, take the middles.

    Pairs are numbered densely from the categories' rows so that the stable sort is numpy's
    radix sort when the pair count fits 16 bits (3-4x faster than a 3-key lexsort).
    """
    k = lookup.num_rows
    first = category_index(lookup, keyed["first_label_id"], "label_ids[0] (first_label_id)")
    second = category_index(lookup, keyed["second_label_id"], "label_ids[1] (second_label_id)")
    pair = first.to_numpy().astype(np.int64) * k + second.to_numpy()
    pair = pair.astype(np.int16 if k * k <= np.iinfo(np.int16).max else np.int64)
    margin = keyed["margin"].to_numpy()
    order = np.argsort(margin)
    order = order[np.argsort(pair[order], kind="stable")]
    pair, margin = pair[order], margin[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    counts = np.diff(np.r_[starts, len(margin)])
    median = (margin[starts + (counts - 1) // 2] + margin[starts + counts // 2]) / 2
    ids = lookup["category_id"].to_numpy()
    return pa.table({
        "first_label_id": pa.array(ids[pair[starts] // k], pa.int32()),
        "second_label_id": pa.array(ids[pair[starts] % k], pa.int32()),
        "median_margin": pa.array(median, pa.float64()),
    })


def _as_pairs_table(stats: pa.Table, lookup: pa.Table, unordered: bool) -> pa.Table:
    first, second = stats["first_label_id"], stats["second_label_id"]
    return pa.table(
        {
            "first_label_id": first,
            "first_name": category_names(lookup, first, "label_ids[0] (first_label_id)"),
            "second_label_id": second,
            "second_name": category_names(lookup, second, "label_ids[1] (second_label_id)"),
            "unordered": pa.array(np.full(stats.num_rows, unordered)),
            "count": stats["margin_count"],
            "n_images": stats["image_id_count_distinct"],
            "avg_margin": stats["margin_mean"],
            "min_margin": stats["margin_min"],
            "median_margin": stats["median_margin"],
        },
        schema=CONFUSED_PAIRS,
    )


# -- helpers shared by the analysis modules -------------------------------------------------


def category_table(categories: pa.Table) -> pa.Table:
    """One ``(category_id, name)`` row per id, sorted by id.

    The CATEGORIES table may repeat an id once per ingest batch; one id with two names would
    silently mix two classes, so it is an error.
    """
    require_columns(categories, ("category_id", "name"), "categories", "CATEGORIES")
    if categories["category_id"].null_count:
        raise ValueError("categories table has a null category_id; every category needs an id")
    grouped = categories.select(["category_id", "name"]).group_by("category_id").aggregate(
        [("name", "min"), ("name", "count_distinct")]
    )
    conflicts = grouped.filter(pc.greater(grouped["name_count_distinct"], 1))
    if conflicts.num_rows:
        raise ValueError(
            f"categories table gives category_id(s) {conflicts['category_id'].to_pylist()} "
            "several names; one id must mean one class (re-ingest with consistent categories)"
        )
    return pa.table({
        "category_id": pc.cast(grouped["category_id"], pa.int32()),
        "name": grouped["name_min"],
    }).sort_by("category_id")


def category_names(
    lookup: pa.Table, ids: pa.Array | pa.ChunkedArray, what: str
) -> pa.ChunkedArray | pa.Array:
    """The names of ``ids`` (a null id stays null); an id unknown to ``lookup`` is an error."""
    index = category_index(lookup, ids, what)
    return pc.take(lookup["name"], index)


def category_index(
    lookup: pa.Table, ids: pa.Array | pa.ChunkedArray, what: str
) -> pa.ChunkedArray | pa.Array:
    """Row of each id in ``lookup`` (from :func:`category_table`); null for a null id."""
    value_set = lookup["category_id"].combine_chunks().cast(ids.type)
    index = pc.index_in(ids, value_set=value_set)
    missing = pc.and_(pc.is_null(index), pc.is_valid(ids))
    if pc.any(missing).as_py():
        unknown = sorted(set(pc.filter(ids, missing).to_pylist()))
        raise ValueError(
            f"{what} {unknown[:10]} not in the categories table; predictions and annotations "
            "must use the dataset's category ids (check the model's category mapping)"
        )
    return index
