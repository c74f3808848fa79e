"""Column-wise NNLS to convergence for many independent columns (projection onto a basis).

Thin wrappers, kept for their callers, over the one coordinate descent and the one block
pivoting of :mod:`scalenmf.kernels.nnls`: both start at the clipped unconstrained
solution (final for every column without an active bound) and judge every column on its
own, so the work follows the hard columns.
"""

from __future__ import annotations

import numpy as np

from scalenmf.kernels.nnls import GROUP_MIN, bpp_nnls, nnls_cd, unconstrained_start

__all__ = ["GROUP_MIN", "bpp_columns", "nnls_columns"]


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

    Coordinate descent from ``X0`` (default: the clipped unconstrained solution); a column
    stops when its projected gradient is at most ``tol·max|b|`` (KKT), and one that does
    not within ``max_sweeps`` is finished exactly by block pivoting. ``G`` (k, k), ``B``
    and ``X0`` (k, n); returns ``X`` (k, n) in the dtype of B.
    """
    start = unconstrained_start(G, B, l1=l1, l2=l2) if X0 is None else X0
    X, _ = nnls_cd(G, B, start, l1=l1, l2=l2, max_sweeps=max_sweeps, tol=tol, finish=True)
    return X


#: Exact column-wise NNLS by block principal pivoting: the same function as ``bpp_nnls``.
bpp_columns = bpp_nnls
