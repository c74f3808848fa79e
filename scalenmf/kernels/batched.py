"""NNLS and multiplicative steps batched over many fits, with shared or per-column Grams.

A rank survey or a consensus runs many fits at once. Their sub-problems have the same
shape, so one vectorised coordinate sweep serves all of them instead of a Python loop per
fit. Masked fits (missing entries) need a Gram matrix per column (H step) or per row
(W step): ``G_j = Wᵀ diag(o_j) W`` with ``o_j`` the observed pattern of column j. Every
function here takes either

- ``G`` of shape ``(R, k, k)``: one Gram per fit, shared by all columns, or
- ``G`` of shape ``(R, n, k, k)``: one Gram per fit and column,

with ``B`` and ``X`` of shape ``(R, k, n)``, and solves, for every fit r and column j,
``min_{x ≥ 0} ½ xᵀ G x − bᵀ x + l1·Σx + ½ l2·‖x‖²``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scalenmf.kernels.mu import EPS


def outer_rows(A: np.ndarray) -> np.ndarray:
    """Row-wise outer products ``a_i a_iᵀ`` flattened: (p, k) → (p, k·k), float64.

    ``Mᵀ @ outer_rows(W)`` then sums ``w_i w_iᵀ`` over the rows a pattern M selects.
    """
    A64 = np.asarray(A, dtype=np.float64)
    p, k = A64.shape
    return (A64[:, :, None] * A64[:, None, :]).reshape(p, k * k)


def pattern_grams(G: np.ndarray, missing: sp.csc_matrix | None, A: np.ndarray) -> np.ndarray:
    """Per-column Grams of the observed entries: ``G − Σ_{i missing in j} a_i a_iᵀ``.

    Parameters
    ----------
    G : ndarray, shape (k, k)
        Gram of all rows of ``A`` (``AᵀA``).
    missing : sparse matrix, shape (p, n), or None
        Pattern of the missing entries (every stored entry marks one). For the W step pass
        the transpose of the block's pattern.
    A : ndarray, shape (p, k)
        The factor whose rows meet the pattern (W for the H step, Hᵀ for the W step).

    Returns
    -------
    ndarray, shape (n, k, k), float64
        Costs ``nnz(missing)·k²``: only missing entries are visited.
    """
    k = G.shape[0]
    if missing is None or missing.nnz == 0:
        n = 0 if missing is None else missing.shape[1]
        return np.broadcast_to(G, (n, k, k)).copy()
    ones = missing.astype(np.float64, copy=True)
    ones.data[:] = 1.0
    removed = np.asarray(ones.T @ outer_rows(A)).reshape(-1, k, k)
    return G[None, :, :] - removed


def _diag(G: np.ndarray, i: int) -> np.ndarray:
    return G[..., i, i]


def _row_times(G: np.ndarray, i: int, X: np.ndarray) -> np.ndarray:
    """``(G X)_i`` for every fit and column: shape (R, n)."""
    if G.ndim == 3:
        return np.matmul(G[:, i : i + 1, :], X)[:, 0, :]
    return np.einsum("rnl,rln->rn", G[:, :, i, :], X)


def _penalize(G: np.ndarray, B: np.ndarray, l1: float, l2: float, dtype: np.dtype):
    Gp = np.array(G, dtype=dtype, copy=True)
    if l2:
        k = Gp.shape[-1]
        idx = np.arange(k)
        Gp[..., idx, idx] += l2
    Bp = np.asarray(B, dtype=dtype)
    if l1:
        Bp = Bp - dtype.type(l1)
    return Gp, Bp


def cd_nnls_batched(
    G: np.ndarray,
    B: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_sweeps: int = 50,
    tol: float = 1e-4,
) -> np.ndarray:
    """Coordinate-descent NNLS for a batch of fits (HALS sweeps until converged).

    Parameters
    ----------
    G : ndarray, shape (R, k, k) or (R, n, k, k)
        Gram matrices (unpenalised), shared per fit or one per column.
    B : ndarray, shape (R, k, n)
        Right-hand sides; their dtype (float32/float64) is the working dtype.
    X0 : ndarray, shape (R, k, n), optional
        Warm start (not modified); zeros when omitted.
    l1, l2 : float
        Penalties on X.
    max_sweeps : int
        At most this many sweeps (1 to 3 give HALS steps).
    tol : float
        Stop when no entry of the batch moved more than ``tol`` times the largest entry.

    Returns
    -------
    ndarray, shape (R, k, n)
        Each sweep gives every row its exact minimiser with the others fixed, so the
        objective of every fit never rises.
    """
    dtype = np.dtype(B.dtype) if np.issubdtype(B.dtype, np.floating) else np.dtype(np.float64)
    Gp, Bp = _penalize(G, B, l1, l2, dtype)
    X = np.zeros(Bp.shape, dtype=dtype) if X0 is None else np.array(X0, dtype=dtype, copy=True)
    k = X.shape[1]
    # 1/G_ii where positive, else 0: a zero basis vector explains nothing, so its
    # coefficients are set to 0 (the same rule as ``hals_sweep``).
    diag = np.stack([_diag(Gp, i) for i in range(k)], axis=-1)  # (R, k) or (R, n, k)
    inv = np.where(diag > 0, 1.0 / np.where(diag > 0, diag, 1.0), 0.0).astype(dtype)
    if inv.ndim == 2:
        inv = inv[:, :, None]  # (R, k, 1)
    else:
        inv = np.ascontiguousarray(inv.transpose(0, 2, 1))  # (R, k, n)
    # Rows with inv = 0 start at 0 and stay there (their step is X_i − grad·0).
    X *= inv > 0
    for _ in range(max_sweeps):
        before = X.copy() if tol > 0 else None
        for i in range(k):
            grad = _row_times(Gp, i, X)
            grad -= Bp[:, i, :]
            grad *= inv[:, i, :]
            np.subtract(X[:, i, :], grad, out=grad)
            np.maximum(grad, 0, out=X[:, i, :])
        if before is None:
            continue
        largest = float(np.max(np.abs(X - before), initial=0.0))
        scale = float(np.max(X, initial=0.0))
        if largest <= tol * max(scale, np.finfo(dtype).tiny):
            break
    return X


def mu_frobenius_batched(
    G: np.ndarray, B: np.ndarray, X: np.ndarray, *, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """One multiplicative step ``X ← X ⊙ B / (G X + l1 + l2 X)`` for a batch of fits.

    Parameters
    ----------
    G : ndarray, shape (R, k, k) or (R, n, k, k)
    B : ndarray, shape (R, k, n)
    X : ndarray, shape (R, k, n)
        Current factors (not modified).

    Returns
    -------
    ndarray, shape (R, k, n)
    """
    dtype = X.dtype
    Gd = np.asarray(G, dtype=dtype)
    denom = np.matmul(Gd, X) if Gd.ndim == 3 else np.einsum("rnkl,rln->rkn", Gd, X)
    if l2:
        denom += dtype.type(l2) * X
    denom += dtype.type(l1 + EPS)
    return X * np.maximum(np.asarray(B, dtype=dtype), 0) / denom


def quad_form(G: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Σ_j x_jᵀ G_j x_j`` per fit (the ``Σ (WH)²`` of observed entries), float64, (R,)."""
    X64 = np.asarray(X, dtype=np.float64)
    if G.ndim == 3:
        return np.einsum("rkn,rkl,rln->r", X64, G, X64)
    return np.einsum("rkn,rnkl,rln->r", X64, G, X64)


