"""Diversity among the uncertain candidates: greedy k-center (farthest-first) over embeddings.

Why: the most uncertain images of a pool tend to be alike (one confusing scene filmed for a
minute, one hard class, one new camera). Labeling ten copies of one hard scene teaches the model
about as much as labeling one. Farthest-first traversal (the greedy 2-approximation of k-center,
the core-set selection of Sener & Savarese 2018) orders candidates so that each next one is the
farthest from everything picked before; started at the most uncertain candidate and run over the
uncertainty ranking's head, it gives "uncertain, then diverse".

Memory is linear in the candidates: one vector of distances to the nearest picked row is kept
and updated with one matrix-vector product per pick; no n x n distance matrix is ever formed
(for a COCO-scale core-set that matrix alone would be about 40 GB).
"""

from __future__ import annotations

import numpy as np


def farthest_first(embeddings: np.ndarray, *, first: int = 0,
                   centers: np.ndarray | None = None) -> np.ndarray:
    """Row order of ``embeddings`` (n, d): ``first``, then each time the row farthest from all
    earlier ones (and from ``centers``, rows already labeled, when given). Euclidean distance;
    ties go to the lower row, so the order is deterministic."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    if not 0 <= first < n:
        raise ValueError(f"first={first} is not a row of {n} embeddings")
    squared = np.einsum("ij,ij->i", x, x)
    nearest = np.full(n, np.inf, np.float32)
    if centers is not None and len(centers):
        for center in np.asarray(centers, dtype=np.float32):
            nearest = np.minimum(nearest, squared_distances(x, center[None, :], squared)[:, 0])
    order = np.empty(n, np.int64)
    picked = np.zeros(n, bool)
    current = first
    for k in range(n):
        order[k], picked[current] = current, True
        nearest = np.minimum(nearest, squared_distances(x, x[current][None, :], squared)[:, 0])
        if k + 1 < n:
            current = int(np.argmax(np.where(picked, -np.inf, nearest)))
    return order


def squared_distances(x: np.ndarray, points: np.ndarray,
                      squared: np.ndarray | None = None) -> np.ndarray:
    """(n, m) squared Euclidean distances of the rows of ``x`` to the rows of ``points``,
    clipped at 0 (``squared``: the rows' squared norms, when the caller keeps them)."""
    if squared is None:
        squared = np.einsum("ij,ij->i", x, x)
    return np.maximum(squared[:, None] - 2.0 * (x @ points.T)
                      + np.einsum("ij,ij->i", points, points)[None, :], 0.0)
