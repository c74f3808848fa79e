"""Projection of new samples onto a fixed basis, with per-sample quality control.

With W fixed, the H sub-problem of every sample is independent (seed 003, eq. 6)::

    min_{h ≥ 0}  ½‖x − W h‖² + l1·Σh + ½ l2·‖h‖²        (or the KL divergence D(x ‖ W h))

so a block is solved to convergence while it is in memory — one read of X for the whole
projection, where an alternating loop would read it once per pass. The same visit computes
the per-sample quality figures from the Gram statistics (no W·H is formed):

    cosine(x, Wh) = xᵀWh / (‖x‖·‖Wh‖),   relative error = ‖x − Wh‖ / ‖x‖

with ``xᵀWh = Σ_i (Wᵀx)_i h_i`` and ``‖Wh‖² = hᵀ(WᵀW)h``, and, when asked, bootstrap
intervals for h: the block's counts are resampled (Poisson, or multinomial with the
sample's total kept) and re-solved, warm-started at h.

For linked transfer learning (eq. 7) the basis is ``[W | U]`` with U learned by
``LinkedModel``; the same step then reports the figures of the whole model and of the
W part alone, and the share of every sample's reconstructed counts that U V carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.kernels import gram, kl_block, rhs, solve_fixed_basis, solve_fixed_basis_kl
from scalenmf.models.step import BlockState, block_matrix, check_block

#: Bootstrap draws are solved in column chunks so draws × k × chunk floats stay this small.
BOOTSTRAP_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ProjectionPlan:
    """What every block needs to project itself (pickles to workers).

    Attributes
    ----------
    W : ndarray, shape (m, K)
        The basis (for transfer learning ``[W | U]``).
    n_basis : int
        Leading columns that form the given basis W (``K`` for a plain projection).
    loss : {"frobenius", "kl"}
    solver : {"als", "hals", "mu"}
        Frobenius: ``als`` solves exactly (``nnls="bpp"``: block principal pivoting,
        vectorised over the columns; ``"cd"``: coordinate descent to ``tol``), ``hals`` /
        ``mu`` iterate their updates to ``tol``. KL: multiplicative updates.
    solve : bool
        Solve H here (plain projection), or take it from the state (after transfer).
    bootstrap : int
        Resamples for the intervals (0: none).
    resample : {"poisson", "multinomial"}
    ci : float
        Central probability of the intervals.
    """

    W: np.ndarray
    n_basis: int
    loss: str = "frobenius"
    solver: str = "als"
    nnls: str = "bpp"
    l1: float = 0.0
    l2: float = 0.0
    max_iter: int = 1000
    tol: float = 1e-10
    solve: bool = True
    run: int = 0
    bootstrap: int = 0
    resample: str = "poisson"
    ci: float = 0.9
    seed: int = 0


@dataclass
class ProjectedBlock:
    """Per-sample results of one block (they stay with the block until collected)."""

    index: int
    H: np.ndarray | None = None  # (K, n_j)
    cosine: np.ndarray | None = None  # (n_j,) of the whole model
    relative_error: np.ndarray | None = None
    basis_cosine: np.ndarray | None = None  # of the W part alone
    basis_relative_error: np.ndarray | None = None
    new_share: np.ndarray | None = None  # share of the reconstructed counts in U V
    H_lower: np.ndarray | None = None
    H_upper: np.ndarray | None = None


def solve_h(
    plan: ProjectionPlan,
    W: np.ndarray,
    G: np.ndarray,
    X: Block,
    H0: np.ndarray | None = None,
    B: np.ndarray | None = None,
) -> np.ndarray:
    """``argmin_{H ≥ 0}`` of the configured loss for one block, W fixed (to convergence)."""
    if plan.loss == "kl":
        start = np.full((W.shape[1], X.shape[1]), _kl_start(X, W), dtype=W.dtype)
        H, _ = solve_fixed_basis_kl(
            W,
            X,
            start if H0 is None else H0,
            l1=plan.l1,
            l2=plan.l2,
            max_iter=plan.max_iter,
            tol=plan.tol,
        )
        return H
    solver = plan.nnls if plan.solver == "als" else plan.solver
    H, _ = solve_fixed_basis(
        G,
        rhs(W, X) if B is None else B,
        solver=solver,
        H0=H0,
        l1=plan.l1,
        l2=plan.l2,
        max_iter=plan.max_iter,
        tol=plan.tol,
    )
    return H.astype(W.dtype, copy=False)


def _kl_start(X: Block, W: np.ndarray) -> float:
    total = float(X.sum())
    n = max(1, X.shape[1])
    return max(total / n / max(float(W.sum()), 1e-300), 1e-6)


def _column_sq_norms(X: Block) -> np.ndarray:
    if sp.issparse(X):
        Xc = sp.csc_matrix(X)
        sq = sp.csc_matrix((np.asarray(Xc.data, dtype=np.float64) ** 2, Xc.indices, Xc.indptr))
        return np.asarray(sq.sum(axis=0)).ravel()
    X64 = np.asarray(X, dtype=np.float64)
    return np.einsum("ij,ij->j", X64, X64)


def _quality(
    xx: np.ndarray, B: np.ndarray, G: np.ndarray, H: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: cosine(x, Wh), ‖x − Wh‖/‖x‖ and ‖x − Wh‖² (NaN for empty samples)."""
    H64 = H.astype(np.float64, copy=False)
    xwh = np.einsum("ij,ij->j", B.astype(np.float64, copy=False), H64)
    whwh = np.einsum("ij,ij->j", G @ H64, H64)
    sq = np.maximum(xx - 2.0 * xwh + whwh, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where((xx > 0) & (whwh > 0), xwh / np.sqrt(xx * whwh), 0.0)
        rel = np.where(xx > 0, np.sqrt(sq / xx), np.nan)
    cos = np.where(xx > 0, np.clip(cos, 0.0, 1.0), np.nan)
    return cos, rel, sq


def resample_block(X: Block, how: str, rng: np.random.Generator) -> Block:
    """A resampled copy of a block of counts (Poisson, or multinomial keeping each total)."""
    if how == "poisson":
        if sp.issparse(X):
            Xc = sp.csc_matrix(X)
            data = rng.poisson(np.asarray(Xc.data, dtype=np.float64)).astype(Xc.dtype)
            return sp.csc_matrix((data, Xc.indices, Xc.indptr), shape=Xc.shape)
        return rng.poisson(np.asarray(X, dtype=np.float64)).astype(X.dtype)
    dense = sp.csc_matrix(X).toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    totals = dense.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(totals > 0, dense / totals, 1.0 / dense.shape[0]).T
    draws = rng.multinomial(np.rint(totals).astype(np.int64), p).T.astype(dense.dtype)
    return sp.csc_matrix(draws) if sp.issparse(X) else draws


def _intervals(
    plan: ProjectionPlan, W: np.ndarray, G: np.ndarray, X: Block, H: np.ndarray, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap percentile intervals of H for one block, in column chunks."""
    rng = np.random.default_rng([int(plan.seed), int(index)])
    k, n = H.shape
    chunk = max(1, int(BOOTSTRAP_BYTES // (8 * max(1, plan.bootstrap) * k)))
    lower = np.empty_like(H)
    upper = np.empty_like(H)
    q = [(1.0 - plan.ci) / 2.0, (1.0 + plan.ci) / 2.0]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        Xc = X[:, start:stop]
        Hc = H[:, start:stop]
        draws = np.empty((plan.bootstrap, k, stop - start))
        for b in range(plan.bootstrap):
            draws[b] = solve_h(plan, W, G, resample_block(Xc, plan.resample, rng), H0=Hc)
        lo, hi = np.quantile(draws, q, axis=0)
        lower[:, start:stop] = lo
        upper[:, start:stop] = hi
    return lower, upper


def project_step(X: Block, state: Any, plan: ProjectionPlan):
    """Project one block (or take its H from transfer learning) and compute its QC.

    Parameters
    ----------
    X : ndarray or csc_matrix, shape (m, n_j)
    state : ProjectedBlock, BlockState or None
        ``BlockState`` after a transfer-learning loop (its H of ``plan.run`` is used).

    Returns
    -------
    new_state : ProjectedBlock
    partials : dict
        ``xx``, ``xsum``, ``sq_err`` (whole model), ``basis_sq_err`` (W part),
        ``recon_sum`` and ``new_sum`` (reconstructed counts, all and from U V), ``div``
        (KL), ``h_l1``, ``h_l2`` (penalty sums).
    """
    X = block_matrix(X)
    stats = check_block(X)
    W = plan.W
    G = gram(W)
    B = rhs(W, X)
    if plan.solve:
        H = solve_h(plan, W, G, X, B=B)
        index = state.index
    else:
        assert isinstance(state, BlockState) and len(state.H) == 1
        H, index = next(iter(state.H.values()))[plan.run], state.index
    xx = _column_sq_norms(X)
    cos, rel, sq = _quality(xx, B, G, H)
    out = ProjectedBlock(index=index, H=H, cosine=cos, relative_error=rel)
    kb = plan.n_basis
    basis_sq = sq
    H64 = H.astype(np.float64, copy=False)
    colsum_w = W.sum(axis=0, dtype=np.float64)
    recon = colsum_w @ H64
    new = colsum_w[kb:] @ H64[kb:]
    if kb < W.shape[1]:
        bcos, brel, basis_sq = _quality(xx, B[:kb], G[:kb, :kb], H[:kb])
        out.basis_cosine, out.basis_relative_error = bcos, brel
        with np.errstate(divide="ignore", invalid="ignore"):
            out.new_share = np.where(recon > 0, new / recon, 0.0)
    if plan.bootstrap:
        out.H_lower, out.H_upper = _intervals(plan, W, G, X, H, index)
    parts: dict[str, Any] = {
        "xx": stats["xx"],
        "xsum": stats["xsum"],
        "sq_err": float(sq.sum()),
        "basis_sq_err": float(basis_sq.sum()),
        "recon_sum": float(recon.sum()),
        "new_sum": float(new.sum()),
        "h_l1": float(H64.sum()),
        "h_l2": float(np.einsum("ij,ij->", H64, H64)),
        "div": kl_block(W, X, H)[2] if plan.loss == "kl" else 0.0,
    }
    return out, parts


def project_blocks(
    executor: Any,
    W: np.ndarray,
    config: Any,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
    progress: Any = None,
) -> tuple[np.ndarray, list[float], list[float]]:
    """H of every block for a fixed basis W, in one pass: exact NNLS, or MU for KL.

    The fixed-basis solve behind ``NMF.transform`` and consensus refits (``project`` runs
    the same step with its quality figures).

    Parameters
    ----------
    executor : Executor
    W : ndarray, shape (m, k)
    config : NMFConfig
        Its loss and H penalties are used.

    Returns
    -------
    H : ndarray, shape (k, n)
    objectives, relative_errors : list of one float
        Of the projection (data term plus the H penalties).
    """
    plan = ProjectionPlan(
        W=np.ascontiguousarray(W),
        n_basis=W.shape[1],
        loss=config.loss,
        solver="als" if config.loss == "frobenius" else "mu",
        nnls="bpp",
        l1=config.l1_h,
        l2=config.l2_h,
        max_iter=max_iter,
        tol=tol,
    )
    executor.set_states([ProjectedBlock(index=j) for j in range(executor.source.n_blocks)])
    totals = executor.map_reduce(project_step, plan)
    if progress is not None:
        progress.update(1)
    H = np.hstack([state.H for state in executor.states()])
    data = totals["div"] if config.loss == "kl" else 0.5 * totals["sq_err"]
    obj = data + config.l1_h * totals["h_l1"] + 0.5 * config.l2_h * totals["h_l2"]
    rel = float(np.sqrt(totals["sq_err"] / totals["xx"])) if totals["xx"] > 0 else 0.0
    return H, [float(obj)], [rel]