def wh_at(W: np.ndarray, H: np.ndarray, pattern: sp.spmatrix) -> np.ndarray:
    """Values of ``W H`` at the stored entries of a CSC pattern, in storage order, float64.

    Parameters
    ----------
    W : ndarray, shape (m, k)
    H : ndarray, shape (k, n)
    pattern : csc_matrix, shape (m, n)

    Returns
    -------
    ndarray, shape (nnz,)
    """
    csc = sp.csc_matrix(pattern)
    rows = csc.indices
    cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
    out = np.empty(rows.size, dtype=np.float64)
    W64 = np.asarray(W, dtype=np.float64)
    Ht = np.asarray(H, dtype=np.float64).T
    step = 1 << 18  # bound the (nnz × k) temporaries
    for a in range(0, rows.size, step):
        b = min(a + step, rows.size)
        out[a:b] = np.einsum("ij,ij->i", W64[rows[a:b]], Ht[cols[a:b]])
    return out


#: Systems solved at once by ``bpp_nnls_batched`` (bounds its (T, k, k) temporaries).
BPP_CHUNK = 1 << 14
#: Passive-set groups at least this large are solved with one factorisation each.
GROUPED_MIN_COLUMNS = 32


def _passive_solve(G: np.ndarray, b: np.ndarray, F: np.ndarray) -> np.ndarray:
    """``x_F = G_FF⁻¹ b_F``, ``x_A = 0`` for a stack of systems G (T,k,k), b (T,k), F (T,k).

    The active rows and columns are replaced by the identity, so one batched LAPACK solve
    serves every passive pattern; a relative ridge of 1e-12 keeps exactly collinear
    factors solvable.
    """
    k = b.shape[-1]
    idx = np.arange(k)
    M = np.where(F[:, :, None] & F[:, None, :], G, 0.0)
    d = M[:, idx, idx]
    ridge = 1e-12 * np.maximum(d.max(axis=1, initial=0.0), 1e-300)
    M[:, idx, idx] = np.where(F, d + ridge[:, None], 1.0)
    x = np.linalg.solve(M, np.where(F, b, 0.0)[..., None])[..., 0]
    return np.where(F, x, 0.0)


