"""Multiplicative updates (Lee & Seung) for the Frobenius and Kullback–Leibler losses.

Each step multiplies the factor by a ratio of non-negative terms (penalties in the
denominator): factors stay non-negative and the objective never rises. Frobenius steps take
the batch shapes of :mod:`.penalty`; KL steps visit a sparse X at its non-zeros only. Every
statistic and loss accumulates in float64; the factors keep their dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.kernels.gram import x_ht
from scalenmf.kernels.nnls import NNLSInfo

#: The one guard of every division in the updates (denominators and ``W·H``): it keeps
#: 0/0 away, is representable in float32 with a reciprocal far from overflow, and is below
#: one ulp of any float32 denominator above ~1e-3. float32's epsilon (1.19e-7) would bias
#: data of small scale such as proportions.
EPS = 1e-10


def mu_frobenius(
    G: np.ndarray, B: np.ndarray, X: np.ndarray, *, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """One step ``X ← X ⊙ B / (G X + l1 + l2·X)`` for ``½‖V − W X‖² + l1·ΣX + ½ l2·‖X‖²``
    (``G = WᵀW``, ``B = WᵀV``).

    Parameters
    ----------
    G : ndarray, shape (k, k), (R, k, k) or (R, n, k, k)
    B : ndarray, shape (k, n) or (R, k, n)
    X : ndarray, shape of B
        Current factor (not modified).

    Returns
    -------
    ndarray, shape of X, dtype of X
    """
    dtype = X.dtype
    Gd = np.asarray(G, dtype=dtype)
    denom = np.einsum("rnkl,rln->rkn", Gd, X) if Gd.ndim == 4 else Gd @ X
    if l2:
        denom += dtype.type(l2) * X
    denom += dtype.type(l1 + EPS)
    return X * np.maximum(np.asarray(B, dtype=dtype), 0) / denom


def wh_at(W: np.ndarray, H: np.ndarray, pattern: sp.spmatrix) -> np.ndarray:
    """Values of ``W H`` at the stored entries of a CSC pattern, in storage order, float64.

    Parameters
    ----------
    W : ndarray, shape (m, k)
    H : ndarray, shape (k, n)
    pattern : sparse matrix, shape (m, n)

    Returns
    -------
    ndarray, shape (nnz,)
        Costs ``nnz·k`` with bounded temporaries.
    """
    csc = sp.csc_matrix(pattern)
    rows = csc.indices
    cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
    out = np.empty(rows.size, dtype=np.float64)
    W64 = np.asarray(W, dtype=np.float64)
    Ht = np.asarray(H, dtype=np.float64).T
    step = 1 << 18
    for a in range(0, rows.size, step):
        b = min(a + step, rows.size)
        out[a:b] = np.einsum("ij,ij->i", W64[rows[a:b]], Ht[cols[a:b]])
    return out


def _ratio(X: Block, W: np.ndarray, H: np.ndarray) -> tuple[Block, np.ndarray]:
    """``X ⊘ (W H)`` (the pattern of a sparse X, the factors' dtype) and ``W H`` (float64
    at a sparse X's non-zeros, dense otherwise)."""
    dtype = np.result_type(W.dtype, H.dtype)
    if sp.issparse(X):
        X = sp.csc_matrix(X)
        wh = wh_at(W, H, X)
        data = (X.data / np.maximum(wh, EPS)).astype(dtype, copy=False)
        return sp.csc_matrix((data, X.indices, X.indptr), shape=X.shape), wh
    wh = W @ H
    return (X / np.maximum(wh, EPS)).astype(dtype, copy=False), wh


def _observed_sums(W: np.ndarray, missing: sp.spmatrix | None) -> np.ndarray:
    """``Σ_{i observed in j} w_i`` per column: ``Wᵀ·1`` less the missing rows, (k, n) or (k, 1)."""
    total = W.sum(axis=0, dtype=np.float64)[:, None]
    if missing is None or missing.nnz == 0:
        return total
    return total - np.asarray(missing.T @ W.astype(np.float64)).T


def mu_kl_h(
    W: np.ndarray,
    X: Block,
    H: np.ndarray,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    missing: sp.spmatrix | None = None,
) -> np.ndarray:
    """One step ``H ← H ⊙ Wᵀ(X ⊘ W H) / (Wᵀo + l1 + l2·H)`` for ``D(X ‖ W H)``, o the
    observed pattern of each column (all ones without ``missing``).

    Parameters
    ----------
    W : ndarray, shape (m, k)
    X : ndarray or sparse, shape (m, n)
        Missing entries must hold 0 (they then add nothing to the numerator).
    H : ndarray, shape (k, n)
        Not modified.
    missing : sparse matrix, shape (m, n), optional
        Entries not observed: their share of the denominator is removed.

    Returns
    -------
    ndarray, shape (k, n), dtype of H
    """
    ratio, _ = _ratio(X, W, H)
    numer = np.asarray((ratio.T @ W).T) if sp.issparse(ratio) else W.T @ ratio
    denom = _observed_sums(W, missing) + (l1 + EPS)
    if l2:
        denom = denom + l2 * H
    return (H * numer / np.maximum(denom, EPS)).astype(H.dtype, copy=False)


def kl_block(W: np.ndarray, X: Block, H: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The block's statistics for the KL W-update and loss, from one look at X.

    Parameters
    ----------
    W : ndarray, shape (m, k)
    X : ndarray or sparse, shape (m, n)
    H : ndarray, shape (k, n)

    Returns
    -------
    numer : ndarray, shape (m, k), float64
        ``(X ⊘ W H)·Hᵀ``, the W-update numerator share.
    h_sum : ndarray, shape (k,), float64
        Row sums of H, the W-update denominator share (``1·Hᵀ``).
    divergence : float
        ``D(X ‖ W H)`` on this block.
    x_dot_wh : float
        ``Σ x·(WH)``, so the Frobenius error can be reported from the same look at X.
    """
    ratio, wh = _ratio(X, W, H)
    numer = x_ht(ratio, H)  # float64 accumulation over the block's columns, bounded copies
    h_sum = H.sum(axis=1, dtype=np.float64)
    if sp.issparse(X):
        x = np.asarray(sp.csc_matrix(X).data, dtype=np.float64)
        # Σ WH over all entries = (column sums of W)·(row sums of H): no dense product.
        total_wh = float(W.sum(axis=0, dtype=np.float64) @ h_sum)
        whf = np.asarray(wh, dtype=np.float64)
    else:
        x = np.asarray(X, dtype=np.float64).ravel()
        whf = np.asarray(wh, dtype=np.float64).ravel()
        total_wh = float(whf.sum())
    values = np.asarray(ratio.data if sp.issparse(ratio) else ratio).ravel()
    if values.dtype == np.float64:  # the ratio at hand is x / max(wh, EPS) already
        log_term = _x_log(x, values)
    else:  # float32 factors: the books stay in float64
        log_term = _x_log(x, x / np.maximum(whf, EPS))
    div = log_term - float(x.sum()) + total_wh
    return numer, h_sum, div, float(x @ whf)


def kl_row_hessians(W: np.ndarray, X: Block, H: np.ndarray) -> np.ndarray:
    """The Hessian of the KL loss in each row of W, summed over a block's columns.

    Row ``i`` of ``D(X ‖ W H)`` is ``Σ_j w_iᵀh_j − x_ij log(w_iᵀh_j)``, whose Hessian in
    ``w_i`` is ``Σ_j x_ij / (w_iᵀh_j)² · h_j h_jᵀ``: only the entries with data count, so a
    sparse X is visited at its non-zeros. With the gradient ``Σ_j h_j − (X ⊘ WH) Hᵀ`` (the
    ``numer`` of :func:`kl_block`) it gives the second-order model of the loss in W that
    the online solver accumulates over batches.

    Parameters
    ----------
    W : ndarray, shape (m, k)
    X : ndarray or sparse, shape (m, n)
    H : ndarray, shape (k, n)

    Returns
    -------
    ndarray, shape (m, k, k), float64, symmetric in its last two axes
        Costs ``k`` products of X's pattern with H (``k²·nnz`` multiply-adds).
    """
    H64 = np.asarray(H, dtype=np.float64)
    k = H64.shape[0]
    out = np.empty((X.shape[0], k, k))
    if sp.issparse(X):
        csc = sp.csc_matrix(X)
        wh = np.maximum(wh_at(W, H64, csc), EPS)
        curv = np.asarray(csc.data, dtype=np.float64) / (wh * wh)
        cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
        for a in range(k):
            scaled = sp.csc_matrix((curv * H64[a, cols], csc.indices, csc.indptr), shape=csc.shape)
            out[:, a, :] = np.asarray(scaled @ H64.T)
        return out
    wh = np.maximum(np.asarray(W, dtype=np.float64) @ H64, EPS)
    curv = np.asarray(X, dtype=np.float64) / (wh * wh)
    for a in range(k):
        out[:, a, :] = (curv * H64[a]) @ H64.T
    return out


def _x_log(x: np.ndarray, ratio: np.ndarray) -> float:
    """``Σ x·log(ratio)`` with ``0·log 0 = 0`` (ratio = x / wh, 0 where x is): the zeros
    are lifted to the smallest normal number, whose finite log times x = 0 adds 0."""
    return float(x @ np.log(np.maximum(ratio, np.finfo(np.float64).tiny)))


def kl_divergence(X: Block, W: np.ndarray, H: np.ndarray) -> float:
    """Generalized KL divergence ``Σ x log(x / wh) − x + wh`` of one block (float64)."""
    return kl_block(W, X, H)[2]


# -- to convergence -----------------------------------------------------------------------


def mu_to_convergence(
    make_step: Callable[[np.ndarray | None], Callable[[np.ndarray], np.ndarray]],
    H: np.ndarray,
    *,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, NNLSInfo]:
    """Iterate a multiplicative step, every column until no entry moves more than ``tol``
    times its largest (a small MU step is KKT complementarity). Done columns leave.

    Parameters
    ----------
    make_step : callable
        ``make_step(cols)`` returns the step for the columns ``cols`` (None: all), a
        function ``H_cols → new H_cols``.
    H : ndarray, shape (k, n)
        Start (not modified).

    Returns
    -------
    H : ndarray, shape (k, n)
    info : NNLSInfo
        ``unconverged``: columns still moving after ``max_iter`` steps.
    """
    H = np.array(H, copy=True)
    n = H.shape[1]
    work = np.arange(n)
    Hw, step = H, make_step(None)
    left = np.ones(n, dtype=bool)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        new = step(Hw)
        change = np.abs(new - Hw).max(axis=0, initial=0.0)
        scale = np.maximum(new.max(axis=0, initial=0.0), 1e-300)
        Hw = new
        left = change > tol * scale
        n_left = int(left.sum())
        if n_left == 0:
            break
        if n_left < work.size // 2:
            H[:, work] = Hw
            work, Hw, left = work[left], Hw[:, left], left[left]
            step = make_step(work)
    H[:, work] = Hw
    return H, NNLSInfo(it, int(left.sum()))
