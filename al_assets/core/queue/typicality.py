"""Typical images first: one per k-means cluster of the detector's embeddings (TypiClust).

Why: uncertainty needs a model whose uncertainty means something. When the class head has seen
only a small labeled split (a new class list on a pretrained backbone, the cold start every team
goes through), its most uncertain images are mostly noise, near-duplicates and odd frames, and
uncertainty sampling falls below random (docs/active-learning.md measured it on the presets).
At such budgets the images worth labeling are the *typical* ones of regions of the pool the labels
do not cover yet (Hacohen, Dekel and Weinshall, "Active Learning on a Budget", ICML 2022): cluster
the pool's embeddings into as many clusters as there are slots and label each cluster's densest
member. Near-duplicate bursts fall into one cluster and give one image, not eight.

Memory is linear in the candidates: k-means keeps an (n, k) distance block (k = the batch size),
and typicality is computed inside each cluster only; no n x n matrix is formed.
"""

from __future__ import annotations

import numpy as np

KMEANS_ITERATIONS = 20  # Lloyd steps after k-means++ seeding (a batch's clusters settle by then)
NEIGHBOURS = 20  # typicality: inverse mean distance to this many nearest cluster members
REFERENCE_ROWS = 2000  # a larger cluster's typicality is measured against a sample this size


def typical_order(embeddings: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Row order of ``embeddings`` (n, d): the most typical row of each of ``k`` k-means
    clusters, largest cluster first, then the remaining rows by typicality."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    k = max(1, min(int(k), n))
    assign = kmeans(x, k, seed=seed)
    typical = np.zeros(n, np.float64)
    heads: list[tuple[int, int]] = []  # (-cluster size, row of its most typical member)
    for cluster in range(k):
        rows = np.flatnonzero(assign == cluster)
        if rows.size == 0:
            continue
        typical[rows] = _typicality(x[rows], np.random.default_rng([seed, cluster]))
        heads.append((-rows.size, int(rows[np.argmax(typical[rows])])))
    first = [row for _, row in sorted(heads)]
    rest = np.setdiff1d(np.arange(n), first)
    rest = rest[np.argsort(-typical[rest], kind="stable")]
    return np.concatenate([np.array(first, np.int64), rest.astype(np.int64)])


def kmeans(x: np.ndarray, k: int, *, seed: int = 0,
           iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Cluster of each row of ``x``: k-means++ seeding, then Lloyd steps (seeded, so repeatable)."""
    rng = np.random.default_rng(seed)
    squared = np.einsum("ij,ij->i", x, x)
    centers = [x[int(rng.integers(x.shape[0]))]]
    nearest = _distances(x, squared, centers[0][None, :])[:, 0]
    for _ in range(1, k):
        total = float(nearest.sum())
        pick = int(rng.choice(x.shape[0], p=nearest / total)) if total > 0 else int(
            rng.integers(x.shape[0]))
        centers.append(x[pick])
        nearest = np.minimum(nearest, _distances(x, squared, x[pick][None, :])[:, 0])
    c = np.stack(centers)
    assign = np.zeros(x.shape[0], np.int64)
    for _ in range(iterations):
        assign = np.argmin(_distances(x, squared, c), axis=1)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=k)[:, None]
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    return np.argmin(_distances(x, squared, c), axis=1)


def _typicality(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1 / mean Euclidean distance to the ``NEIGHBOURS`` nearest other rows of one cluster
    (of a sample of ``REFERENCE_ROWS`` of them in a larger cluster: memory stays linear)."""
    n = x.shape[0]
    if n == 1:
        return np.ones(1)
    reference = np.arange(n) if n <= REFERENCE_ROWS else np.sort(
        rng.choice(n, REFERENCE_ROWS, replace=False))
    squared = np.einsum("ij,ij->i", x, x)
    d = np.sqrt(_distances(x, squared, x[reference]))
    d[reference, np.arange(reference.size)] = np.inf  # a row is not its own neighbour
    m = min(NEIGHBOURS, reference.size - 1)
    near = np.partition(d, m - 1, axis=1)[:, :m]
    return 1.0 / (near.mean(axis=1) + 1e-12)


def _distances(x: np.ndarray, squared: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, m) squared Euclidean distances of the rows of ``x`` to ``points`` (clipped at 0)."""
    return np.maximum(squared[:, None] - 2.0 * (x @ points.T)
                      + np.einsum("ij,ij->i", points, points)[None, :], 0.0)
