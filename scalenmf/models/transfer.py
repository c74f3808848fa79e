"""Projection of new samples onto a fixed basis, with per-sample quality control.

With W fixed every sample's H sub-problem is independent (seed 003, eq. 6), so a block is
solved to convergence while in memory: one read of X. The same visit gives, from the Gram
statistics, each sample's ``cosine(x, Wh)`` and ``‖x − Wh‖/‖x‖`` and, when asked, bootstrap
intervals for h (counts resampled, Poisson or multinomial, re-solved from h). For linked
transfer learning (eq. 7) the basis is ``[W | U]``: the figures of the whole model, of W
alone, and the share of the counts that U V carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.kernels import gram, kl_block, rhs, solve_fixed_basis, solve_fixed_basis_kl
from scalenmf.kernels.backend import backend_for
from scalenmf.models.step import BlockState, block_matrix, check_block

#: Bootstrap draws are solved in column chunks so draws × k × chunk floats stay this small.
BOOTSTRAP_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ProjectionPlan:
    """What every block needs to project itself (pickles to workers).

    Attributes
    ----------
    W : ndarray, shape (m, K)
        The basis (``[W | U]`` for transfer learning, whose W is the first ``n_basis``).
    solver : {"als", "hals", "mu"}
        ``als``: exact (``nnls``); ``hals`` / ``mu`` iterate to ``tol``; KL: always MU.
    solve : bool
        Solve H here, or take it from the state (after transfer learning).
    bootstrap, resample, ci : int, {"poisson", "multinomial"}, float
        Resamples (0: none), how, and the central probability of the intervals.
    backend, device : str
        Where ``WᵀX`` and the exact solve (``als`` with ``bpp``) run; the rest is numpy.
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
    backend: str = "numpy"
    device: str = "cpu"


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
    opts: dict[str, Any] = {"l1": plan.l1, "l2": plan.l2, "max_iter": plan.max_iter}
    opts["tol"] = plan.tol
    if plan.loss == "kl":
        return solve_fixed_basis_kl(W, X, H0, **opts)[0]
    solver = plan.nnls if plan.solver == "als" else plan.solver
    B = rhs(W, X) if B is None else B
    if plan.backend != "numpy" and solver == "bpp":
        ops = backend_for(plan.backend, plan.device)
        with ops.stream():
            H0d = None if H0 is None else ops.array(H0)
            Hd, _ = ops.nnls_bpp(ops.array(G), ops.array(B), H0d, l1=plan.l1, l2=plan.l2)
            return ops.host(Hd, W.dtype)
    return solve_fixed_basis(G, B, solver=solver, H0=H0, **opts)[0].astype(W.dtype, copy=False)


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

    ``state`` is a ``BlockState`` after transfer learning (its H of ``plan.run`` is
    used). Returns the ``ProjectedBlock`` and the sums ``xx``, ``xsum``, ``sq_err``,
    ``basis_sq_err`` (W part), ``recon_sum``, ``new_sum`` (from U V), ``div`` (KL),
    ``h_l1`` and ``h_l2``.
    """
    X = block_matrix(X)
    stats = check_block(X)
    W = plan.W
    G = gram(W)
    if plan.backend == "numpy":
        B = rhs(W, X)
    else:  # the one product with X on the device; the QC below needs B on the host
        ops = backend_for(plan.backend, plan.device)
        with ops.stream():
            B = ops.host(ops.rhs(ops.array(W), ops.block(X, W.dtype)), W.dtype)
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
    """H (k, n) of every block for a fixed W (m, k) in one pass, exact NNLS or KL MU with
    ``config``'s loss and H penalties: behind ``NMF.transform`` and consensus refits.
    Returns H (a scratch Zarr array when the executor keeps its states out of memory) and
    the objective and relative error (lists of one float)."""
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
        backend=config.backend,
        device=config.device,
    )
    executor.set_states([ProjectedBlock(index=j) for j in range(executor.source.n_blocks)])
    totals = executor.map_reduce(project_step, plan)
    if progress is not None:
        progress.update(1)
    if getattr(executor, "stream_states", False):
        # The states are out of memory: H goes to a scratch array block by block too.
        from scalenmf.io.state_store import columns_array

        bounds = executor.source.block_bounds
        widest = max(b - a for a, b in bounds)
        H: Any = None
        for (a, b), state in zip(bounds, executor.states(), strict=True):
            if H is None:
                where = getattr(executor, "scratch", None)
                H = columns_array(
                    where, (W.shape[1], executor.source.shape[1]), state.H.dtype, widest
                )
            H[:, a:b] = state.H
    else:
        H = np.hstack([state.H for state in executor.states()])
    data = totals["div"] if config.loss == "kl" else 0.5 * totals["sq_err"]
    obj = data + config.l1_h * totals["h_l1"] + 0.5 * config.l2_h * totals["h_l2"]
    rel = float(np.sqrt(totals["sq_err"] / totals["xx"])) if totals["xx"] > 0 else 0.0
    return H, [float(obj)], [rel]
