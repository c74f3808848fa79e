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

from scalenmf.kernels.mu import mu_frobenius, wh_at
from scalenmf.kernels.nnls import nnls_bpp, nnls_cd

__all__ = [
    "bpp_nnls_batched",
    "cd_nnls_batched",
    "mu_frobenius_batched",
    "outer_rows",
    "pattern_grams",
    "quad_form",
    "wh_at",
]


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
    """Coordinate-descent NNLS for a batch of fits (:func:`~.nnls.nnls_cd`).

    ``G`` (R, k, k) or (R, n, k, k), ``B`` and ``X0`` (R, k, n) (zeros when omitted);
    columns stop on the KKT test to ``tol`` (0: ``max_sweeps`` HALS sweeps). Every sweep
    lowers every fit's objective. Returns ``X`` (R, k, n) in the dtype of B.
    """
    return nnls_cd(G, B, X0, l1=l1, l2=l2, max_sweeps=max_sweeps, tol=tol)[0]


def mu_frobenius_batched(
    G: np.ndarray, B: np.ndarray, X: np.ndarray, *, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """One multiplicative step for a batch of fits (:func:`~.mu.mu_frobenius`)."""
    return mu_frobenius(G, B, X, l1=l1, l2=l2)


def quad_form(G: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Σ_j x_jᵀ G_j x_j`` per fit (the ``Σ (WH)²`` of observed entries), float64, (R,)."""
    X64 = np.asarray(X, dtype=np.float64)
    if G.ndim == 3:
        return np.einsum("rkn,rkl,rln->r", X64, G, X64)
    return np.einsum("rkn,rnkl,rln->r", X64, G, X64)


def bpp_nnls_batched(
    G: np.ndarray,
    B: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_rounds: int | None = None,
) -> np.ndarray:
    """Exact NNLS by block principal pivoting for a batch of fits (:func:`~.nnls.nnls_bpp`).

    ``G`` (R, k, k) or (R, n, k, k), ``B`` and ``X0`` (R, k, n): the passive set of ``X0``
    is the warm start. Returns ``X`` (R, k, n) in the dtype of B.
    """
    return nnls_bpp(G, B, X0, l1=l1, l2=l2, max_rounds=max_rounds)[0]
