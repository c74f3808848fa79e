"""Consensus of many NMF runs: sample-level (Brunet et al. 2004) and factor-level (cNMF).

Sample level: run r assigns sample j to the factor with the largest (scaled)
coefficient. The consensus matrix ``C[i, j]`` is the fraction of runs that put i and j
together; its average-linkage clustering on ``1 − C`` gives the consensus clusters, and

- the cophenetic correlation is the Pearson correlation between ``1 − C`` and the
  cophenetic distances of that tree (1 for a perfectly stable clustering),
- the dispersion (Kim & Park 2007) is ``(1/n²) Σ 4 (C_ij − ½)²`` (1 when every C is 0 or 1).

Factor level: the factors (columns of W) of all runs are scaled to unit length and
clustered so that every run gives one factor to every cluster (a Hungarian matching to
the centroids, as SigProfilerExtractor does); factors far from their neighbours are
dropped as outliers (cNMF's local density filter) and the medians of the rest are the
consensus factors. The mean silhouette of this clustering (cosine distance) is the
stability of the rank: it works for any number of samples, since it never looks at them.

Pure numpy/scipy on in-memory arrays.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import cophenet, fcluster, leaves_list, linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform


def _one_hot(labels: np.ndarray) -> np.ndarray:
    """(R, n) integer labels → (n, R·L) 0/1 float32, L the largest label + 1."""
    R, n = labels.shape
    L = int(labels.max()) + 1 if labels.size else 1
    A = np.zeros((n, R * L), dtype=np.float32)
    cols = labels.astype(np.int64) + (np.arange(R) * L)[:, None]
    A[np.repeat(np.arange(n)[None, :], R, axis=0).ravel(), cols.ravel()] = 1.0
    return A


def consensus_matrix(labels: np.ndarray) -> np.ndarray:
    """Fraction of runs that put each pair of samples in the same cluster.

    Parameters
    ----------
    labels : ndarray, shape (R, n)
        Cluster of every sample in every run.

    Returns
    -------
    ndarray, shape (n, n), float32, symmetric with unit diagonal.
    """
    A = _one_hot(np.asarray(labels))
    C = (A @ A.T) / np.float32(labels.shape[0])
    np.fill_diagonal(C, 1.0)
    return C


def dispersion(C: np.ndarray) -> float:
    """Kim & Park's dispersion ``(1/n²) Σ_ij 4 (C_ij − ½)²`` of a consensus matrix."""
    C64 = np.asarray(C, dtype=np.float64)
    return float(np.mean(4.0 * (C64 - 0.5) ** 2))


