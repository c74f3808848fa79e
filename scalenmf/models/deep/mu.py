"""Multiplicative updates and costs in torch: the reference the unrolled layers are tested
against, the W refit of unsupervised DNMF, and the MU baselines of the evaluation.

Shapes follow the package convention: ``V`` is ``(m, n)`` (features × samples), ``W`` is
``(m, k)``, ``H`` is ``(k, n)``. Every function is pure: tensors in, tensors out.

The regularized objectives (per sample, averaged over the ``n`` columns) are

.. math::

    J_F(W, H) = \\frac{1}{n}\\Big[\\tfrac12\\lVert V - WH\\rVert_F^2
                + \\lambda_1 \\textstyle\\sum H + \\tfrac{\\lambda_2}{2}\\lVert H\\rVert_F^2\\Big]

    J_{KL}(W, H) = \\frac{1}{n}\\Big[\\textstyle\\sum V\\log\\frac{V}{WH} - V + WH
                + \\lambda_1 \\textstyle\\sum H + \\tfrac{\\lambda_2}{2}\\lVert H\\rVert_F^2\\Big]
"""

from __future__ import annotations

import numpy as np
import torch

from scalenmf.kernels import EPS as KERNEL_EPS
from scalenmf.kernels import nnls_bpp, nnls_cd

#: The package's one guard value (see :data:`scalenmf.kernels.mu.EPS` for why 1e-10).
EPS = KERNEL_EPS


def frobenius_cost(
    V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, lambda1: float = 0.0, lambda2: float = 0.0
) -> torch.Tensor:
    """Regularized Frobenius objective ``J_F`` averaged over columns.

    Parameters
    ----------
    V : Tensor, shape (m, n)
    W : Tensor, shape (m, k)
    H : Tensor, shape (k, n)
    lambda1, lambda2 : float
        L1 and L2 penalties on ``H``.

    Returns
    -------
    Tensor, shape ()
    """
    n = V.shape[1]
    R = V - W @ H
    return (0.5 * (R * R).sum() + lambda1 * H.sum() + 0.5 * lambda2 * (H * H).sum()) / n


