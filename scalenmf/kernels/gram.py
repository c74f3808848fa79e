"""The four primitives every iteration reduces to: Gram, right-hand side, X·Hᵀ and ‖X‖²."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block


def gram(W: np.ndarray) -> np.ndarray:
    """Gram matrix ``WᵀW``.

    Parameters
    ----------
    W : ndarray, shape (m, k)

    Returns
    -------
    ndarray, shape (k, k), float64 (so that loss bookkeeping keeps its precision)
    """
    W64 = np.asarray(W, dtype=np.float64)
    return W64.T @ W64


def rhs(W: np.ndarray, X: Block) -> np.ndarray:
    """Right-hand side ``WᵀX`` of the H sub-problem: the only touch of X for H.

    Parameters
    ----------
    W : ndarray, shape (m, k)
    X : ndarray or scipy.sparse matrix, shape (m, n)

    Returns
    -------
    ndarray, shape (k, n), in the dtype of W
    """
    if sp.issparse(X):
        # (Xᵀ W)ᵀ: a CSC block transposes to CSR for free, so this is one sparse-dense product.
        return np.ascontiguousarray((X.T @ W).T)
    if X.shape[1] == 1:
        # numpy multiplies by a strided column (a view into a wider array) with other loops
        # than by a contiguous one; copying the m values makes the result layout-independent.
        X = np.ascontiguousarray(X)
    return W.T @ X


#: Entries per float64 product of a float32 dense block (bounds its float64 copy to 32 MB).
RHS_CHUNK = 1 << 22


def rhs64(W: np.ndarray, X: Block) -> np.ndarray:
    """``WᵀX`` in float64 whatever the factors' dtype, float32 blocks in column chunks.

    The Gram trick subtracts numbers of the size of ‖X‖²: a float32 ``Σ x·wh`` would floor
    the reported error near 1e-4 and let ``tol`` fire on round-off.
    """
    W64 = np.ascontiguousarray(W, dtype=np.float64)
    step = max(1, RHS_CHUNK // max(1, X.shape[0]))
    if sp.issparse(X) or X.dtype == np.float64 or X.shape[1] <= step:
        return rhs(W64, X)
    out = np.empty((W64.shape[1], X.shape[1]))
    for a in range(0, X.shape[1], step):
        out[:, a : a + step] = rhs(W64, X[:, a : a + step])
    return out


def x_ht(X: Block, H: np.ndarray) -> np.ndarray:
    """``X·Hᵀ``: the block's share of the W sub-problem's right-hand side.

    Parameters
    ----------
    X : ndarray or scipy.sparse matrix, shape (m, n)
    H : ndarray, shape (k, n)

    Returns
    -------
    ndarray, shape (m, k), float64
    """
    H64 = np.asarray(H, dtype=np.float64)
    if sp.issparse(X) or X.dtype == np.float64:
        return np.asarray(X @ H64.T, dtype=np.float64)
    # The sum runs over the block's n columns: accumulate it in float64 also for float32
    # blocks, converting X a column chunk at a time to bound the temporary.
    out = np.zeros((X.shape[0], H64.shape[0]))
    step = max(1, (1 << 23) // max(1, X.shape[0]))
    for a in range(0, X.shape[1], step):
        out += np.asarray(X[:, a : a + step], dtype=np.float64) @ H64[:, a : a + step].T
    return out


def sq_norm(X: Block) -> float:
    """Squared Frobenius norm ``‖X‖²`` (float64 accumulation)."""
    if sp.issparse(X):
        data = np.asarray(X.data, dtype=np.float64)
        return float(data @ data)
    flat = np.asarray(X, dtype=np.float64).ravel()
    return float(flat @ flat)
