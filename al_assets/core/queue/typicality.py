"""Typical images of uncovered regions first: k-means on the detector's embeddings (TypiClust).

Why: uncertainty needs a model whose uncertainty means something. When the class head has seen
only a small labeled split (a new class list on a pretrained backbone, the cold start every team
goes through), its most uncertain images are mostly noise, near-duplicates and odd frames, and
uncertainty sampling falls below random (docs/active-learning.md measured it on the presets).
At such budgets the images worth labeling are the *typical* ones of regions of the pool the labels
do not cover yet (Hacohen, Dekel and Weinshall, "Active Learning on a Budget", ICML 2022): cluster
the candidates and the labeled images together into (batch + labeled) clusters, at most
``MAX_CLUSTERS``; take the clusters without labeled members, largest first, and label each one's
densest candidate. Near-duplicate bursts fall into one cluster and give one image, not eight.

Memory: k-means keeps an (n, clusters) distance block and typicality an (n, ``REFERENCE_ROWS``)
one, computed ``CHUNK_ROWS`` rows at a time; n is bounded by the caller (the selection's candidate
window, ``TYPICAL_FACTOR`` x the batch). No n x n matrix is formed. Time: n x clusters x d per
Lloyd step: measured on the 2-core VM (1 thread, beside 2 simulations) 2.4 s for 1,000
candidates, 330 labeled and a batch of 50; 26 s for 10,000 candidates, 2,000 labeled, a batch of
500 (500 clusters).
"""

from __future__ import annotations

import numpy as np

from al_assets.core.queue.diversity import squared_distances

KMEANS_ITERATIONS = 20  # Lloyd steps after k-means++ seeding (a batch's clusters settle by then)
MAX_CLUSTERS = 500  # TypiClust's cap: more labeled images than this share clusters
NEIGHBOURS = 20  # typicality: inverse mean distance to this many nearest candidates
REFERENCE_ROWS = 2000  # typicality is measured against a uniform sample of this many candidates
CHUNK_ROWS = 4096  # rows per distance block when measuring typicality


def typical_order(embeddings: np.ndarray, k: int, *, seed: int = 0,
                  centers: np.ndarray | None = None) -> np.ndarray:
    """Row order of ``embeddings`` (n, d): round-robin over k-means clusters, one candidate per
    cluster per turn, most typical first; clusters without ``centers`` (labeled images) before
    covered ones, larger before smaller. The first rows are thus the densest candidates of the
    largest regions the labels do not cover."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    labeled = np.zeros((0, x.shape[1]), np.float32) if centers is None or np.size(
        centers) == 0 else np.asarray(centers, dtype=np.float32).reshape(-1, x.shape[1])
    both = np.concatenate([x, labeled])
    clusters = max(1, min(int(k) + labeled.shape[0], MAX_CLUSTERS, both.shape[0]))
    assign = kmeans(both, clusters, seed=seed)
    covered = np.bincount(assign[n:], minlength=clusters)
    assign = assign[:n]
    size = np.bincount(assign, minlength=clusters)
    typical = typicality(x, seed=seed)
    turns = np.empty(n, np.int64)  # a candidate's place inside its cluster, most typical first
    for cluster in np.flatnonzero(size):
        rows = np.flatnonzero(assign == cluster)
        turns[rows[np.argsort(-typical[rows], kind="stable")]] = np.arange(rows.size)
    priority = np.lexsort((np.arange(clusters), -size, covered))  # last key sorts first
    place = np.empty(clusters, np.int64)
    place[priority] = np.arange(clusters)
    return np.lexsort((place[assign], turns)).astype(np.int64)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0,
           iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Cluster of each row of ``x``: k-means++ seeding, then Lloyd steps (seeded, so repeatable).
    Identical rows or k above the distinct rows leave some clusters empty; none is an error."""
    rng = np.random.default_rng(seed)
    squared = np.einsum("ij,ij->i", x, x)
    centers = [x[int(rng.integers(x.shape[0]))]]
    nearest = squared_distances(x, centers[0][None, :], squared)[:, 0]
    for _ in range(1, k):
        total = float(nearest.sum())
        pick = int(rng.choice(x.shape[0], p=nearest / total)) if total > 0 else int(
            rng.integers(x.shape[0]))
        centers.append(x[pick])
        nearest = np.minimum(nearest, squared_distances(x, x[pick][None, :], squared)[:, 0])
    c = np.stack(centers)
    for _ in range(iterations):
        assign = np.argmin(squared_distances(x, c, squared), axis=1)
        counts = np.bincount(assign, minlength=k)
        present = np.flatnonzero(counts)  # an empty cluster keeps its centre
        starts = (np.cumsum(counts) - counts)[present]
        sums = np.add.reduceat(x[np.argsort(assign, kind="stable")], starts, axis=0)
        c[present] = sums / counts[present, None]
    return np.argmin(squared_distances(x, c, squared), axis=1)


def typicality(x: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """1 / mean Euclidean distance of each row to its ``NEIGHBOURS`` nearest other rows, among
    a uniform sample of ``REFERENCE_ROWS`` of them (all when fewer): density, in linear memory."""
    n = x.shape[0]
    if n == 1:
        return np.ones(1)
    rng = np.random.default_rng([seed, 1])
    reference = np.arange(n) if n <= REFERENCE_ROWS else np.sort(
        rng.choice(n, REFERENCE_ROWS, replace=False))
    column = np.full(n, -1, np.int64)  # where a row stands among the reference rows
    column[reference] = np.arange(reference.size)
    m = min(NEIGHBOURS, reference.size - 1)
    out = np.empty(n, np.float64)
    for start in range(0, n, CHUNK_ROWS):
        rows = np.arange(start, min(start + CHUNK_ROWS, n))
        d = np.sqrt(squared_distances(x[rows], x[reference]))
        own = column[rows] >= 0
        d[np.flatnonzero(own), column[rows][own]] = np.inf  # a row is not its own neighbour
        out[rows] = 1.0 / (np.partition(d, m - 1, axis=1)[:, :m].mean(axis=1) + 1e-12)
    return out
