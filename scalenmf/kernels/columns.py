"""Column-wise NNLS to convergence for many independent columns (projection onto a basis).

Solves, for every column b of B independently, ``min_{x ≥ 0} ½ xᵀ G x − bᵀ x + l1·Σx +
½ l2·‖x‖²`` by coordinate descent, like ``cd_nnls``, with two changes that matter when
the columns are many and each is solved once:

- the start is the unconstrained solution ``G⁻¹ b`` clipped at zero, which is already
  the answer for every column whose solution has no active bound, and close for the rest;
- convergence is judged per column, and converged columns leave the sweep, so the work
  follows the hard columns instead of the slowest one.
"""

from __future__ import annotations

import numpy as np


def _start(G: np.ndarray, B: np.ndarray) -> np.ndarray:
    try:
        X = np.linalg.solve(G, B)
    except np.linalg.LinAlgError:
        return np.zeros_like(B)
    if not np.isfinite(X).all():
        return np.zeros_like(B)
    return np.maximum(X, 0, out=X)


def nnls_columns(
    G: np.ndarray,
    B: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_sweeps: int = 1000,
    tol: float = 1e-10,
) -> np.ndarray:
    """Column-wise NNLS in Gram form, each column to its own convergence.

    Parameters
    ----------
    G : ndarray, shape (k, k)
        Gram matrix ``WᵀW`` (unpenalised).
    B : ndarray, shape (k, n)
        Right-hand sides ``WᵀX`` (unpenalised); its dtype is the working dtype.
    X0 : ndarray, shape (k, n), optional
        Warm start (default: the clipped unconstrained solution).
    l1, l2 : float
        Penalties.
    max_sweeps : int
        At most this many coordinate sweeps per column.
    tol : float
        A column is done when no entry moved more than ``tol`` times its largest entry.

    Returns
    -------
    ndarray, shape (k, n)
    """
    dtype = np.dtype(B.dtype) if np.issubdtype(B.dtype, np.floating) else np.dtype(np.float64)
    Gp = np.array(G, dtype=np.float64, copy=True)
    if l2:
        Gp[np.diag_indices_from(Gp)] += l2
    Bp = np.asarray(B, dtype=np.float64)
    if l1:
        Bp = Bp - l1
    n = Bp.shape[1]
    X = _start(Gp, Bp) if X0 is None else np.array(X0, dtype=np.float64, copy=True)
    diag = np.diag(Gp).copy()
    live = diag > 0
    X[~live] = 0.0
    tiny = np.finfo(np.float64).tiny
    # The sweep runs on a working copy of the unfinished columns, re-cut only when fewer
    # than half of them are left (a copy per sweep would cost more than it saves).
    work = np.arange(n)
    Xw, Bw = X, Bp
    left = np.ones(n, dtype=bool)
    for _ in range(max_sweeps):
        change = np.zeros(work.size)
        for i in np.flatnonzero(live):
            row = Xw[i]
            new = row - (Gp[i] @ Xw - Bw[i]) / diag[i]
            np.maximum(new, 0.0, out=new)
            np.maximum(change, np.abs(new - row), out=change)
            Xw[i] = new
        left &= change > tol * np.maximum(Xw.max(axis=0, initial=0.0), tiny)
        n_left = int(left.sum())
        if n_left == 0:
            break
        if n_left < work.size // 2:
            if Xw is not X:
                X[:, work] = Xw
            work, Xw, Bw = work[left], Xw[:, left], Bw[:, left]
            left = np.ones(work.size, dtype=bool)
    if Xw is not X:
        X[:, work] = Xw
    return X.astype(dtype, copy=False)


#: Columns sharing a passive set are solved together when at least this many share it;
#: the rest go through one batched solve (per-group overhead would dominate for them).
GROUP_MIN = 16