def dispersion_from_labels(labels: Any, *, chunk: int | None = None) -> float:
    """The dispersion of the consensus matrix of ``labels`` without forming it.

    ``Σ C = (1/R) Σ_r Σ_c n_rc²`` and ``Σ C² = (1/R²) Σ_{r,s} ‖N_rs‖²`` with ``N_rs`` the
    contingency table of runs r and s: O(R²·n) time, at most ``TABLE_BYTES`` of tables
    (O(R·L²) at the least), exact for any n.
    ``labels`` (R, n) is read ``chunk`` columns at a time (``label_chunks``), so it may be
    a scratch array.
    """
    R, n = labels.shape
    L = label_count(labels, chunk=chunk)
    # The tables of a group of runs r against every run s are held together: as many runs
    # a group as fit TABLE_BYTES (the labels are read once per group).
    group = max(1, int(TABLE_BYTES // max(1, R * L * L * 8)))
    sum_c = 0.0
    sum_c2 = 0.0
    for first in range(0, R, group):
        rows = range(first, min(first + group, R))
        sizes = np.zeros((len(rows), L))
        tables = np.zeros((len(rows), R, L * L))
        for _, _, block in label_chunks(labels, chunk):
            for i, r in enumerate(rows):
                sizes[i] += np.bincount(block[r], minlength=L)
                for s in range(R):
                    tables[i, s] += np.bincount(block[r] * L + block[s], minlength=L * L)
        # Counts are integers: their sums in float64 are exact, in any order of chunks.
        for i in range(len(rows)):
            sum_c += float(np.sum(sizes[i] ** 2))
            for s in range(R):
                sum_c2 += float(tables[i, s] @ tables[i, s])
    sum_c /= R
    sum_c2 /= R * R
    return float(4.0 * (sum_c2 - sum_c) / n**2 + 1.0)


#: Contingency tables held at once by ``dispersion_from_labels`` (bytes).
TABLE_BYTES = 64 * 2**20
#: Samples read at a time when every sample's labels are walked (a subsampled consensus):
#: R × LABEL_CHUNK labels and LABEL_CHUNK × k scores in memory, whatever n.
LABEL_CHUNK = 65_536


def label_chunks(labels: Any, chunk: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(a, b, labels[:, a:b] as int64)`` over the columns of (R, n) ``labels`` (an
    ndarray or anything read by ``[:, a:b]``, such as ``models.fits.StoredLabels``)."""
    n = labels.shape[1]
    width = max(1, int(chunk or LABEL_CHUNK))
    for a in range(0, n, width):
        b = min(a + width, n)
        yield a, b, np.asarray(labels[:, a:b], dtype=np.int64)


def label_count(labels: Any, *, chunk: int | None = None) -> int:
    """The largest label + 1 (1 when there are none), read by column chunks."""
    top = 0
    for _, _, block in label_chunks(labels, chunk):
        if block.size:
            top = max(top, int(block.max()))
    return top + 1


def _condensed_distance(C: np.ndarray) -> np.ndarray:
    D = 1.0 - np.asarray(C, dtype=np.float64)
    np.fill_diagonal(D, 0.0)
    return squareform(np.clip(D, 0.0, 1.0), checks=False)


def consensus_tree(C: np.ndarray) -> tuple[np.ndarray, float]:
    """Average-linkage tree of ``1 − C`` and its cophenetic correlation.

    Returns
    -------
    linkage : ndarray, shape (n − 1, 4), float64 (scipy format)
    cophenetic : float
        NaN when all distances are equal (nothing to correlate) or n < 3.
    """
    n = C.shape[0]
    if n < 2:
        return np.zeros((0, 4)), math.nan
    d = _condensed_distance(C)
    Z = linkage(d, method="average")
    if n < 3 or float(np.ptp(d)) == 0.0:
        return Z, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        coph = float(cophenet(Z, d)[0])
    return Z, coph


def cophenetic(C: np.ndarray) -> float:
    """Cophenetic correlation of the average-linkage clustering of ``1 − C``."""
    return consensus_tree(C)[1]


def tree_clusters(Z: np.ndarray, k: int, n: int) -> np.ndarray:
    """Cut the tree into (at most) k clusters, numbered 1..k."""
    if n == 1:
        return np.ones(1, dtype=np.int64)
    return np.asarray(fcluster(Z, t=k, criterion="maxclust"), dtype=np.int64)


def tree_order(Z: np.ndarray, n: int) -> np.ndarray:
    """Leaf order of the tree (int64), the sample order of a consensus heat map."""
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    return np.asarray(leaves_list(Z), dtype=np.int64)


def silhouette(D: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Silhouette width of every point for a precomputed distance matrix.

    ``s = (b − a) / max(a, b)``: a the mean distance to the other members of its cluster,
    b the smallest mean distance to another cluster; 0 for members of singletons. NaN for
    every point when there are fewer than two clusters.

    Parameters
    ----------
    D : ndarray, shape (N, N)
    labels : ndarray, shape (N,)
    """
    labels = np.asarray(labels)
    uniq, inv = np.unique(labels, return_inverse=True)
    N = labels.shape[0]
    if uniq.size < 2:
        return np.full(N, math.nan)
    onehot = np.zeros((N, uniq.size))
    onehot[np.arange(N), inv] = 1.0
    sums = np.asarray(D, dtype=np.float64) @ onehot  # (N, clusters)
    sizes = onehot.sum(axis=0)
    own = sizes[inv]
    a = np.where(own > 1, sums[np.arange(N), inv] / np.maximum(own - 1, 1), 0.0)
    other = sums / sizes[None, :]
    other[np.arange(N), inv] = np.inf
    b = other.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    return np.where(own > 1, s, 0.0)


@dataclass
class SampleConsensus:
    """Sample-level consensus of R runs (on a subsample when n is large)."""

    matrix: np.ndarray  # (n_s, n_s) float32
    samples: np.ndarray  # (n_s,) int64 indices into the n samples, increasing
    linkage: np.ndarray  # (n_s − 1, 4)
    order: np.ndarray  # (n_s,) leaf order
    cophenetic: float
    dispersion: float
    silhouette: float
    clusters: np.ndarray  # (n,) 1..k for every sample
    confidence: np.ndarray  # (n,) mean consensus of a sample with its cluster
    subsampled: bool
    n_total: int


def assign_by_consensus(
    labels: Any, members: np.ndarray, clusters: np.ndarray, *, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean consensus of every sample with every consensus cluster, and the best one.

    ``score[j, c] = (1/R) Σ_r (share of c's members that run r puts with j)`` — the row of
    the full consensus matrix averaged over c's members, in O(R·n·k) without forming it,
    ``chunk`` samples at a time (the scores of one chunk only are in memory).

    Parameters
    ----------
    labels : ndarray or column-readable array, shape (R, n)
    members : ndarray, shape (n_s,)
        Indices of the samples the clusters were found on, increasing.
    clusters : ndarray, shape (n_s,), values 1..c

    Returns
    -------
    best : ndarray, shape (n,), 1..c
    confidence : ndarray, shape (n,)
    """
    R, n = labels.shape
    L = label_count(labels, chunk=chunk)
    nc = int(clusters.max())
    tables = []
    picked = member_labels(labels, members, chunk=chunk)
    for r in range(R):
        table = np.zeros((nc, L))
        np.add.at(table, (clusters - 1, picked[r]), 1.0)
        table /= np.maximum(table.sum(axis=1, keepdims=True), 1.0)
        tables.append(table)
    best = np.empty(n, dtype=np.int64)
    confidence = np.empty(n, dtype=np.float64)
    for a, b, block in label_chunks(labels, chunk):
        score = np.zeros((b - a, nc))
        for r in range(R):
            score += tables[r][:, block[r]].T
        score /= R
        top = np.argmax(score, axis=1)
        best[a:b] = top + 1
        confidence[a:b] = score[np.arange(b - a), top]
    return best, confidence


def member_labels(labels: Any, members: np.ndarray, *, chunk: int | None = None) -> np.ndarray:
    """``labels[:, members]`` (R, n_s) int64, gathered chunk by chunk (``members`` sorted)."""
    if isinstance(labels, np.ndarray):
        return np.asarray(labels[:, members], dtype=np.int64)
    parts = []
    for a, b, block in label_chunks(labels, chunk):
        lo, hi = np.searchsorted(members, [a, b])
        parts.append(block[:, members[lo:hi] - a])
    return np.concatenate(parts, axis=1)


def sample_consensus(
    labels: np.ndarray, k: int, *, max_samples: int = 10_000, seed: int = 0
) -> SampleConsensus:
    """Consensus matrix, tree, cophenetic, dispersion, silhouette and clusters of R runs.

    Parameters
    ----------
    labels : ndarray or column-readable array (``models.fits.StoredLabels``), shape (R, n)
        Cluster (factor) of every sample in every run. Above ``max_samples`` it is only
        read ``LABEL_CHUNK`` columns at a time: memory is then bounded by the subsample
        (its ``max_samples²`` consensus matrix) and a chunk, plus the (n,) clusters and
        confidences returned.
    k : int
        Number of consensus clusters to cut the tree into.
    max_samples : int
        Above this many samples the matrix and tree are computed on a random subsample of
        this size (``subsampled`` is then True); every sample still gets a cluster (its
        best mean consensus with the subsample's clusters) and the dispersion stays exact.
    """
    n = labels.shape[1]
    subsampled = n > max_samples
    if subsampled:
        rng = np.random.default_rng(seed)
        members = np.sort(rng.choice(n, size=max_samples, replace=False))
        picked = member_labels(labels, members)
    else:
        members = np.arange(n)
        picked = np.asarray(labels, dtype=np.int64)
    C = consensus_matrix(picked)
    Z, coph = consensus_tree(C)
    cut = tree_clusters(Z, k, members.size)
    D = 1.0 - C.astype(np.float64)
    np.fill_diagonal(D, 0.0)
    sil = silhouette(D, cut)
    mean_sil = float(np.mean(sil)) if not np.isnan(sil).all() else math.nan
    if subsampled:
        clusters, confidence = assign_by_consensus(labels, members, cut)
        disp = dispersion_from_labels(labels)
    else:
        clusters = cut
        onehot = (cut[:, None] == np.arange(1, int(cut.max()) + 1)[None, :]).astype(np.float32)
        means = (C @ onehot) / onehot.sum(axis=0)[None, :]
        confidence = means[np.arange(n), cut - 1]
        disp = dispersion(C)
    return SampleConsensus(
        matrix=C,
        samples=members,
        linkage=Z,
        order=tree_order(Z, members.size),
        cophenetic=coph,
        dispersion=disp,
        silhouette=mean_sil,
        clusters=clusters,
        confidence=np.asarray(confidence, dtype=np.float64),
        subsampled=subsampled,
        n_total=n,
    )


# -- factor level -----------------------------------------------------------------------


@dataclass
class FactorConsensus:
    """Factor-level consensus of R runs at one rank."""

    W: np.ndarray  # (m, k) medians of the kept factors, columns summing to 1
    labels: np.ndarray  # (R, k): the consensus factor each run's factor was matched to
    kept: np.ndarray  # (R, k) bool: not an outlier
    silhouette: float  # mean silhouette (cosine distance) of all R·k factors: stability
    silhouettes: np.ndarray  # (R, k)


def _unit_columns(W: np.ndarray) -> np.ndarray:
    W64 = np.asarray(W, dtype=np.float64)
    norms = np.linalg.norm(W64, axis=0, keepdims=True)
    return W64 / np.where(norms > 0, norms, 1.0)


def match_to_centroids(U: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Assign the k factors of one run to k centroids one-to-one (max total cosine)."""
    rows, cols = linear_sum_assignment(-(U.T @ centroids))
    out = np.empty(U.shape[1], dtype=np.int64)
    out[rows] = cols
    return out


def factor_consensus(
    Ws: list[np.ndarray],
    objectives: list[float] | None = None,
    *,
    density_threshold: float = 0.5,
    neighbourhood: float = 0.3,
    max_rounds: int = 50,
) -> FactorConsensus:
    """Cluster the factors of many runs, drop outliers, take medians (cNMF-style).

    Parameters
    ----------
    Ws : list of ndarray, each (m, k)
    objectives : list of float, optional
        Final objective per run; the best run's factors seed the centroids.
    density_threshold : float
        A factor whose mean Euclidean distance (unit vectors) to its nearest
        ``neighbourhood·R`` neighbours exceeds this is an outlier (cNMF's default 0.5).
    neighbourhood : float
        Share of the runs that make a factor's neighbourhood.

    Returns
    -------
    FactorConsensus
    """
    R = len(Ws)
    m, k = Ws[0].shape
    U = np.stack([_unit_columns(W) for W in Ws])  # (R, m, k)
    seed_run = int(np.argmin(objectives)) if objectives is not None else 0
    centroids = U[seed_run].copy()
    labels = np.tile(np.arange(k), (R, 1))
    for _ in range(max_rounds):
        new = np.stack([match_to_centroids(U[r], centroids) for r in range(R)])
        for c in range(k):
            pick = U[np.nonzero(new == c)[0], :, np.nonzero(new == c)[1]]  # (R, m)
            centroid = np.median(pick, axis=0)
            centroids[:, c] = centroid / max(float(np.linalg.norm(centroid)), 1e-300)
        done = np.array_equal(new, labels)
        labels = new
        if done:
            break
    flat = U.transpose(0, 2, 1).reshape(R * k, m)  # run-major: factor (r, i) at r·k + i
    cos = np.clip(flat @ flat.T, -1.0, 1.0)
    flat_labels = labels.reshape(-1)
    if R > 1 and k > 1:
        sil = silhouette(1.0 - cos, flat_labels)
        stability = float(np.mean(sil))
    else:
        sil = np.full(R * k, math.nan)
        stability = math.nan
    # Local density: mean distance to the nearest neighbours (unit vectors, Euclidean).
    euclid = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
    L = max(1, round(neighbourhood * R))
    kept = np.ones(R * k, dtype=bool)
    if R * k > L + 1:
        nearest = np.sort(euclid, axis=1)[:, 1 : L + 1]
        kept = nearest.mean(axis=1) <= density_threshold
    W = np.empty((m, k))
    for c in range(k):
        members = np.flatnonzero(flat_labels == c)
        use = members[kept[members]]
        if use.size == 0:  # never leave a factor empty: keep its most central member
            use = members[[int(np.argmax(cos[np.ix_(members, members)].sum(axis=1)))]]
            kept[use] = True
        med = np.maximum(np.median(flat[use], axis=0), 0.0)
        W[:, c] = med / max(float(med.sum()), 1e-300)
    return FactorConsensus(
        W=W,
        labels=labels,
        kept=kept.reshape(R, k),
        silhouette=stability,
        silhouettes=np.asarray(sil).reshape(R, k),
    )
