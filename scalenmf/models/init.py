"""Initial factors, computed out of core with a few passes over the blocks.

``random``: W from a seeded half-normal scaled to the data's mean (sklearn's convention);
H needs no draw — ALS/HALS start from H = 0 and solve it from W, MU starts from a constant.
So a random start does not depend on the blocking.

``nndsvd`` / ``nndsvda`` (Boutsidis & Gallopoulos 2008): NNDSVD on a randomized truncated
SVD of X. Two passes read X: the range of X·Xᵀ·Ω (one power step from the row side, so it
too is blocking-independent) and the projection T_j = Qᵀ X_j, kept as block state; the
right singular vectors then come from T_j without reading X again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scalenmf.engine.executor import Executor
from scalenmf.kernels import rhs
from scalenmf.models.step import block_matrix, check_block, stats_step

OVERSAMPLE = 10


@dataclass
class InitResult:
    """Starting point of every run, plus the data statistics the first pass produced."""

    Ws: list[np.ndarray]
    h_start: list[float]
    xx: float
    xsum: float
    has_state: bool  # block states already hold H for some runs


def data_stats(executor: Executor, blocks: list[int] | None = None) -> dict[str, float]:
    """One validating pass: ‖X‖², ΣX (raises InputError on NaN/Inf/negative); of the
    column blocks ``blocks`` only if given."""
    return executor.map_reduce(stats_step, None, blocks=blocks)


def _range_step(X: Any, state: Any, omega: np.ndarray):
    X = block_matrix(X)
    stats = check_block(X)
    # X_j (X_jᵀ Ω): the block's share of X Xᵀ Ω, the sample-side power step.
    XtO = rhs(omega, X).T  # (n_j, l)
    Y = np.asarray(X @ XtO, dtype=np.float64)
    return state, {"Y": Y, **stats}


def _project_step(X: Any, state: Any, Q: np.ndarray):
    X = block_matrix(X)
    T = rhs(Q, X).astype(np.float64)  # (l, n_j)
    return T, {"TTt": T @ T.T}


def _vnorm_step(X: Any, T: np.ndarray, arg: tuple[np.ndarray, np.ndarray]):
    Ut, s = arg
    V = (Ut.T @ T) / s[:, None]  # (k, n_j): right singular vectors' block
    pos = np.maximum(V, 0)
    neg = np.maximum(-V, 0)
    return V, {"pos": (pos * pos).sum(axis=1), "neg": (neg * neg).sum(axis=1)}


@dataclass
class _HPlan:
    sign: np.ndarray  # (k,) +1 or -1
    scale: np.ndarray  # (k,)
    fill: float  # value for zeros (nndsvda) or 0
    start: float  # value for the rows of components without a singular pair
    n_runs: int
    dtype: str


def _h_step(X: Any, V: np.ndarray, plan: _HPlan):
    H = np.maximum(plan.sign[:, None] * V, 0) * plan.scale[:, None]
    if plan.fill:
        H[H < EPS_ZERO] = plan.fill
    H[plan.scale == 0] = plan.start
    state: list[np.ndarray | None] = [None] * plan.n_runs
    state[0] = H.astype(plan.dtype)
    return state, {}


EPS_ZERO = 1e-12


def random_w(m: int, k: int, mean: float, rng: np.random.Generator, dtype: np.dtype) -> np.ndarray:
    scale = np.sqrt(max(mean, 0.0) / k) or 1.0
    return (np.abs(rng.standard_normal((m, k))) * scale).astype(dtype)


def initialize(
    executor: Executor,
    k: int,
    init: str,
    seed: int | None,
    n_runs: int,
    dtype: np.dtype,
    blocks: list[int] | None = None,
) -> InitResult:
    """Starting W for every run (and H for run 0 under NNDSVD, left in the block states).

    Run 0 uses ``init``; further runs are restarts from independent random starts (NNDSVD is
    deterministic, so repeating it would repeat the same fit). ``blocks``: only these column
    blocks are read (the online solver's sample); ``xx`` and ``xsum`` are then theirs, and
    the other blocks get no state.
    """
    m, n = executor.source.shape
    if blocks is not None:
        bounds = executor.source.block_bounds
        n = sum(bounds[j][1] - bounds[j][0] for j in blocks)
    seeds = np.random.SeedSequence(seed).spawn(n_runs + 1)
    rngs = [np.random.default_rng(s) for s in seeds]
    if init == "random":
        stats = data_stats(executor, blocks)
        mean = stats["xsum"] / max(1, m * n)
        Ws = [random_w(m, k, mean, rngs[r], dtype) for r in range(n_runs)]
        start = float(np.sqrt(mean / k)) or 1.0
        return InitResult(Ws, [start] * n_runs, stats["xx"], stats["xsum"], False)

    l = min(k + OVERSAMPLE, m, n)
    omega = rngs[n_runs].standard_normal((m, l)).astype(dtype)
    first = executor.map_reduce(_range_step, omega, blocks=blocks)
    mean = first["xsum"] / max(1, m * n)
    Q, _ = np.linalg.qr(first["Y"])
    second = executor.map_reduce(_project_step, Q.astype(dtype), blocks=blocks)
    evals, evecs = np.linalg.eigh(second["TTt"])
    order = np.argsort(evals)[::-1][:k]
    s = np.sqrt(np.maximum(evals[order], 0))
    kk = len(order)
    s_safe = np.where(s > 0, s, 1.0)
    Ut = evecs[:, order]
    U = Q @ Ut  # (m, kk) left singular vectors
    norms = executor.map_reduce(_vnorm_step, (Ut, s_safe), read_x=False, blocks=blocks)
    W0 = np.zeros((m, k))
    sign = np.ones(k)
    scale = np.zeros(k)
    for i in range(kk):
        u = U[:, i]
        up, un = np.maximum(u, 0), np.maximum(-u, 0)
        upn, unn = np.linalg.norm(up), np.linalg.norm(un)
        vpn, vnn = np.sqrt(norms["pos"][i]), np.sqrt(norms["neg"][i])
        mp, mn = upn * vpn, unn * vnn
        # Keep the dominant-sign half of the pair (for i = 0 this is |u|, |v|).
        if mp >= mn:
            vec, unorm, vnorm, weight = up, upn, vpn, mp
        else:
            vec, unorm, vnorm, weight, sign[i] = un, unn, vnn, mn, -1.0
        lam = np.sqrt(s[i] * weight)
        if unorm > 0 and vnorm > 0:
            W0[:, i] = lam * vec / unorm
            scale[i] = lam / vnorm
    fill = mean if init == "nndsvda" else 0.0
    dead = np.flatnonzero(scale == 0)
    if dead.size:
        # Fewer usable singular pairs than k (rank-deficient X): random columns, not zeros,
        # since a zero column of W never revives under ALS/HALS.
        W0[:, dead] = random_w(m, dead.size, mean, rngs[n_runs], np.dtype(np.float64))
    if fill:
        W0[W0 < EPS_ZERO] = fill
    start = float(np.sqrt(mean / k)) or 1.0
    plan = _HPlan(sign, scale, fill, start, n_runs, str(np.dtype(dtype)))
    executor.map_reduce(_h_step, plan, read_x=False, blocks=blocks)
    Ws = [W0.astype(dtype)] + [random_w(m, k, mean, rngs[r], dtype) for r in range(1, n_runs)]
    return InitResult(Ws, [start] * n_runs, first["xx"], first["xsum"], True)
