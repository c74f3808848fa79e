"""Counter-based randomness for blocks: held-out patterns and per-column permutations.

Everything here is a pure function of ``(seed, global row, global column)``, never of the
blocking or of the order blocks are visited in. So a held-out entry is held out, and a
permuted column is permuted the same way, on every executor, for dense and sparse input,
whatever the block sizes.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
#: Columns hashed together when drawing a held-out pattern (bounds the temporaries).
_CHUNK_ENTRIES = 1 << 22


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _seed_key(seed: int, stream: int) -> np.uint64:
    key = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return np.uint64(splitmix64(key ^ np.uint64(stream))[0])


def uniform(seed: int, stream: int, counter: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers, one per ``counter`` value, for a (seed, stream) pair."""
    bits = splitmix64(np.asarray(counter, dtype=np.uint64) ^ _seed_key(seed, stream))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def heldout_pattern(seed: int, fraction: float, m: int, start: int, stop: int) -> sp.csc_matrix:
    """The held-out entries of columns ``start:stop`` of an (m, ·) matrix.

    Entry (i, j) is held out when ``uniform(seed, j·m + i) < fraction``.

    Returns
    -------
    csc_matrix, shape (m, stop − start), bool
        Sorted indices; every stored entry is held out.
    """
    n = stop - start
    step = max(1, _CHUNK_ENTRIES // max(m, 1))
    indices: list[np.ndarray] = []
    counts = np.zeros(n, dtype=np.int64)
    rows = np.arange(m, dtype=np.uint64)
    for a in range(0, n, step):
        b = min(a + step, n)
        cols = np.arange(start + a, start + b, dtype=np.uint64)
        counter = cols[:, None] * np.uint64(m) + rows[None, :]  # (cols, m): column-major
        hit = uniform(seed, 1, counter) < fraction
        c, r = np.nonzero(hit)
        indices.append(r.astype(np.int32))
        counts[a:b] = np.bincount(c, minlength=b - a)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int32)
    data = np.ones(idx.size, dtype=bool)
    return sp.csc_matrix((data, idx, indptr), shape=(m, n))


def _feistel(x: np.ndarray, keys: np.ndarray, half: int) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    sh = np.uint64(half)
    left, right = x >> sh, x & mask
    for r in range(keys.shape[0]):
        left, right = right, left ^ (splitmix64(right ^ keys[r]) & mask)
    return (left << sh) | right


def column_permutation(seed: int, m: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Where row ``rows[e]`` of column ``cols[e]`` goes under column ``cols[e]``'s permutation.

    Each column j has its own pseudo-random permutation π_j of 0..m−1 (a 4-round Feistel
    network on the next power of 4 with cycle walking), evaluated element by element, so a
    sparse block costs O(nnz) and the permutation never needs to be stored.

    Parameters
    ----------
    rows : int array
        Row indices in 0..m−1.
    cols : int array, same shape
        Global column indices.

    Returns
    -------
    ndarray of int64, same shape: π_cols(rows)
    """
    bits = max(2, int(np.ceil(np.log2(max(m, 2)))))
    half = (bits + 1) // 2
    c = np.asarray(cols, dtype=np.uint64).ravel()
    base = _seed_key(seed, 2)
    keys = np.stack([splitmix64(c * np.uint64(4) + np.uint64(r) ^ base) for r in range(4)])
    x = np.asarray(rows, dtype=np.uint64).ravel()
    out = _feistel(x, keys, half)
    todo = np.flatnonzero(out >= np.uint64(m))
    while todo.size:  # cycle walking: at most a few rounds since 4^half < 4m
        out[todo] = _feistel(out[todo], keys[:, todo], half)
        todo = todo[out[todo] >= np.uint64(m)]
    return out.astype(np.int64).reshape(np.shape(rows))


def permute_columns_dense(X: np.ndarray, seed: int, start: int) -> np.ndarray:
    """Each column of a dense block with its rows permuted by ``column_permutation``."""
    m, n = X.shape
    rows = np.broadcast_to(np.arange(m)[:, None], (m, n))
    cols = np.broadcast_to(np.arange(start, start + n)[None, :], (m, n))
    dest = column_permutation(seed, m, rows, cols)
    out = np.empty_like(X)
    out[dest, np.broadcast_to(np.arange(n)[None, :], (m, n))] = X
    return out


def permute_columns_sparse(X: sp.spmatrix, seed: int, start: int) -> sp.csc_matrix:
    """The sparse twin of ``permute_columns_dense`` (only the stored entries are moved)."""
    csc = sp.csc_matrix(X)
    m, n = csc.shape
    cols = np.repeat(np.arange(start, start + n), np.diff(csc.indptr))
    dest = column_permutation(seed, m, csc.indices, cols)
    out = sp.csc_matrix(
        (csc.data.copy(), dest.astype(csc.indices.dtype), csc.indptr.copy()), shape=(m, n)
    )
    out.has_sorted_indices = False
    out.sort_indices()
    return out
