"""Gram statistics of masked fits.

A fit with missing entries solves column j with ``G_j = Wᵀ diag(o_j) W`` (``o_j`` its
observed pattern): the unmasked Gram less the missing rows' outer products, so the cost
follows the number of missing entries. The solvers take such Grams, (R, n, k, k), as they
are.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def outer_rows(A: np.ndarray) -> np.ndarray:
    """Row-wise outer products ``a_i a_iᵀ`` flattened: (p, k) → (p, k·k), float64."""
    A64 = np.asarray(A, dtype=np.float64)
    return (A64[:, :, None] * A64[:, None, :]).reshape(A64.shape[0], -1)


def removed_grams(missing: sp.spmatrix, A: np.ndarray) -> np.ndarray:
    """``Σ_{i missing in column j} a_i a_iᵀ`` for every column j of the pattern.

    Parameters
    ----------
    missing : sparse matrix, shape (p, n)
        Every stored entry marks one missing entry (for the W step: the block's pattern
        transposed).
    A : ndarray, shape (p, k)
        The factor whose rows meet the pattern (W for the H step, Hᵀ for the W step).

    Returns
    -------
    ndarray, shape (n, k, k), float64
        Subtract it from the unmasked Gram for the observed entries' Grams.
    """
    ones = sp.csc_matrix(missing, dtype=np.float64, copy=True)
    ones.data[:] = 1.0
    return np.asarray(ones.T @ outer_rows(A)).reshape(-1, A.shape[1], A.shape[1])


def quad_form(G: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Σ_j x_jᵀ G_j x_j`` per fit (the ``Σ (WH)²`` of observed entries), float64, (R,)."""
    X64 = np.asarray(X, dtype=np.float64)
    if G.ndim == 3:
        return np.einsum("rkn,rkl,rln->r", X64, G, X64)
    return np.einsum("rkn,rnkl,rln->r", X64, G, X64)
