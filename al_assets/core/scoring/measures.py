"""Box-level uncertainty measures over class-probability rows (uncertainty sampling).

Every function takes an ``(n_boxes, k)`` array, one class distribution per row, and returns one
value per row. The notebook's queries are least confidence (``1 - p1``), least margin
(``p1 - p2``, ascending) and entropy (``scipy.stats.entropy``, descending); ratio and the
normalized forms come from Munro, *Human-in-the-Loop Machine Learning*, ch. 3.

Input contract, shared by all functions (implemented once, in :func:`box_measures`):

* **Invalid rows raise.** A row holding NaN, +-inf or a negative value, or summing to 0, is not a
  distribution: :class:`InvalidProbabilitiesError` (a ``ValueError``) names the first such row.
  We raise rather than mask because such a row means a broken extractor, and a silent mask
  would rank garbage; the caller (``box_scores``) maps the row back to its image.
* **Renormalization.** Any finite positive row sum is accepted without a tolerance: a full
  distribution (``k == num_classes``) is divided by its sum, so float32 drift or unnormalized
  scores never change the ranking scale.
* **Top-k rows.** When ``k < num_classes`` a row holds the k largest probabilities of a larger
  distribution. ``p1`` and ``p2`` are then exact and used as they are (divided by the row sum
  only if it exceeds 1); a missing second class (``k == 1``) gives ``p2 = 0``. Entropy is computed
  on the top-k renormalized to 1, which is a *lower bound* of the true entropy: the
  renormalized top-k majorizes the full distribution and entropy is Schur-concave.
* **One class** (``num_classes == 1``): p1 = 1, so least confidence, ratio and entropy are 0 and
  margin is 1; the normalized forms (0/0 by formula) are defined as 0: no alternative class
  means no doubt.
* **Ties** p1 == p2 give margin 0 and ratio 1. **Zero rows** give empty results.
* Inputs are never written to; float32 stays float32 (the detector's precision), float64
  stays float64, anything else is computed as float64.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# A block of rows is processed at once so its temporaries stay in cache (~512 KiB, about one L2).
_BLOCK_BYTES = 512 * 1024
# Below this many rows threads cost more than they save.
_MIN_ROWS_PER_WORKER = 16_384


class InvalidProbabilitiesError(ValueError):
    """A probability row is not a distribution; ``row`` is its index in the input."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"class-probability row {row} {reason}")
        self.row = row
        self.reason = reason


@dataclass(frozen=True)
class BoxMeasures:
    """All measures of a set of rows, computed in one pass (see module docstring)."""

    p1: np.ndarray  # top probability, renormalized
    p2: np.ndarray  # second probability (0 when there is none)
    least_confidence: np.ndarray
    least_confidence_norm: np.ndarray
    margin: np.ndarray
    margin_uncertainty: np.ndarray
    ratio: np.ndarray
    entropy: np.ndarray
    entropy_norm: np.ndarray


def box_measures(
    probs: npt.ArrayLike,
    *,
    num_classes: int | None = None,
    row_lengths: npt.ArrayLike | None = None,
    workers: int | None = None,
) -> BoxMeasures:
    """Compute every measure in one fused, blocked pass (the fast path of ``box_scores``).

    ``num_classes`` defaults to ``k`` (rows are full distributions). ``row_lengths`` is for
    zero-padded ragged top-k rows: a row is a full distribution iff its length equals
    ``num_classes`` (zero padding changes no measure). ``workers`` threads share the blocks
    (numpy releases the GIL); default: the CPUs this process may use.
    """
    x = _as_prob_matrix(probs)
    n = _resolve_num_classes(x, num_classes)
    full = _full_rows(x, n, row_lengths)
    s, p1, p2, h = _row_statistics(x, workers)
    _check_rows(x, s, h)
    d = np.where(full, s, np.maximum(s, 1.0))
    return _measures_from_statistics(s, p1 / d, p2 / d, h, n, x.dtype)


def least_confidence(probs: npt.ArrayLike, *, num_classes: int | None = None) -> np.ndarray:
    """``1 - p1``, in [0, 1 - 1/n]; high = uncertain (the notebook's least confidence)."""
    return box_measures(probs, num_classes=num_classes).least_confidence


