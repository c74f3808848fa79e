"""The exact fixed-basis solve: H for a whole block given W (projection, transform,
consensus refits, the DNMF baselines).

With W fixed the columns are independent problems, so a block is solved to the end while
it is in memory, vectorised over its columns:

- Frobenius, from the Gram statistics ``G = WᵀW`` and ``B = WᵀX``: exact block pivoting
  (``"bpp"``), or coordinate descent (``"cd"`` from the clipped unconstrained solution,
  ``"hals"`` from zero) to the KKT tolerance, columns that miss it finished exactly, or
  multiplicative updates to convergence (``"mu"``);
- KL, from W and X: multiplicative updates to convergence (no exact method exists).

Each returns ``(H, NNLSInfo)``; ``info.unconverged`` counts the columns that did not meet
their test.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.kernels.mu import mu_frobenius, mu_kl_h, mu_to_convergence
from scalenmf.kernels.nnls import NNLSInfo, nnls_bpp, nnls_cd, unconstrained_start
from scalenmf.kernels.penalty import float_dtype

SOLVERS = ("bpp", "cd", "hals", "mu")


def solve_fixed_basis(
    G: np.ndarray,
    B: np.ndarray,
    *,
    solver: str = "bpp",
    H0: np.ndarray | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> tuple[np.ndarray, NNLSInfo]:
    """``argmin_{H ≥ 0} ½‖X − W H‖² + l1·ΣH + ½ l2‖H‖²`` for a block, from ``G`` and ``B``.

    Parameters
    ----------
    G : ndarray, shape (k, k)
        ``WᵀW`` (also (R, k, k) or per column (R, n, k, k), see :mod:`.penalty`).
    B : ndarray, shape (k, n)
        ``WᵀX``; its dtype is the result's.
    solver : {"bpp", "cd", "hals", "mu"}
    H0 : ndarray, shape of B, optional
        Start for ``cd`` / ``hals`` / ``mu`` (default: clipped unconstrained solution,
        zeros, ones); ``bpp`` uses its passive set.
    max_iter, tol : int, float
        Sweep / step budget and tolerance (KKT for ``cd`` / ``hals``; the relative step
        for ``mu``).

    Returns
    -------
    H : ndarray, shape of B
    info : NNLSInfo
    """
    if solver == "bpp":
        return nnls_bpp(G, B, H0, l1=l1, l2=l2)
    if solver in ("cd", "hals"):
        if H0 is None:
            H0 = unconstrained_start(G, B, l1=l1, l2=l2) if solver == "cd" else np.zeros(B.shape)
        return nnls_cd(G, B, H0, l1=l1, l2=l2, max_sweeps=max_iter, tol=tol, finish=True)
    if solver != "mu":
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    dtype = float_dtype(B)
    start = np.ones(B.shape, dtype=dtype) if H0 is None else np.asarray(H0, dtype=dtype)

    def make_step(cols: np.ndarray | None):
        Bc = B if cols is None else B[..., cols]
        Gc = G if cols is None or G.ndim < 4 else G[:, cols]
        return lambda H: mu_frobenius(Gc, Bc, H, l1=l1, l2=l2)

    return mu_to_convergence(make_step, start, max_iter=max_iter, tol=tol)


def solve_fixed_basis_kl(
    W: np.ndarray,
    X: Block,
    H0: np.ndarray | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
    missing: sp.spmatrix | None = None,
) -> tuple[np.ndarray, NNLSInfo]:
    """``argmin_{H ≥ 0} D(X ‖ W H) + l1·ΣH + ½ l2‖H‖²`` by multiplicative updates.

    Parameters
    ----------
    W : ndarray, shape (m, k)
    X : ndarray or sparse, shape (m, n)
        Sparse X is only visited at its non-zeros.
    H0 : ndarray, shape (k, n), optional
        Start (default: every entry ``ΣX / (n·ΣW)``, the scale of the data).
    missing : sparse matrix, shape (m, n), optional
        Entries not observed (X holds 0 there), see :func:`.mu.mu_kl_h`.

    Returns
    -------
    H : ndarray, shape (k, n), dtype of W
    info : NNLSInfo
        ``unconverged``: columns still moving after ``max_iter`` steps.
    """
    k, n = W.shape[1], X.shape[1]
    if H0 is None:
        fill = float(X.sum()) / max(1, n) / max(float(W.sum()), 1e-300)
        H0 = np.full((k, n), max(fill, 1e-6), dtype=W.dtype)
    Xc = sp.csc_matrix(X) if sp.issparse(X) else X
    Mc = None if missing is None else sp.csc_matrix(missing)

    def make_step(cols: np.ndarray | None):
        Xs = Xc if cols is None else Xc[:, cols]
        Ms = Mc if cols is None or Mc is None else Mc[:, cols]
        return lambda H: mu_kl_h(W, Xs, H, l1=l1, l2=l2, missing=Ms)

    return mu_to_convergence(make_step, H0, max_iter=max_iter, tol=tol)
