"""Batched non-negative least squares in Gram form.

Every solver here minimises, column by column and independently,

    f(x) = ½ xᵀ G x − bᵀ x + l1·Σx + ½ l2·‖x‖²   subject to x ≥ 0,

taking only the Gram statistics ``G`` (k×k) and ``B`` (k×n), never the big matrix. For the H
sub-problem ``G = WᵀW`` and ``B = WᵀX``; for the W sub-problem (row-wise) ``G = HHᵀ`` and
``B = (XHᵀ)ᵀ``. The penalties fold into the statistics: ``G + l2·I`` and ``B − l1``.
"""

from __future__ import annotations

import itertools

import numpy as np


def _penalized(G: np.ndarray, B: np.ndarray, l1: float, l2: float, dtype: np.dtype):
    Gp = np.array(G, dtype=dtype, copy=True)
    if l2:
        Gp[np.diag_indices_from(Gp)] += l2
    Bp = np.asarray(B, dtype=dtype)
    if l1:
        Bp = Bp - dtype.type(l1)
    return Gp, Bp


def hals_sweep(G: np.ndarray, B: np.ndarray, X: np.ndarray) -> float:
    """One coordinate-descent (HALS) sweep over the k rows of X, in place.

    Row i gets its exact minimiser with the other rows fixed:
    ``x_i ← max(0, x_i − (G_i·X − b_i) / G_ii)``. Vectorised over all n columns.

    Parameters
    ----------
    G : ndarray, shape (k, k)
        Penalised Gram matrix (same dtype as X).
    B : ndarray, shape (k, n)
        Penalised right-hand side.
    X : ndarray, shape (k, n)
        Current solution, updated in place.

    Returns
    -------
    float
        The largest absolute change of any entry in this sweep.
    """
    largest = 0.0
    for i in range(G.shape[0]):
        gii = G[i, i]
        row = X[i]
        if gii <= 0:
            # A zero basis vector explains nothing: its coefficients carry no information.
            change = float(np.max(row, initial=0.0))
            row[:] = 0
        else:
            grad = G[i] @ X - B[i]
            new = np.maximum(row - grad / gii, 0, dtype=X.dtype)
            change = float(np.max(np.abs(new - row), initial=0.0))
            row[:] = new
        largest = max(largest, change)
    return largest


def cd_nnls(
    G: np.ndarray,
    B: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_sweeps: int = 100,
    tol: float = 1e-6,
) -> tuple[np.ndarray, int]:
    """Column-wise NNLS by coordinate descent with warm start.

    Parameters
    ----------
    G : ndarray, shape (k, k)
        Gram matrix (unpenalised).
    B : ndarray, shape (k, n)
        Right-hand side (unpenalised); its dtype sets the working dtype.
    X0 : ndarray, shape (k, n), optional
        Warm start (not modified). Zeros when omitted.
    l1, l2 : float
        L1 and L2 penalties on X.
    max_sweeps : int
        At most this many sweeps; 1 gives a plain HALS update.
    tol : float
        Stop when the largest change in a sweep is at most ``tol`` times the largest entry.

    Returns
    -------
    X : ndarray, shape (k, n)
    n_sweeps : int
    """
    dtype = np.dtype(B.dtype) if np.issubdtype(B.dtype, np.floating) else np.dtype(np.float64)
    Gp, Bp = _penalized(G, B, l1, l2, dtype)
    if X0 is None:
        X = np.zeros(Bp.shape, dtype=dtype)
    else:
        X = np.array(X0, dtype=dtype, copy=True)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007 - the count is returned
        change = hals_sweep(Gp, Bp, X)
        scale = float(np.max(X, initial=0.0))
        if change <= tol * max(scale, np.finfo(dtype).tiny):
            break
    return X, sweeps


def _solve_passive(G: np.ndarray, B: np.ndarray, passive: np.ndarray) -> np.ndarray:
    """Unconstrained least squares restricted to each column's passive set.

    Columns that share a passive set are solved together with one factorisation.
    """
    k, n = B.shape
    X = np.zeros((k, n), dtype=np.float64)
    if n == 0:
        return X
    # Group columns by their passive-set pattern (bit-packed rows make a cheap key).
    keys = np.packbits(passive, axis=0)
    _, inverse = np.unique(keys, axis=1, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    for group in range(int(inverse.max()) + 1):
        cols = np.flatnonzero(inverse == group)
        idx = np.flatnonzero(passive[:, cols[0]])
        if idx.size == 0:
            continue
        sub = G[np.ix_(idx, idx)]
        rhs = B[np.ix_(idx, cols)]
        try:
            sol = np.linalg.solve(sub, rhs)
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(sub, rhs, rcond=None)[0]
        X[np.ix_(idx, cols)] = sol
    return X


def bpp_nnls(
    G: np.ndarray,
    B: np.ndarray,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_iter: int | None = None,
) -> np.ndarray:
    """Exact column-wise NNLS by block principal pivoting (Kim & Park, 2011).

    Solves the KKT system ``x_F = G_FF⁻¹ b_F``, ``y = Gx − b``, ``x ≥ 0``, ``y ≥ 0``,
    ``xᵀy = 0`` by exchanging infeasible variables between the passive set F and the active
    set in blocks, with the standard backup rule (single exchanges) that guarantees
    termination. Exact up to round-off, unlike coordinate descent.

    Parameters
    ----------
    G : ndarray, shape (k, k)
        Gram matrix, symmetric positive (semi-)definite.
    B : ndarray, shape (k, n)
    l1, l2 : float
        Penalties (folded into G and B).
    max_iter : int, optional
        Safety bound on pivoting rounds (default ``5·k + 10``).

    Returns
    -------
    ndarray, shape (k, n), dtype of B when floating, else float64
    """
    out_dtype = np.dtype(B.dtype) if np.issubdtype(B.dtype, np.floating) else np.float64
    Gp, Bp = _penalized(G, B, l1, l2, np.dtype(np.float64))
    k, n = Bp.shape
    max_iter = 5 * k + 10 if max_iter is None else max_iter
    passive = np.zeros((k, n), dtype=bool)
    X = np.zeros((k, n))
    Y = -Bp.copy()
    alpha = np.full(n, 3, dtype=np.int64)  # block exchanges still allowed per column
    best = np.full(n, k + 1, dtype=np.int64)  # fewest infeasibilities seen per column
    todo = np.ones(n, dtype=bool)
    for rounds in itertools.count():
        tol = 1e-12 * max(1.0, float(np.abs(Bp).max(initial=0.0)))
        infeasible = (passive & (X < -tol)) | (~passive & (Y < -tol))
        n_bad = infeasible.sum(axis=0)
        todo = n_bad > 0
        if not todo.any() or rounds >= max_iter:
            break
        cols = np.flatnonzero(todo)
        for c in cols:
            if n_bad[c] < best[c]:
                best[c] = n_bad[c]
                alpha[c] = 3
                passive[infeasible[:, c], c] ^= True
            elif alpha[c] > 0:
                alpha[c] -= 1
                passive[infeasible[:, c], c] ^= True
            else:
                # Backup rule: flip only the largest-index infeasible variable.
                last = np.flatnonzero(infeasible[:, c])[-1]
                passive[last, c] ^= True
        Xc = _solve_passive(Gp, Bp[:, cols], passive[:, cols])
        X[:, cols] = Xc
        Y[:, cols] = Gp @ Xc - Bp[:, cols]
        Y[:, cols] = np.where(passive[:, cols], 0.0, Y[:, cols])
    return np.maximum(X, 0).astype(out_dtype, copy=False)