def least_confidence_normalized(
    probs: npt.ArrayLike, *, num_classes: int | None = None
) -> np.ndarray:
    """``n/(n-1) * (1 - p1)``, in [0, 1] (1 = uniform); high = uncertain; 0 when n == 1."""
    return box_measures(probs, num_classes=num_classes).least_confidence_norm


def margin(probs: npt.ArrayLike, *, num_classes: int | None = None) -> np.ndarray:
    """Margin of confidence ``p1 - p2``, in [0, 1]; *small* = uncertain (notebook's order)."""
    return box_measures(probs, num_classes=num_classes).margin


def margin_uncertainty(probs: npt.ArrayLike, *, num_classes: int | None = None) -> np.ndarray:
    """``1 - (p1 - p2)``, in [0, 1]; high = uncertain (margin turned into an uncertainty)."""
    return box_measures(probs, num_classes=num_classes).margin_uncertainty


def ratio(probs: npt.ArrayLike, *, num_classes: int | None = None) -> np.ndarray:
    """Ratio of confidence ``p2 / p1``, in [0, 1]; high = uncertain (1 on a tie)."""
    return box_measures(probs, num_classes=num_classes).ratio


def entropy(probs: npt.ArrayLike, *, num_classes: int | None = None) -> np.ndarray:
    """``-sum p log p`` in nats (0·log 0 = 0, like ``scipy.stats.entropy``), in [0, log n].

    High = uncertain. Top-k rows: the entropy of the renormalized top-k, a lower bound.
    """
    return box_measures(probs, num_classes=num_classes).entropy


def entropy_normalized(probs: npt.ArrayLike, *, num_classes: int | None = None) -> np.ndarray:
    """Entropy divided by ``log n``, in [0, 1] (1 = uniform); high = uncertain; 0 when n == 1."""
    return box_measures(probs, num_classes=num_classes).entropy_norm


def _as_prob_matrix(probs: npt.ArrayLike) -> np.ndarray:
    """A C-contiguous float32/float64 2-D view (a copy only when needed; never written)."""
    x = np.asarray(probs)
    if x.ndim != 2:
        raise ValueError(
            f"class probabilities must be a 2-D (boxes, classes) array, got shape {x.shape}"
        )
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return np.ascontiguousarray(x)


def _resolve_num_classes(x: np.ndarray, num_classes: int | None) -> int:
    if num_classes is None:
        return x.shape[1]
    if num_classes < x.shape[1] or num_classes < 1:
        raise ValueError(
            f"num_classes={num_classes} is invalid for rows of {x.shape[1]} probabilities: "
            "it must be >= 1 and >= the row length"
        )
    return int(num_classes)


def _full_rows(x: np.ndarray, n: int, row_lengths: npt.ArrayLike | None) -> np.ndarray:
    """Per row: does it hold the whole distribution (renormalize) or only its top-k?"""
    if row_lengths is None:
        return np.full(x.shape[0], x.shape[1] == n)
    lengths = np.asarray(row_lengths)
    if lengths.shape != (x.shape[0],) or np.any(lengths > x.shape[1]) or np.any(lengths < 0):
        raise ValueError(f"row_lengths must be {x.shape[0]} lengths in [0, {x.shape[1]}]")
    return lengths == n


