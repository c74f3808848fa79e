"""NMF on the one-pass engine: the block step, the W update and the objective.

Objective (Frobenius)::

    ½‖X − WH‖²_F + l1_w·ΣW + ½ l2_w·‖W‖²_F + l1_h·ΣH + ½ l2_h·‖H‖²_F

and for ``loss="kl"`` the data term is the generalized KL divergence
``Σ x·log(x / wh) − x + wh``. Every iteration reads each column block X_j once::

    B_j = Wᵀ X_j ;  H_j ← update(G = WᵀW, B_j, H_j)          (als / hals / mu)
    partials_j = X_j H_jᵀ, H_j H_jᵀ, Σ B_j ⊙ H_j, row sums of H_j   (KL: its own statistics)

then the partials are tree-summed, the objective of (W, new H) follows from the Gram trick,
and W is updated from the sums alone. Several runs (restarts) share each read of X_j: their
W are stacked so one GEMM serves all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.io.errors import InputError
from scalenmf.kernels import bpp_nnls, cd_nnls, gram, kl_block, mu_frobenius, mu_kl_h, rhs, x_ht
from scalenmf.kernels.mu import EPS

SOLVERS = ("als", "hals", "mu")
LOSSES = ("frobenius", "kl")
INITS = ("nndsvda", "nndsvd", "random")


@dataclass(frozen=True)
class NMFConfig:
    """Everything a block step needs to know about the model (pickles to workers).

    Attributes
    ----------
    k : int
        Rank.
    solver : {"als", "hals", "mu"}
        ``als``: exact column-wise NNLS each half-step (coordinate descent to ``inner_tol``,
        or block principal pivoting with ``nnls="bpp"``); ``hals``: ``inner_sweeps``
        coordinate sweeps; ``mu``: one multiplicative step.
    loss : {"frobenius", "kl"}
    l1_w, l1_h, l2_w, l2_h : float
        Penalties (see the module docstring).
    nnls : {"cd", "bpp"}
        The exact NNLS used by ``als``.
    inner_sweeps : int
        Coordinate sweeps per half-step for ``als`` (the most) and ``hals`` (exactly).
    inner_tol : float
        ``als`` stops sweeping when no entry moves more than this (relative).
    """

    k: int
    solver: str = "als"
    loss: str = "frobenius"
    l1_w: float = 0.0
    l1_h: float = 0.0
    l2_w: float = 0.0
    l2_h: float = 0.0
    nnls: str = "cd"
    inner_sweeps: int = 1
    inner_tol: float = 1e-4


@dataclass
class Broadcast:
    """What travels to every block each iteration: the stacked W of the active runs."""

    config: NMFConfig
    W: np.ndarray  # (m, len(active) * k), the data dtype
    grams: list[np.ndarray]  # WᵀW per active run, (k, k) float64
    active: tuple[int, ...]  # run indices updated this iteration
    n_runs: int
    h_start: list[float]  # constant start value of H per run (MU needs positive H)
    validate: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# -- validation -------------------------------------------------------------------------


def check_block(X: Block) -> dict[str, float]:
    """Check one block for the values NMF cannot take; return its sum statistics.

    Raises
    ------
    InputError
        On NaN/Inf or negative entries.
    """
    data: np.ndarray = np.asarray(X.data) if sp.issparse(X) else np.asarray(X)
    if data.size and not np.isfinite(data).all():
        raise InputError(
            "X contains NaN or infinite values (to treat NaN as missing entries, pass "
            "mask='nan' or --mask nan)"
        )
    if data.size and data.min() < 0:
        raise InputError("X contains negative values; NMF needs non-negative data")
    if sp.issparse(X):
        d64 = np.asarray(data, dtype=np.float64)
        return {"xx": float(d64 @ d64), "xsum": float(d64.sum())}
    return {
        "xx": float(np.einsum("ij,ij->", X, X, dtype=np.float64)),
        "xsum": float(X.sum(dtype=np.float64)),
    }


def stats_step(X: Block, state: Any, bc: Any) -> tuple[Any, dict[str, float]]:
    """Block function for the statistics pass (validation, ‖X‖², ΣX); state untouched."""
    return state, check_block(X)


# -- the iteration step -----------------------------------------------------------------


def _update_h(config: NMFConfig, G: np.ndarray, B: np.ndarray, H: np.ndarray) -> np.ndarray:
    if config.solver == "mu":
        return mu_frobenius(G, B, H, l1=config.l1_h, l2=config.l2_h)
    if config.solver == "als" and config.nnls == "bpp":
        return bpp_nnls(G, B, l1=config.l1_h, l2=config.l2_h)
    sweeps = config.inner_sweeps if config.solver == "hals" else max(config.inner_sweeps, 50)
    tol = 0.0 if config.solver == "hals" else config.inner_tol
    out, _ = cd_nnls(G, B, H, l1=config.l1_h, l2=config.l2_h, max_sweeps=sweeps, tol=tol)
    return out


def _start_h(bc: Broadcast, run: int, k: int, n: int, dtype: np.dtype) -> np.ndarray:
    if bc.config.solver == "mu" or bc.config.loss == "kl":
        return np.full((k, n), bc.h_start[run], dtype=dtype)
    return np.zeros((k, n), dtype=dtype)


def nmf_step(X: Block, state: list[np.ndarray | None] | None, bc: Broadcast):
    """One iteration on one column block: update H_j of every active run, emit partials.

    Parameters
    ----------
    X : ndarray or csc_matrix, shape (m, n_j)
    state : list of (ndarray (k, n_j) or None), length n_runs, or None
        H_j of every run.
    bc : Broadcast

    Returns
    -------
    new_state : list of ndarray (k, n_j)
    partials : dict
        ``runs``: one dict per active run with ``XHt`` (m, k), ``HHt`` (k, k), ``cross``,
        ``hsum`` (k,), and for KL ``numer`` (m, k), ``div``; plus ``xx``/``xsum`` when
        validating.
    """
    config = bc.config
    k = config.k
    n_j = X.shape[1]
    dtype = bc.W.dtype
    if state is None:
        state = [None] * bc.n_runs
    new_state = list(state)
    out: dict[str, Any] = {}
    if bc.validate:
        out.update(check_block(X))
    run_parts: list[dict[str, Any]] = []
    if config.loss == "kl":
        for idx, run in enumerate(bc.active):
            W = bc.W[:, idx * k : (idx + 1) * k]
            H = state[run]
            if H is None:
                H = _start_h(bc, run, k, n_j, dtype)
            H = mu_kl_h(W, X, H, l1=config.l1_h, l2=config.l2_h)
            numer, hsum, div, x_wh = kl_block(W, X, H)
            new_state[run] = H
            H64 = H.astype(np.float64, copy=False)
            run_parts.append(
                {"numer": numer, "hsum": hsum, "div": div, "cross": x_wh, "HHt": H64 @ H64.T}
            )
    else:
        B_all = rhs(bc.W, X)
        hs = []
        for idx, run in enumerate(bc.active):
            B = B_all[idx * k : (idx + 1) * k]
            H = state[run]
            if H is None:
                H = _start_h(bc, run, k, n_j, dtype)
            H = _update_h(config, bc.grams[idx], B, H).astype(dtype, copy=False)
            new_state[run] = H
            hs.append(H)
        H_all = np.vstack(hs) if len(hs) > 1 else hs[0]
        XHt_all = x_ht(X, H_all)
        for idx, H in enumerate(hs):
            H64 = H.astype(np.float64, copy=False)
            B64 = B_all[idx * k : (idx + 1) * k].astype(np.float64, copy=False)
            run_parts.append(
                {
                    "XHt": XHt_all[:, idx * k : (idx + 1) * k],
                    "HHt": H64 @ H64.T,
                    "cross": float(np.einsum("ij,ij->", B64, H64)),
                    "hsum": H64.sum(axis=1),
                }
            )
    out["runs"] = run_parts
    return new_state, out


# -- objective and W update -------------------------------------------------------------


def objective(
    config: NMFConfig, W: np.ndarray, G: np.ndarray, part: dict[str, Any], xx: float
) -> tuple[float, float]:
    """Objective and relative Frobenius error of (W, new H) from the summed partials.

    Returns
    -------
    objective : float
        Data term plus penalties.
    relative_error : float
        ``‖X − WH‖_F / ‖X‖_F`` (the Gram trick; clipped at 0 against round-off).
    """
    HHt = part["HHt"]
    sq_err = max(xx - 2.0 * part["cross"] + float(np.einsum("ij,ij->", G, HHt)), 0.0)
    data = part["div"] if config.loss == "kl" else 0.5 * sq_err
    W64 = W.astype(np.float64, copy=False)
    penalty = 0.0
    if config.l1_w:
        penalty += config.l1_w * float(W64.sum())
    if config.l2_w:
        penalty += 0.5 * config.l2_w * float(np.einsum("ij,ij->", W64, W64))
    if config.l1_h:
        penalty += config.l1_h * float(part["hsum"].sum())
    if config.l2_h:
        penalty += 0.5 * config.l2_h * float(np.trace(HHt))
    rel = float(np.sqrt(sq_err / xx)) if xx > 0 else 0.0
    return float(data + penalty), rel


def update_w(config: NMFConfig, W: np.ndarray, part: dict[str, Any]) -> np.ndarray:
    """W step from the summed block statistics alone (no look at X).

    Parameters
    ----------
    W : ndarray, shape (m, k)
    part : dict
        Summed partials of this run (``XHt``, ``HHt`` or KL's ``numer``, ``hsum``).

    Returns
    -------
    ndarray, shape (m, k), dtype of W
    """
    dtype = W.dtype
    if config.loss == "kl":
        denom = part["hsum"][None, :] + (config.l1_w + EPS)
        if config.l2_w:
            denom = denom + config.l2_w * W
        return (W * part["numer"] / denom).astype(dtype, copy=False)
    HHt, XHt = part["HHt"], part["XHt"]
    if config.solver == "mu":
        return mu_frobenius(
            HHt, XHt.T, W.T.astype(np.float64), l1=config.l1_w, l2=config.l2_w
        ).T.astype(dtype)
    if config.solver == "als" and config.nnls == "bpp":
        return bpp_nnls(HHt, XHt.T, l1=config.l1_w, l2=config.l2_w).T.astype(dtype)
    sweeps = config.inner_sweeps if config.solver == "hals" else max(config.inner_sweeps, 50)
    tol = 0.0 if config.solver == "hals" else config.inner_tol
    Wt, _ = cd_nnls(
        HHt,
        XHt.T,
        W.T.astype(np.float64),
        l1=config.l1_w,
        l2=config.l2_w,
        max_sweeps=sweeps,
        tol=tol,
    )
    return np.ascontiguousarray(Wt.T).astype(dtype)


def make_broadcast(
    config: NMFConfig,
    Ws: list[np.ndarray],
    active: list[int],
    h_start: list[float],
    validate: bool = False,
) -> Broadcast:
    stacked = np.hstack([Ws[r] for r in active]) if len(active) > 1 else Ws[active[0]]
    return Broadcast(
        config=config,
        W=np.ascontiguousarray(stacked),
        grams=[gram(Ws[r]) for r in active],
        active=tuple(active),
        n_runs=len(Ws),
        h_start=h_start,
        validate=validate,
    )


class NMFModel:
    """The NMF pieces the engine's driver needs (global W of every run, Gram-trick scoring)."""

    step = staticmethod(nmf_step)

    def __init__(self, config: NMFConfig, Ws: list[np.ndarray], h_start: list[float], xx: float):
        self.config = config
        self.Ws = [np.ascontiguousarray(W) for W in Ws]
        self.h_start = h_start
        self.xx = xx
        self.n_runs = len(Ws)
        self._grams: dict[int, np.ndarray] = {}

    def broadcast(self, active: list[int], first: bool) -> Broadcast:
        bc = make_broadcast(self.config, self.Ws, active, self.h_start, validate=first)
        self._grams = {run: G for run, G in zip(active, bc.grams, strict=True)}
        return bc

    def score(self, run: int, partials: dict[str, Any], index: int) -> tuple[float, float]:
        return objective(
            self.config, self.Ws[run], self._grams[run], partials["runs"][index], self.xx
        )

    def advance(self, run: int, partials: dict[str, Any], index: int) -> None:
        self.Ws[run] = update_w(self.config, self.Ws[run], partials["runs"][index])

    def get_state(self) -> dict[str, Any]:
        """The global factors, for a checkpoint (``set_state`` restores them)."""
        return {"Ws": list(self.Ws), "h_start": list(self.h_start), "xx": float(self.xx)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.Ws = [np.ascontiguousarray(W) for W in state["Ws"]]
        self.h_start = [float(v) for v in state["h_start"]]
        self.xx = float(state["xx"])