def bpp_nnls_batched(
    G: np.ndarray,
    B: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_rounds: int | None = None,
) -> np.ndarray:
    """Exact NNLS by block principal pivoting (Kim & Park 2011) for a batch of fits.

    Every (fit, column) is one KKT system ``x_F = G_FF⁻¹ b_F, y = Gx − b, x ≥ 0, y ≥ 0,
    xᵀy = 0``; infeasible variables move between the passive set F and the active set in
    blocks, with the single-exchange backup rule that guarantees termination. A warm start
    ``X0`` seeds F with its positive entries, so in an alternating fit most columns are
    already optimal and only the others are solved again. Coordinates whose Gram diagonal
    is 0 (a zero column of W, such as padding) stay 0.

    Parameters
    ----------
    G : ndarray, shape (R, k, k) or (R, n, k, k)
    B : ndarray, shape (R, k, n)
    X0 : ndarray, shape (R, k, n), optional
    l1, l2 : float
    max_rounds : int, optional
        Safety bound on pivoting rounds (default ``5·k + 10``).

    Returns
    -------
    ndarray, shape (R, k, n), the dtype of B
    """
    out_dtype = np.dtype(B.dtype) if np.issubdtype(B.dtype, np.floating) else np.float64
    Gp, Bp = _penalize(G, B, l1, l2, np.dtype(np.float64))
    R, k, n = Bp.shape
    b = np.ascontiguousarray(Bp.transpose(0, 2, 1)).reshape(R * n, k)
    if Gp.ndim == 3:
        Gs = Gp
        gidx = np.repeat(np.arange(R), n)
    else:
        Gs = Gp.reshape(R * n, k, k)
        gidx = np.arange(R * n)
    idx = np.arange(k)
    alive = Gs[:, idx, idx][gidx] > 0  # (T, k)
    if X0 is None:
        F = np.zeros((R * n, k), dtype=bool)
    else:
        F = (np.asarray(X0).transpose(0, 2, 1).reshape(R * n, k) > 0) & alive
    x = np.zeros((R * n, k))
    y = -b.copy()
    tol = 1e-10 * np.maximum(np.abs(b).max(axis=1, initial=0.0), 1.0)[:, None]

    shared = Gp.ndim == 3
    weights = (1 << np.arange(k, dtype=np.int64)) if k < 62 else None

    def solve(cols: np.ndarray) -> None:
        if shared and weights is not None and cols.size:
            # Columns of one fit with the same passive set share one factorisation: large
            # groups are solved that way, the rest by one stacked solve per chunk.
            keys = gidx[cols] * (1 << k) + F[cols] @ weights
            _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
            big = counts[inverse.ravel()] >= GROUPED_MIN_COLUMNS
            if big.any():
                solve_grouped(cols[big], keys[big])
            cols = cols[~big]
        for a in range(0, cols.size, BPP_CHUNK):
            c = cols[a : a + BPP_CHUNK]
            Gc = Gs[gidx[c]]
            xc = _passive_solve(Gc, b[c], F[c])
            yc = np.einsum("tkl,tl->tk", Gc, xc) - b[c]
            x[c] = xc
            y[c] = np.where(F[c], 0.0, yc)

    def solve_grouped(cols: np.ndarray, keys: np.ndarray) -> None:
        # Columns of one fit with the same passive set share one factorisation.
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], order.size]
        for a, e in zip(starts, ends, strict=True):
            c = cols[order[a:e]]
            fit = gidx[c[0]]
            pas = np.flatnonzero(F[c[0]])
            G_fit = Gs[fit]
            xc = np.zeros((c.size, k))
            if pas.size:
                sub = G_fit[np.ix_(pas, pas)]
                sub = sub + 1e-12 * max(float(np.max(np.diag(sub))), 1e-300) * np.eye(pas.size)
                xc[:, pas] = np.linalg.solve(sub, b[c][:, pas].T).T
            yc = xc @ G_fit.T - b[c]
            yc[:, pas] = 0.0
            x[c] = xc
            y[c] = yc

    solve(np.flatnonzero(F.any(axis=1)))
    alpha = np.full(R * n, 3, dtype=np.int64)
    best = np.full(R * n, k + 1, dtype=np.int64)
    rounds = 5 * k + 10 if max_rounds is None else max_rounds
    for _ in range(rounds):
        infeasible = (F & (x < -tol)) | (~F & alive & (y < -tol))
        count = infeasible.sum(axis=1)
        todo = count > 0
        if not todo.any():
            break
        better = todo & (count < best)
        best = np.where(better, count, best)
        alpha = np.where(better, 3, alpha)
        worse = todo & ~better
        spend = worse & (alpha > 0)
        alpha = np.where(spend, alpha - 1, alpha)
        block = better | spend
        F[block] ^= infeasible[block]
        backup = np.flatnonzero(worse & ~spend)
        if backup.size:
            last = k - 1 - np.argmax(infeasible[backup, ::-1], axis=1)
            F[backup, last] ^= True
        solve(np.flatnonzero(todo))
    out = np.maximum(x, 0).reshape(R, n, k).transpose(0, 2, 1)
    return np.ascontiguousarray(out).astype(out_dtype, copy=False)