def kl_divergence(V: torch.Tensor, WH: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Generalized Kullback-Leibler divergence ``Σ V log(V / WH) − V + WH`` (summed).

    Zeros of ``V`` contribute ``WH`` only (``0 log 0 = 0``).

    Parameters
    ----------
    V, WH : Tensor, shape (m, n)

    Returns
    -------
    Tensor, shape ()
    """
    WH = WH + eps
    logterm = torch.where(V > 0, V * torch.log(torch.clamp(V, min=eps) / WH), torch.zeros_like(V))
    return (logterm - V + WH).sum()


def kl_cost(
    V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, lambda1: float = 0.0, lambda2: float = 0.0
) -> torch.Tensor:
    """Regularized KL objective ``J_KL`` averaged over columns.

    Parameters
    ----------
    V : Tensor, shape (m, n)
    W : Tensor, shape (m, k)
    H : Tensor, shape (k, n)
    lambda1, lambda2 : float

    Returns
    -------
    Tensor, shape ()
    """
    n = V.shape[1]
    reg = lambda1 * H.sum() + 0.5 * lambda2 * (H * H).sum()
    return (kl_divergence(V, W @ H) + reg) / n


def mu_step_h_frobenius(
    V: torch.Tensor,
    W: torch.Tensor,
    H: torch.Tensor,
    lambda1: float = 0.0,
    lambda2: float = 0.0,
    eps: float = EPS,
) -> torch.Tensor:
    """One regularized Frobenius MU step for ``H`` with ``W`` fixed.

    ``H ← H ⊙ WᵀV / (WᵀW H + λ1 + λ2 H + ε)``.

    Parameters
    ----------
    V : Tensor, shape (m, n)
    W : Tensor, shape (m, k)
    H : Tensor, shape (k, n)

    Returns
    -------
    Tensor, shape (k, n)
    """
    return H * (W.T @ V) / ((W.T @ W) @ H + lambda1 + lambda2 * H + eps)


def mu_step_h_kl(
    V: torch.Tensor,
    W: torch.Tensor,
    H: torch.Tensor,
    lambda1: float = 0.0,
    lambda2: float = 0.0,
    eps: float = EPS,
) -> torch.Tensor:
    """One regularized KL MU step for ``H`` with ``W`` fixed.

    ``H ← H ⊙ Wᵀ(V ⊘ (WH + ε)) / (Wᵀ1 + λ1 + λ2 H + ε)``.

    Parameters
    ----------
    V : Tensor, shape (m, n)
    W : Tensor, shape (m, k)
    H : Tensor, shape (k, n)

    Returns
    -------
    Tensor, shape (k, n)
    """
    ratio = V / (W @ H + eps)
    return H * (W.T @ ratio) / (W.sum(dim=0)[:, None] + lambda1 + lambda2 * H + eps)


def mu_step_w_frobenius(
    V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """One (unregularized) Frobenius MU step for ``W`` with ``H`` fixed.

    ``W ← W ⊙ VHᵀ / (W HHᵀ + ε)``.

    Returns
    -------
    Tensor, shape (m, k)
    """
    return W * (V @ H.T) / (W @ (H @ H.T) + eps)


def mu_step_w_kl(
    V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """One (unregularized) KL MU step for ``W`` with ``H`` fixed.

    ``W ← W ⊙ (V ⊘ (WH + ε))Hᵀ / (1Hᵀ + ε)``.

    Returns
    -------
    Tensor, shape (m, k)
    """
    num, den = kl_w_statistics(V, W, H, eps)
    return kl_w_update(W, num, den, eps)


def kl_w_statistics(
    V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block partial sums of the KL W-update: numerator ``(V ⊘ WH)Hᵀ`` and ``1Hᵀ``.

    Summing these over column blocks gives the full-data KL MU step for ``W``.

    Returns
    -------
    num : Tensor, shape (m, k)
    den : Tensor, shape (k,)
    """
    ratio = V / (W @ H + eps)
    return ratio @ H.T, H.sum(dim=1)


def kl_w_update(
    W: torch.Tensor, num: torch.Tensor, den: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Apply a KL MU step for ``W`` from summed statistics (see :func:`kl_w_statistics`).

    Returns
    -------
    Tensor, shape (m, k)
    """
    return W * num / (den[None, :] + eps)


def nnls_gram(
    G: torch.Tensor,
    B: torch.Tensor,
    X0: torch.Tensor | None = None,
    *,
    max_sweeps: int = 300,
    tol: float = 1e-14,
) -> torch.Tensor:
    """Solve many NNLS problems from Gram statistics (the package's one NNLS kernel).

    Minimizes ``½ xᵀ G x − bᵀ x`` subject to ``x ≥ 0`` for every column ``b`` of ``B``. With
    ``G = HHᵀ`` and ``B = HVᵀ`` the columns of the solution are the rows of the NNLS ``W``
    (``min_W ‖V − WH‖²``); with ``G = WᵀW + λ2 I`` and ``B = WᵀV − λ1`` they are the
    regularized NNLS ``H``. Only ``k × k`` and ``k × p`` statistics are needed, never ``V``.
    The problems are tiny (k × p), so they are solved in numpy on the CPU in float64:
    numpy's per-operation cost is a fraction of torch's, and the W refit runs after every
    training step on every rank.

    Without a warm start the exact block-principal-pivoting solver
    (:func:`scalenmf.kernels.nnls_bpp`) does the work. With a warm start ``X0`` (the W refit
    of every training step, whose solution moves little between steps) coordinate descent
    (:func:`scalenmf.kernels.nnls_cd`) runs from ``X0`` until every column meets the KKT
    conditions to ``tol`` (relative) or ``max_sweeps`` sweeps are spent.

    Parameters
    ----------
    G : Tensor, shape (k, k)
        Symmetric positive semi-definite.
    B : Tensor, shape (k, p)
    X0 : Tensor, shape (k, p), optional
        Warm start.
    max_sweeps : int
        Bound on coordinate-descent sweeps.
    tol : float

    Returns
    -------
    Tensor, shape (k, p)
        Non-negative solution, dtype and device of ``B``.
    """
    G64 = G.detach().to("cpu", torch.float64).numpy()
    B64 = B.detach().to("cpu", torch.float64).numpy()
    if X0 is None:
        X, _ = nnls_bpp(G64, B64)
    else:
        start = X0.detach().to("cpu", torch.float64).numpy()
        X, _ = nnls_cd(G64, B64, np.maximum(start, 0.0), max_sweeps=max_sweeps, tol=tol)
    return torch.from_numpy(X).to(B.device, B.dtype)


def nnls_w_from_gram(
    HHt: torch.Tensor, VHt: torch.Tensor, W0: torch.Tensor | None = None, max_sweeps: int = 300
) -> torch.Tensor:
    """NNLS refit of ``W`` from ``HHᵀ`` (k×k) and ``VHᵀ`` (m×k).

    Parameters
    ----------
    HHt : Tensor, shape (k, k)
    VHt : Tensor, shape (m, k)
    W0 : Tensor, shape (m, k), optional
        Warm start (the previous basis).
    max_sweeps : int
        Bound on coordinate-descent sweeps when warm-started.

    Returns
    -------
    Tensor, shape (m, k)
        ``argmin_{W ≥ 0} ‖V − WH‖²``, row by row.
    """
    X0 = None if W0 is None else W0.T
    return nnls_gram(HHt, VHt.T, X0, max_sweeps=max_sweeps).T.contiguous()


def nnls_h(
    V: torch.Tensor, W: torch.Tensor, lambda1: float = 0.0, lambda2: float = 0.0
) -> torch.Tensor:
    """Exact (regularized) NNLS for ``H`` with ``W`` fixed.

    Minimizes ``½‖v − Wh‖² + λ1 Σh + λ2/2 ‖h‖²`` over ``h ≥ 0`` for every column.

    Parameters
    ----------
    V : Tensor, shape (m, n)
    W : Tensor, shape (m, k)

    Returns
    -------
    Tensor, shape (k, n)
    """
    k = W.shape[1]
    G = W.T @ W + lambda2 * torch.eye(k, dtype=W.dtype, device=W.device)
    B = W.T @ V - lambda1
    return nnls_gram(G, B)