def _row_statistics(
    x: np.ndarray, workers: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row sum, top-1, top-2 and ``sum p log p`` of every row, in cache-sized blocks."""
    rows = x.shape[0]
    stats = np.zeros((4, rows), dtype=x.dtype)
    if rows == 0 or x.shape[1] == 0:
        return stats[0], stats[1], stats[2], stats[3]
    n_workers = _worker_count(rows, workers)
    bounds = np.linspace(0, rows, n_workers + 1).astype(np.int64)
    spans = list(zip(bounds[:-1], bounds[1:]))
    if n_workers == 1:
        _span_statistics(x, stats, 0, rows)
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            list(pool.map(lambda span: _span_statistics(x, stats, *span), spans))
    return stats[0], stats[1], stats[2], stats[3]


def _worker_count(rows: int, workers: int | None) -> int:
    if workers is None:
        available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        workers = len(available) if available else (os.cpu_count() or 1)
    return int(max(1, min(workers, rows // _MIN_ROWS_PER_WORKER)))


def _span_statistics(x: np.ndarray, stats: np.ndarray, start: int, stop: int) -> None:
    """Fill ``stats[:, start:stop]`` block by block, reusing one scratch buffer."""
    block = max(1, _BLOCK_BYTES // (x.shape[1] * x.itemsize))
    scratch = np.empty((block, x.shape[1]), dtype=x.dtype)
    for lo in range(start, stop, block):
        hi = min(lo + block, stop)
        _block_statistics(x[lo:hi], scratch[: hi - lo], stats[:, lo:hi])


def _block_statistics(b: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> None:
    """One block, small enough that its ~6 passes (log included) read from cache, not RAM."""
    rows = np.arange(b.shape[0])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # bad rows raise later
        out[0] = b.sum(axis=1)
        top = b.argmax(axis=1)
        out[1] = b[rows, top]
        if b.shape[1] > 1:
            np.copyto(scratch, b)
            scratch[rows, top] = -np.inf
            out[2] = scratch.max(axis=1)
        np.log(b, out=scratch)  # log 0 = -inf and log(<0) = nan both make the product nan
        out[3] = np.einsum("ij,ij->i", b, scratch)
        retry = np.flatnonzero(np.isnan(out[3]))
        if retry.size:
            out[3, retry] = _xlogx_sum_slow(b[retry])


def _xlogx_sum_slow(b: np.ndarray) -> np.ndarray:
    """``sum p log p`` with 0·log 0 = 0 for the rows with zeros (or invalid values: nan stays)."""
    safe = np.maximum(b, np.finfo(b.dtype).tiny)
    terms = b * np.log(safe)
    bad = np.isnan(b).any(axis=1) | (b < 0).any(axis=1)
    return np.where(bad, np.nan, terms.sum(axis=1))


def _check_rows(x: np.ndarray, s: np.ndarray, h: np.ndarray) -> None:
    """Raise on the first row that is not a distribution (see module docstring)."""
    ok = np.isfinite(s) & (s > 0) & np.isfinite(h)
    if ok.all():
        return
    row = int(np.flatnonzero(~ok)[0])
    values = x[row]
    if x.shape[1] == 0:
        reason = "is empty: a detection needs at least one class probability"
    elif not np.isfinite(values).all():
        reason = "contains NaN or inf: the class-score extractor produced non-finite values"
    elif (values < 0).any():
        reason = f"contains a negative probability ({float(values.min())})"
    elif not values.any():
        reason = "sums to 0: all class probabilities are zero"
    else:
        reason = f"has values too large to sum in {x.dtype}; rescale the row"
    raise InvalidProbabilitiesError(row, reason)


def _measures_from_statistics(
    s: np.ndarray, p1: np.ndarray, p2: np.ndarray, h: np.ndarray, n: int, dtype: np.dtype
) -> BoxMeasures:
    """Per-row formulas in the input precision, clipped against rounding."""
    log_n = dtype.type(np.log(n)) if n > 1 else dtype.type(0.0)
    p1 = np.minimum(p1, 1.0)
    p2 = np.minimum(p2, p1)
    lc = 1.0 - p1
    mar = p1 - p2
    ent = np.clip(np.log(s) - h / s, 0.0, log_n)  # entropy of the row divided by its sum
    zeros = np.zeros_like(lc)
    return BoxMeasures(
        p1=p1,
        p2=p2,
        least_confidence=lc,
        least_confidence_norm=np.clip(lc * (n / (n - 1)), 0.0, 1.0) if n > 1 else zeros,
        margin=mar,
        margin_uncertainty=1.0 - mar,
        ratio=p2 / p1,  # p1 > 0: every row has a positive sum
        entropy=ent,
        entropy_norm=np.clip(ent / log_n, 0.0, 1.0) if n > 1 else zeros,
    )
