"""Multiplicative updates (Lee & Seung) for the Frobenius and Kullback–Leibler losses.

Each update multiplies the current factor by a ratio of non-negative terms, so factors stay
non-negative and the objective never rises. L1 and L2 penalties enter the denominators.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block

#: Guards every division; small enough not to bias counts, large enough for float32.
EPS = 1e-10


def mu_frobenius(
    G: np.ndarray, B: np.ndarray, X: np.ndarray, *, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """One multiplicative step for ``½‖V − W X‖² + l1·ΣX + ½ l2·‖X‖²`` in Gram form.

    ``X ← X ⊙ B / (G X + l1 + l2·X)`` with ``G = WᵀW`` and ``B = WᵀV``.

    Parameters
    ----------
    G : ndarray, shape (k, k)
    B : ndarray, shape (k, n)
    X : ndarray, shape (k, n)
        Current factor (not modified).

    Returns
    -------
    ndarray, shape (k, n)
    """
    dtype = X.dtype
    denom = np.asarray(G, dtype=dtype) @ X
    if l2:
        denom += dtype.type(l2) * X
    denom += dtype.type(l1 + EPS)
    return X * np.maximum(np.asarray(B, dtype=dtype), 0) / denom


def _wh_at(W: np.ndarray, H: np.ndarray, X: sp.csc_matrix) -> np.ndarray:
    """Values of ``W·H`` at the non-zeros of the CSC matrix X, without forming W·H."""
    rows = X.indices
    cols = np.repeat(np.arange(X.shape[1]), np.diff(X.indptr))
    out = np.empty(rows.size, dtype=np.result_type(W.dtype, H.dtype))
    step = 1 << 18  # bound the (nnz × k) temporaries
    Ht = H.T
    for start in range(0, rows.size, step):
        stop = min(start + step, rows.size)
        out[start:stop] = np.einsum("ij,ij->i", W[rows[start:stop]], Ht[cols[start:stop]])
    return out


def _ratio(X: Block, W: np.ndarray, H: np.ndarray) -> tuple[Block, np.ndarray | None]:
    """``X ⊘ (W H)``: dense, or sparse with the pattern of X (KL needs only its non-zeros)."""
    if sp.issparse(X):
        X = sp.csc_matrix(X)
        wh = _wh_at(W, H, X)
        ratio = sp.csc_matrix((X.data / np.maximum(wh, EPS), X.indices, X.indptr), shape=X.shape)
        return ratio, wh
    wh = W @ H
    return X / np.maximum(wh, EPS), wh


def mu_kl_h(
    W: np.ndarray, X: Block, H: np.ndarray, *, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """One multiplicative step on H for the generalized KL divergence ``D(X ‖ W H)``.

    ``H ← H ⊙ Wᵀ(X ⊘ W H) / (Wᵀ1 + l1 + l2·H)``; on sparse X only the non-zeros are visited.

    Parameters
    ----------
    W : ndarray, shape (m, k)
    X : ndarray or sparse, shape (m, n)
    H : ndarray, shape (k, n)
        Not modified.

    Returns
    -------
    ndarray, shape (k, n)
    """
    ratio, _ = _ratio(X, W, H)
    if sp.issparse(ratio):
        numer = np.asarray((ratio.T @ W).T)
    else:
        numer = W.T @ ratio
    denom = W.sum(axis=0)[:, None] + (l1 + EPS)
    if l2:
        denom = denom + l2 * H
    return (H * numer / denom).astype(H.dtype, copy=False)


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
    numer = np.asarray(ratio @ H.T, dtype=np.float64)
    h_sum = H.sum(axis=1, dtype=np.float64)
    if sp.issparse(X):
        x = np.asarray(sp.csc_matrix(X).data, dtype=np.float64)
        # Σ WH over all entries = (column sums of W)·(row sums of H): no dense product.
        total_wh = float(W.sum(axis=0, dtype=np.float64) @ h_sum)
        wh64 = np.asarray(wh, dtype=np.float64)
        div = _x_log_ratio(x, wh64) - float(x.sum()) + total_wh
        x_wh = float(x @ wh64)
    else:
        x = np.asarray(X, dtype=np.float64).ravel()
        whf = np.asarray(wh, dtype=np.float64).ravel()
        div = _x_log_ratio(x, whf) - float(x.sum()) + float(whf.sum())
        x_wh = float(x @ whf)
    return numer, h_sum, div, x_wh


def _x_log_ratio(x: np.ndarray, wh: np.ndarray) -> float:
    """``Σ x·log(x / wh)`` with ``0·log 0 = 0``."""
    nz = x > 0
    xs = x[nz]
    return float(xs @ np.log(xs / np.maximum(wh[nz], EPS)))


def kl_divergence(X: Block, W: np.ndarray, H: np.ndarray) -> float:
    """Generalized KL divergence ``Σ x log(x / wh) − x + wh`` of one block (float64)."""
    return kl_block(W, X, H)[2]
