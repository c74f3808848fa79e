"""Gram statistics of masked fits: the per-column (H step) and per-row (W step) Grams.

A fit with missing entries needs ``G_j = Wᵀ diag(o_j) W`` for every column j (``o_j`` its
observed pattern), obtained from the unmasked Gram minus the missing rows' outer products,
so the cost follows the number of missing entries; and the quadratic form of the observed
entries' ``Σ (WH)²``. The solvers (:mod:`.nnls`, :mod:`.mu`) take such Grams of shape
``(R, n, k, k)`` directly.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scalenmf.kernels.mu import wh_at

__all__ = ["outer_rows", "pattern_grams", "quad_form", "wh_at"]


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


def quad_form(G: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Σ_j x_jᵀ G_j x_j`` per fit (the ``Σ (WH)²`` of observed entries), float64, (R,)."""
    X64 = np.asarray(X, dtype=np.float64)
    if G.ndim == 3:
        return np.einsum("rkn,rkl,rln->r", X64, G, X64)
    return np.einsum("rkn,rnkl,rln->r", X64, G, X64)