def _solve_groups(G: np.ndarray, B: np.ndarray, passive: np.ndarray) -> np.ndarray:
    """Least squares on each column's passive set (zeros elsewhere).

    Columns that share a passive set share one factorisation; columns with a rare set are
    solved in one batched call on ``G`` masked to their set (identity outside it).
    """
    k, n = B.shape
    X = np.zeros((k, n))
    if n == 0:
        return X
    if k < 63:
        keys = (1 << np.arange(k, dtype=np.int64)) @ passive.astype(np.int64)
    else:
        _, keys = np.unique(np.packbits(passive, axis=0), axis=1, return_inverse=True)
        keys = np.asarray(keys).ravel()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    rare: list[np.ndarray] = []
    for cols in np.split(order, starts[1:]):
        if cols.size < GROUP_MIN:
            rare.append(cols)
            continue
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
    if rare:
        cols = np.concatenate(rare)
        P = passive[:, cols].T  # (c, k)
        mats = G[None, :, :] * (P[:, :, None] & P[:, None, :])
        mats[:, np.arange(k), np.arange(k)] += ~P
        rhs = (B[:, cols] * P.T).T[:, :, None]
        try:
            X[:, cols] = np.linalg.solve(mats, rhs)[:, :, 0].T
        except np.linalg.LinAlgError:
            X[:, cols] = np.stack(
                [np.linalg.lstsq(M, r, rcond=None)[0][:, 0] for M, r in zip(mats, rhs, strict=True)]
            ).T
    return X


def bpp_columns(
    G: np.ndarray,
    B: np.ndarray,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_iter: int | None = None,
) -> np.ndarray:
    """Exact column-wise NNLS by block principal pivoting, vectorised over the columns.

    The method of Kim & Park (2011), as ``kernels.nnls.bpp_nnls``, with the exchange rule
    applied to all columns at once and the start at the passive set of the unconstrained
    solution (columns whose solution has no active bound finish in the first round).

    Parameters
    ----------
    G : ndarray, shape (k, k)
    B : ndarray, shape (k, n)
    l1, l2 : float
        Penalties.
    max_iter : int, optional
        Bound on pivoting rounds (default ``5·k + 10``); columns still infeasible then
        are finished by coordinate descent.

    Returns
    -------
    ndarray, shape (k, n), dtype of B when floating
    """
    out_dtype = np.dtype(B.dtype) if np.issubdtype(B.dtype, np.floating) else np.float64
    Gp = np.array(G, dtype=np.float64, copy=True)
    if l2:
        Gp[np.diag_indices_from(Gp)] += l2
    Bp = np.asarray(B, dtype=np.float64)
    if l1:
        Bp = Bp - l1
    k, n = Bp.shape
    max_iter = 5 * k + 10 if max_iter is None else max_iter
    start = _start(Gp, Bp)
    passive = start > 0
    X = _solve_groups(Gp, Bp, passive)
    Y = np.where(passive, 0.0, Gp @ X - Bp)
    alpha = np.full(n, 3, dtype=np.int64)
    best = np.full(n, k + 1, dtype=np.int64)
    tol = 1e-12 * max(1.0, float(np.abs(Bp).max(initial=0.0)))
    rows = np.arange(k)[:, None]
    for _ in range(max_iter):
        infeasible = (passive & (X < -tol)) | (~passive & (Y < -tol))
        n_bad = infeasible.sum(axis=0)
        todo = np.flatnonzero(n_bad > 0)
        if todo.size == 0:
            break
        bad = infeasible[:, todo]
        nb = n_bad[todo]
        improved = nb < best[todo]
        best[todo[improved]] = nb[improved]
        alpha[todo[improved]] = 3
        spend = ~improved & (alpha[todo] > 0)
        alpha[todo[spend]] -= 1
        full = improved | spend
        # Backup rule: flip only the last infeasible variable of the other columns.
        last = k - 1 - np.argmax(bad[::-1], axis=0)
        flip = np.where(full[None, :], bad, rows == last[None, :])
        passive[:, todo] ^= flip
        Xt = _solve_groups(Gp, Bp[:, todo], passive[:, todo])
        X[:, todo] = Xt
        Y[:, todo] = np.where(passive[:, todo], 0.0, Gp @ Xt - Bp[:, todo])
    else:
        todo = np.flatnonzero(((passive & (X < -tol)) | (~passive & (Y < -tol))).any(axis=0))
    X = np.maximum(X, 0)
    if todo.size:
        # Cycling past the safety bound (rare, near-degenerate G): finish by descent.
        X[:, todo] = nnls_columns(Gp, Bp[:, todo], X[:, todo], max_sweeps=10_000, tol=1e-12)
    return X.astype(out_dtype, copy=False)
