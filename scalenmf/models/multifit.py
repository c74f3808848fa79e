"""Many NMF fits in one pass over X: ranks, restarts, a permuted null and held-out masks.

A rank survey needs fits for every (k, run), the same on a column-permuted copy of X (the
randomized null of R's NMF package) and fits with held-out entries (cross-validation).
They are all independent, and every one of them needs exactly one look at each column
block per iteration. So they run *together*: each block is read once per iteration for
all of them, the permuted copy is made next to the block (and kept there), the W of all
fits that see the same data are stacked so one ``WᵀX_j`` and one ``X_j Hᵀ`` GEMM serve
every rank, and the sub-problems of the fits of one rank are solved by one vectorised
sweep (``kernels.batched``).

Fits are grouped by ``(variant, k, masked)``. Masked fits (held-out entries, or missing
values in X) minimise the loss over the observed entries only; their H step needs one
Gram per column and their W step one per row, obtained from the unmasked Grams minus the
contributions of the missing entries, so their cost grows with the number of missing
entries, not with m·n.

Frobenius fits run ``als`` (exact NNLS by block principal pivoting), ``hals`` (3 sweeps) or
``mu``; KL fits run ``mu``; all of them with or without a mask.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf.engine.executor import Executor
from scalenmf.engine.loop import run_alternating
from scalenmf.io.errors import InputError
from scalenmf.kernels import gram, kl_block, rhs, x_ht
from scalenmf.kernels.batched import (
    bpp_nnls_batched,
    cd_nnls_batched,
    mu_frobenius_batched,
    pattern_grams,
    quad_form,
    wh_at,
)
from scalenmf.kernels.hashing import (
    heldout_pattern,
    permute_columns_dense,
    permute_columns_sparse,
)
from scalenmf.kernels.mu import EPS, _ratio
from scalenmf.models.init import random_w
from scalenmf.models.masking import FitBlock
from scalenmf.models.nmf import check_block

VARIANTS = ("data", "null")
#: (loss, solver) pairs the multi-fit engine runs, with and without masks.
SUPPORTED = {("frobenius", "als"), ("frobenius", "hals"), ("frobenius", "mu"), ("kl", "mu")}
#: Coordinate sweeps per half-step of ``hals`` (``als`` solves exactly by block principal
#: pivoting, ``mu`` takes one multiplicative step).
SWEEPS = {"als": 0, "hals": 3, "mu": 1}

GroupKey = tuple[str, int, bool]  # (variant, padded k, masked)
#: Fits whose ranks are within this ratio share one batch, W padded with zero columns:
#: fewer, larger vectorised solves (a zero column of W keeps its H row at 0 and back).
PAD_RATIO = 1.5


def rank_buckets(ks: list[int]) -> dict[int, int]:
    """The padded rank of every k: consecutive ks within ``PAD_RATIO`` share a bucket."""
    out: dict[int, int] = {}
    bucket: list[int] = []
    for k in sorted(set(ks)):
        if bucket and k > PAD_RATIO * bucket[0]:
            out.update({b: bucket[-1] for b in bucket})
            bucket = []
        bucket.append(k)
    out.update({b: bucket[-1] for b in bucket})
    return out


def _pad(W: np.ndarray, k: int) -> np.ndarray:
    if W.shape[1] == k:
        return W
    out = np.zeros((W.shape[0], k), dtype=W.dtype)
    out[:, : W.shape[1]] = W
    return out


@dataclass(frozen=True)
class FitSpec:
    """One fit of a multi-fit: its rank, which data it sees and its replicate numbers.

    Attributes
    ----------
    k : int
    variant : {"data", "null"}
        X itself, or X with every column's entries permuted (the randomized null).
    rep : int
        Held-out replicate (its pattern of held-out entries), or −1: fit every observed
        entry.
    run : int
        Restart number (it seeds the random start).
    """

    k: int
    variant: str = "data"
    rep: int = -1
    run: int = 0


@dataclass(frozen=True)
class MultiConfig:
    """The model knobs every block step needs (pickles to workers)."""

    solver: str = "als"
    loss: str = "frobenius"
    l1_w: float = 0.0
    l1_h: float = 0.0
    l2_w: float = 0.0
    l2_h: float = 0.0
    cv_fraction: float = 0.05
    cv_seed: int = 0
    null_seed: int = 0
    masked_data: bool = False  # X has missing entries: every fit is masked
    fixed_w: bool = False  # solve H only (refits on a consensus basis)

    @property
    def sweeps(self) -> int:
        return SWEEPS[self.solver]


def check_supported(loss: str, solver: str) -> None:
    """Raise a clear error for a (loss, solver) pair the multi-fit engine cannot run."""
    if (loss, solver) not in SUPPORTED:
        pairs = ", ".join(f"{s} ({lo})" for lo, s in sorted(SUPPORTED))
        raise ValueError(
            f"masked and multi-rank fits support the solvers {pairs}; got solver={solver!r} "
            f"with loss={loss!r}"
        )


@dataclass
class GroupCast:
    """The part of the broadcast for one group: the active fits' W and Grams."""

    key: GroupKey
    n_slots: int
    slots: np.ndarray  # (A,) active slots of the group's H stack
    reps: tuple[int, ...]  # held-out replicate of each active slot
    W: np.ndarray  # (m, A·k), data dtype (zero columns beyond a fit's own rank)
    grams: np.ndarray  # (A, k, k) float64
    h_start: np.ndarray  # (n_slots,) MU's constant start of H, per slot

    @property
    def k(self) -> int:
        return self.key[1]


@dataclass
class MultiCast:
    config: MultiConfig
    groups: list[GroupCast]
    validate: bool = False


# -- data variants and held-out patterns (block side) -----------------------------------


def _rep_seed(seed: int, rep: int) -> int:
    return int(seed) * 1_000_003 + int(rep) + 1


def permuted_block(block: FitBlock, seed: int) -> tuple[Any, sp.csc_matrix | None]:
    """The randomized null of one block: every column's entries (and missing marks) permuted."""
    if sp.issparse(block.X):
        Xp: Any = permute_columns_sparse(block.X, seed, block.start)
    else:
        Xp = permute_columns_dense(np.asarray(block.X), seed, block.start)
    miss = block.missing
    if miss is not None:
        miss = permute_columns_sparse(miss, seed, block.start)
    return Xp, miss


def _pattern_values(X: Any, pattern: sp.csc_matrix) -> sp.csc_matrix:
    """X at the entries of ``pattern`` (only the non-zero values stored), CSC float64."""
    if sp.issparse(X):
        out = sp.csc_matrix(sp.csc_matrix(X).multiply(pattern), dtype=np.float64)
    else:
        rows = pattern.indices
        cols = np.repeat(np.arange(pattern.shape[1]), np.diff(pattern.indptr))
        vals = np.asarray(X)[rows, cols].astype(np.float64)
        out = sp.csc_matrix((vals, rows.copy(), pattern.indptr.copy()), shape=pattern.shape)
    out.eliminate_zeros()
    return out


@dataclass
class MaskParts:
    """What a masked fit of one block needs about its missing entries."""

    missing: sp.csc_matrix | None  # every entry the fit may not see (float 1.0)
    heldout: sp.csc_matrix | None  # the held-out entries (test set), float 1.0
    heldout_x: sp.csc_matrix | None  # X at the held-out entries (non-zeros only)


def mask_parts(
    X: Any, user_missing: sp.csc_matrix | None, rep: int, config: MultiConfig, start: int
) -> MaskParts:
    """Missing and held-out entries of a block for replicate ``rep`` (−1: none held out)."""
    user = None if user_missing is None else sp.csc_matrix(user_missing, dtype=np.float64)
    if rep < 0:
        return MaskParts(user, None, None)
    m, n = X.shape
    ho = sp.csc_matrix(
        heldout_pattern(_rep_seed(config.cv_seed, rep), config.cv_fraction, m, start, start + n),
        dtype=np.float64,
    )
    if user is not None and user.nnz:
        ho = sp.csc_matrix(ho - ho.multiply(user))
        ho.eliminate_zeros()
    missing = ho if user is None else sp.csc_matrix((ho + user) != 0, dtype=np.float64)
    return MaskParts(missing, ho, _pattern_values(X, ho))


# -- the block step ---------------------------------------------------------------------


def _solve(
    config: MultiConfig, G: np.ndarray, B: np.ndarray, X0: np.ndarray, l1: float, l2: float
) -> np.ndarray:
    """One half-step of every fit of a batch: exact NNLS (als), HALS sweeps or MU."""
    if config.solver == "mu":
        return mu_frobenius_batched(G, B, X0, l1=l1, l2=l2)
    if config.solver == "als":
        return bpp_nnls_batched(G, B, X0, l1=l1, l2=l2)
    return cd_nnls_batched(G, B, X0, l1=l1, l2=l2, max_sweeps=config.sweeps, tol=0.0)


#: Inputs up to this size run the whole multi-fit with single-threaded BLAS: their
#: products are so small that BLAS threads only add synchronisation.
SMALL_INPUT_BYTES = 16 * 2**20
_CONTROLLER: Any = None


def single_threaded_blas() -> Any:
    """A context that limits BLAS to one thread (a cached threadpoolctl controller)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _start_h(config: MultiConfig, g: GroupCast, n_j: int, dtype: np.dtype) -> np.ndarray:
    shape = (g.n_slots, g.k, n_j)
    if config.solver == "mu":
        return np.broadcast_to(g.h_start[:, None, None], shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _frobenius_group(
    config: MultiConfig,
    g: GroupCast,
    Xv: Any,
    B: np.ndarray,
    H0: np.ndarray,
    masks: list[MaskParts] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """H step of one Frobenius group; returns (new H, corrected B, mask extras)."""
    k = g.k
    extras: dict[str, Any] = {}
    if masks is None:
        G = g.grams
    else:
        Gcols = []
        for a, mp in enumerate(masks):
            Wa = g.W[:, a * k : (a + 1) * k]
            if mp.heldout_x is not None and mp.heldout_x.nnz:
                B[a] -= np.asarray(mp.heldout_x.T @ Wa, dtype=B.dtype).T
            Gcols.append(
                pattern_grams(g.grams[a], mp.missing, Wa)
                if mp.missing is not None
                else np.broadcast_to(g.grams[a], (Xv.shape[1], k, k))
            )
        G = np.stack(Gcols)
        extras["Gcols"] = G
    H = _solve(config, G, B, H0, config.l1_h, config.l2_h)
    return H.astype(H0.dtype, copy=False), B, extras


def _frobenius_parts(
    g: GroupCast,
    H: np.ndarray,
    B: np.ndarray,
    XHt: np.ndarray,
    masks: list[MaskParts] | None,
    extras: dict[str, Any],
) -> dict[str, Any]:
    H64 = H.astype(np.float64, copy=False)
    B64 = B.astype(np.float64, copy=False)
    HHt = np.matmul(H64, H64.transpose(0, 2, 1))
    parts: dict[str, Any] = {
        "XHt": XHt,
        "HHt": HHt,
        "cross": np.einsum("akn,akn->a", B64, H64),
        "hsum": H64.sum(axis=2),
    }
    if masks is not None:
        k = g.k
        A = H.shape[0]
        m = XHt.shape[1]
        rowG = np.empty((A, m, k, k))
        xx_ho = np.zeros(A)
        sse = np.zeros(A)
        for a, mp in enumerate(masks):
            Wa = g.W[:, a * k : (a + 1) * k]
            if mp.heldout_x is not None and mp.heldout_x.nnz:
                XHt[a] -= np.asarray(mp.heldout_x @ H64[a].T)
            if mp.missing is not None and mp.missing.nnz:
                rowG[a] = pattern_grams(HHt[a], sp.csr_matrix(mp.missing).T, H64[a].T)
            else:
                rowG[a] = HHt[a]
            if mp.heldout is not None and mp.heldout.nnz:
                x = mp.heldout_x
                xx_ho[a] = float(x.data @ x.data) if x is not None else 0.0
                wh = wh_at(Wa, H64[a], mp.heldout)
                xwh = wh_at(Wa, H64[a], x) @ x.data if x is not None and x.nnz else 0.0
                sse[a] = max(float(wh @ wh) - 2.0 * float(xwh) + xx_ho[a], 0.0)
        parts.update(rowG=rowG, quad=quad_form(extras["Gcols"], H64), xx_ho=xx_ho, sse_test=sse)
    return parts


def _kl_slot(
    config: MultiConfig, W: np.ndarray, Xv: Any, H: np.ndarray, mp: MaskParts | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """One KL multiplicative H step for one fit and its W-step statistics."""
    Xobs = Xv
    if mp is not None and mp.heldout_x is not None and mp.heldout_x.nnz:
        if sp.issparse(Xv):
            Xobs = sp.csc_matrix(Xv - mp.heldout_x.astype(Xv.dtype))
            Xobs.eliminate_zeros()
        else:
            Xobs = np.array(Xv, copy=True)
            hx = mp.heldout_x
            Xobs[hx.indices, np.repeat(np.arange(hx.shape[1]), np.diff(hx.indptr))] = 0
    missing = None if mp is None else mp.missing
    # H numerator Wᵀ(X ⊘ WH) (missing x are 0, so they add nothing); denominator Wᵀ·o_j.
    ratio, _ = _ratio(Xobs, W, H)
    numer = np.asarray((ratio.T @ W).T) if sp.issparse(ratio) else W.T @ ratio
    denom = np.broadcast_to(W.sum(axis=0)[:, None], H.shape).astype(np.float64)
    if missing is not None and missing.nnz:
        denom = denom - np.asarray(missing.T @ W.astype(np.float64)).T
    denom = denom + (config.l1_h + EPS)
    if config.l2_h:
        denom = denom + config.l2_h * H
    H = (H * numer / np.maximum(denom, EPS)).astype(H.dtype, copy=False)
    numerW, hsum, div, x_wh = kl_block(W, Xobs, H)
    H64 = H.astype(np.float64, copy=False)
    part: dict[str, Any] = {
        "numer": numerW,
        "hsum": hsum,
        "denomW": np.broadcast_to(hsum[None, :], W.shape).copy(),
        "div": div,
        "cross": x_wh,
        "HHt": H64 @ H64.T,
    }
    if mp is None:
        return H, part
    # Masked: every slot reports the same keys, so the group's statistics stack.
    part.update(quad=float(np.einsum("ij,ij->", gram(W), part["HHt"])), xx_ho=0.0, sse_test=0.0)
    if missing is not None and missing.nnz:
        wh_miss = wh_at(W, H64, missing)
        part["div"] = div - float(wh_miss.sum())
        part["denomW"] = part["denomW"] - np.asarray(missing @ H64.T)
        Gc = pattern_grams(gram(W), missing, W)
        part["quad"] = float(quad_form(Gc[None], H64[None])[0])
    if mp.heldout is not None and mp.heldout.nnz:
        x = mp.heldout_x
        xx = float(x.data @ x.data) if x is not None else 0.0
        wh = wh_at(W, H64, mp.heldout)
        xwh = float(wh_at(W, H64, x) @ x.data) if x is not None and x.nnz else 0.0
        part["xx_ho"] = xx
        part["sse_test"] = max(float(wh @ wh) - 2.0 * xwh + xx, 0.0)
    return H, part


def _stack_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: np.stack([np.asarray(p.get(key, 0.0)) for p in parts]) for key in parts[0]}


def _block_masks(
    state: dict[str, Any],
    variant: str,
    Xv: Any,
    miss: Any,
    g: GroupCast,
    config: MultiConfig,
    start: int,
) -> list[MaskParts]:
    cache = state["cv"]
    out = []
    for rep in g.reps:
        key = f"{variant}:{rep}"
        if key not in cache:
            cache[key] = mask_parts(Xv, miss, rep, config, start)
        out.append(cache[key])
    return out


def multifit_step(block: FitBlock, state: dict[str, Any] | None, bc: MultiCast):
    """One iteration of every active fit on one column block.

    Parameters
    ----------
    block : FitBlock
    state : dict or None
        ``H``: per group an (n_slots, k, n_j) stack; ``null``: the permuted block (made
        once); ``cv``: cached held-out patterns.
    bc : MultiCast

    Returns
    -------
    new_state : dict
    partials : dict
        ``groups``: one dict of stacked per-fit statistics per group of the broadcast.
    """
    config = bc.config
    X = block.X
    n_j = X.shape[1]
    state = state or {"H": {}, "null": None, "cv": {}}
    new_state = {"H": dict(state["H"]), "null": state["null"], "cv": dict(state["cv"])}
    out: dict[str, Any] = {}
    if bc.validate:
        out.update(check_block(X))
    dtype = bc.groups[0].W.dtype
    parts: list[Any] = [None] * len(bc.groups)
    for variant in VARIANTS:
        idx = [i for i, g in enumerate(bc.groups) if g.key[0] == variant]
        if not idx:
            continue
        if variant == "data":
            Xv, miss = X, block.missing
        else:
            if new_state["null"] is None:
                new_state["null"] = permuted_block(block, config.null_seed)
            Xv, miss = new_state["null"]
        stacks = {}
        for i in idx:
            g = bc.groups[i]
            H_all = new_state["H"].get(g.key)
            stacks[i] = _start_h(config, g, n_j, dtype) if H_all is None else H_all
        if config.loss == "kl":
            for i in idx:
                g = bc.groups[i]
                stacks[i] = np.array(stacks[i], copy=True)  # updated slot by slot below
                masks = (
                    _block_masks(new_state, variant, Xv, miss, g, config, block.start)
                    if g.key[2]
                    else None
                )
                slot_parts = []
                for a, slot in enumerate(g.slots):
                    Wa = g.W[:, a * g.k : (a + 1) * g.k]
                    H, p = _kl_slot(
                        config, Wa, Xv, stacks[i][slot], None if masks is None else masks[a]
                    )
                    stacks[i][slot] = H
                    slot_parts.append(p)
                parts[i] = _stack_parts(slot_parts)
        else:
            W_cat = (
                np.hstack([bc.groups[i].W for i in idx]) if len(idx) > 1 else bc.groups[idx[0]].W
            )
            B_all = rhs(np.ascontiguousarray(W_cat), Xv)
            offsets = np.cumsum([0] + [bc.groups[i].W.shape[1] for i in idx])
            news = []
            for pos, i in enumerate(idx):
                g = bc.groups[i]
                A = len(g.slots)
                B = np.array(B_all[offsets[pos] : offsets[pos + 1]].reshape(A, g.k, n_j))
                masks = (
                    _block_masks(new_state, variant, Xv, miss, g, config, block.start)
                    if g.key[2]
                    else None
                )
                whole = len(g.slots) == g.n_slots and bool(np.all(np.diff(g.slots) > 0))
                # The solvers copy their start, so a full stack is passed without a copy.
                H0 = stacks[i] if whole else stacks[i][g.slots]
                H, B, extras = _frobenius_group(config, g, Xv, B, H0, masks)
                if whole:
                    stacks[i] = H
                else:
                    stacks[i] = np.array(stacks[i], copy=True)
                    stacks[i][g.slots] = H
                news.append((i, H, B, masks, extras))
            H_cat = np.vstack([h.reshape(-1, n_j) for _, h, _, _, _ in news])
            XHt_all = x_ht(Xv, H_cat)  # (m, Σ A·k)
            m = XHt_all.shape[0]
            for pos, (i, H, B, masks, extras) in enumerate(news):
                g = bc.groups[i]
                A = len(g.slots)
                XHt = XHt_all[:, offsets[pos] : offsets[pos + 1]].reshape(m, A, g.k)
                XHt = np.ascontiguousarray(XHt.transpose(1, 0, 2))
                parts[i] = _frobenius_parts(g, H, B, XHt, masks, extras)
        for i in idx:
            new_state["H"][bc.groups[i].key] = stacks[i]
    out["groups"] = parts
    return new_state, out


def multi_stats_step(block: FitBlock, state: Any, bc: Any) -> tuple[Any, dict[str, float]]:
    """Validation and sums over the observed entries: ‖X‖², ΣX, observed count."""
    stats = check_block(block.X)
    m, n = block.X.shape
    n_missing = 0 if block.missing is None else int(block.missing.nnz)
    return state, {**stats, "n_obs": float(m * n - n_missing), "n_missing": float(n_missing)}


@dataclass
class Extract:
    """What the last pass keeps of every block: labels of every fit, H of some fits."""

    wsum: dict[GroupKey, np.ndarray]  # (n_slots, k): column sums of every fit's W
    keep: dict[GroupKey, list[int]]  # slots whose H is brought back


def extract_step(block: Any, state: dict[str, Any], req: Extract):
    """Replace a block's state by the sample labels of every fit and the kept H blocks.

    A sample's label is the factor with the largest coefficient once W's columns are
    scaled to unit sum (R NMF's ``predict``), as int16.
    """
    labels = {}
    kept = {}
    for key, H in state["H"].items():
        scaled = H.astype(np.float64) * req.wsum[key][:, :, None]
        labels[key] = np.argmax(scaled, axis=1).astype(np.int16)
        kept[key] = {slot: H[slot] for slot in req.keep.get(key, [])}
    return {"labels": labels, "H": kept}, {}


# -- the driver-side model --------------------------------------------------------------


def _penalty(config: MultiConfig, W: np.ndarray, hsum: np.ndarray, HHt: np.ndarray) -> float:
    total = 0.0
    if config.l1_w or config.l2_w:
        W64 = W.astype(np.float64, copy=False)
        total += config.l1_w * float(W64.sum())
        total += 0.5 * config.l2_w * float(np.einsum("ij,ij->", W64, W64))
    if config.l1_h:
        total += config.l1_h * float(np.sum(hsum))
    if config.l2_h:
        total += 0.5 * config.l2_h * float(np.trace(HHt))
    return total


class MultiFitModel:
    """The driver's view of a multi-fit: a W per fit, scores and batched W steps.

    Every fit is one "run" of the engine's driver, which tracks convergence per fit. W
    steps are deferred to the next broadcast so that the fits of one group are updated
    by one vectorised solve.
    """

    step = staticmethod(multifit_step)

    def __init__(
        self,
        config: MultiConfig,
        fits: list[FitSpec],
        Ws: list[np.ndarray],
        mean: float,
        xx: float,
    ):
        self.config = config
        self.fits = fits
        self.Ws = [np.ascontiguousarray(W) for W in Ws]
        self.mean = mean
        self.xx = xx
        self.n_runs = len(fits)
        self.groups: dict[GroupKey, list[int]] = {}
        self.slot: list[tuple[GroupKey, int]] = []
        padded = rank_buckets([spec.k for spec in fits])
        for f, spec in enumerate(fits):
            key = (spec.variant, padded[spec.k], config.masked_data or spec.rep >= 0)
            members = self.groups.setdefault(key, [])
            self.slot.append((key, len(members)))
            members.append(f)
        self.test_errors = [math.nan] * len(fits)
        self._pending: list[int] = []
        self._casts: list[GroupCast] = []
        self._where: dict[int, tuple[int, int]] = {}
        self._partials: Any = None
        self._scores: dict[int, tuple[float, float]] | None = None

    # -- broadcast and deferred W steps --------------------------------------------------
    def broadcast(self, active: list[int], first: bool) -> MultiCast:
        with single_threaded_blas():  # many small solves: BLAS threads only get in the way
            self._flush()
        by_group: dict[GroupKey, list[int]] = {}
        for f in active:
            by_group.setdefault(self.slot[f][0], []).append(f)
        casts: list[GroupCast] = []
        where: dict[int, tuple[int, int]] = {}
        for key, members in by_group.items():
            k = key[1]
            Wa = [_pad(self.Ws[f], k) for f in members]
            starts = np.array(
                [np.sqrt(max(self.mean, 0.0) / self.fits[f].k) or 1.0 for f in self.groups[key]]
            )
            for a, f in enumerate(members):
                where[f] = (len(casts), a)
            casts.append(
                GroupCast(
                    key=key,
                    n_slots=len(self.groups[key]),
                    slots=np.array([self.slot[f][1] for f in members], dtype=np.int64),
                    reps=tuple(self.fits[f].rep for f in members),
                    W=np.ascontiguousarray(np.hstack(Wa)) if len(Wa) > 1 else Wa[0],
                    grams=np.stack([gram(W) for W in Wa]).reshape(len(Wa), k, k),
                    h_start=starts,
                )
            )
        self._casts, self._where, self._scores = casts, where, None
        return MultiCast(self.config, casts, validate=first)

    def _flush(self) -> None:
        if not self._pending:
            return
        by_cast: dict[int, list[tuple[int, int]]] = {}
        for f in self._pending:
            ci, a = self._where[f]
            by_cast.setdefault(ci, []).append((f, a))
        parts = self._partials["groups"]
        for ci, items in by_cast.items():
            p = parts[ci]
            fits = [f for f, _ in items]
            pos = np.array([a for _, a in items])
            k = self._casts[ci].k
            new = self._w_step(self._casts[ci], p, pos, [_pad(self.Ws[f], k) for f in fits])
            for f, W in zip(fits, new, strict=True):
                self.Ws[f] = np.ascontiguousarray(W[:, : self.fits[f].k])
        self._pending = []

    def _w_step(
        self, cast: GroupCast, p: dict[str, Any], pos: np.ndarray, Ws: list[np.ndarray]
    ) -> list[np.ndarray]:
        cfg = self.config
        dtype = Ws[0].dtype
        W0 = np.stack([W.T.astype(np.float64) for W in Ws])  # (P, k, m)
        if cfg.loss == "kl":
            denom = p["denomW"][pos].transpose(0, 2, 1) + (cfg.l1_w + EPS)
            if cfg.l2_w:
                denom = denom + cfg.l2_w * W0
            new = W0 * p["numer"][pos].transpose(0, 2, 1) / np.maximum(denom, EPS)
        else:
            G = p["rowG"][pos] if cast.key[2] else p["HHt"][pos]
            B = p["XHt"][pos].transpose(0, 2, 1)
            new = _solve(cfg, G, B, W0, cfg.l1_w, cfg.l2_w)
        return [np.ascontiguousarray(w.T).astype(dtype) for w in new]

    # -- scores --------------------------------------------------------------------------
    def _score_all(self, partials: dict[str, Any]) -> dict[int, tuple[float, float]]:
        scores: dict[int, tuple[float, float]] = {}
        cfg = self.config
        for f, (ci, a) in self._where.items():
            cast = self._casts[ci]
            p = partials["groups"][ci]
            HHt = p["HHt"][a]
            masked = cast.key[2]
            xx_ho = float(p["xx_ho"][a]) if "xx_ho" in p else 0.0
            xx = self.xx - xx_ho
            if masked and "quad" in p:
                quad = float(p["quad"][a])
            else:
                quad = float(np.einsum("ij,ij->", cast.grams[a], HHt))
            sq = max(xx - 2.0 * float(p["cross"][a]) + quad, 0.0)
            data = float(p["div"][a]) if cfg.loss == "kl" else 0.5 * sq
            obj = data + _penalty(cfg, self.Ws[f], p["hsum"][a], HHt)
            rel = math.sqrt(sq / xx) if xx > 0 else 0.0
            scores[f] = (obj, rel)
            if "sse_test" in p and self.fits[f].rep >= 0 and xx_ho > 0:
                self.test_errors[f] = math.sqrt(float(p["sse_test"][a]) / xx_ho)
        return scores

    def score(self, run: int, partials: dict[str, Any], index: int) -> tuple[float, float]:
        if self._scores is None:
            self._partials = partials
            self._scores = self._score_all(partials)
        return self._scores[run]

    def advance(self, run: int, partials: dict[str, Any], index: int) -> None:
        if not self.config.fixed_w:
            self._pending.append(run)

    def extract_request(self, keep: dict[GroupKey, list[int]]) -> Extract:
        wsum = {}
        for key, members in self.groups.items():
            wsum[key] = np.stack(
                [_pad(self.Ws[f], key[1]).astype(np.float64).sum(axis=0) for f in members]
            )
        return Extract(wsum=wsum, keep=keep)


def start_factors(
    fits: list[FitSpec], m: int, mean: float, seed: int | None, dtype: np.dtype
) -> list[np.ndarray]:
    """A random W per fit, seeded by (seed, k, variant, rep, run) alone.

    So a fit starts the same way whatever other fits run with it.
    """
    base = 0 if seed is None else int(seed)
    out = []
    for spec in fits:
        key = [base, spec.k, VARIANTS.index(spec.variant), spec.rep + 1, spec.run]
        rng = np.random.default_rng(key)
        out.append(random_w(m, spec.k, mean, rng, dtype))
    return out


@dataclass
class MultiFitOutcome:
    """Everything a multi-fit leaves: per fit scores, W, labels, and the kept H."""

    fits: list[FitSpec]
    Ws: list[np.ndarray]
    objectives: list[list[float]]
    relative_errors: list[list[float]]
    n_iter: list[int]
    converged: list[bool]
    test_errors: list[float]
    labels: dict[int, np.ndarray]  # fit index -> (n,) int16
    H: dict[int, np.ndarray]  # fit index -> (k, n) for the kept fits
    xx: float
    n_obs: float
    n_missing: float
    total_s: float
    iter_times: list[float] = field(default_factory=list)


def require_entries(stats: dict[str, float]) -> None:
    if stats["xx"] == 0:
        raise InputError("X is all zeros (on its observed entries); there is nothing to fit")


def run_multifit(
    executor: Executor,
    fits: list[FitSpec],
    config: MultiConfig,
    *,
    dtype: np.dtype,
    max_iter: int,
    tol: float,
    seed: int | None,
    Ws: list[np.ndarray] | None = None,
    keep: list[int] | None = None,
    progress: Any = None,
    callback: Any = None,
) -> MultiFitOutcome:
    """Validate, start, iterate all ``fits`` together, then bring back labels and some H.

    Parameters
    ----------
    executor : Executor
        Over a ``MaskedSource`` (its blocks are ``FitBlock``).
    fits : list of FitSpec
    Ws : list of ndarray, optional
        Starting W per fit (default: seeded random starts, see ``start_factors``).
    keep : list of int, optional
        Fits whose H is brought back (default: the lowest-objective fit of every
        (variant, k) among the fits of all observed entries).

    Returns
    -------
    MultiFitOutcome
    """
    stats = executor.map_reduce(multi_stats_step, None)
    require_entries(stats)
    m, _ = executor.source.shape
    mean = float(stats["xsum"]) / max(1.0, float(stats["n_obs"]))
    if Ws is None:
        Ws = start_factors(fits, m, mean, seed, dtype)
    model = MultiFitModel(config, fits, Ws, mean, float(stats["xx"]))
    small = executor.source.nbytes <= SMALL_INPUT_BYTES
    with single_threaded_blas() if small else contextlib.nullcontext():
        trace = run_alternating(
            model, executor, max_iter=max_iter, tol=tol, callback=callback, progress=progress
        )
    finals = [hist[-1] for hist in trace.objectives]
    if keep is None:
        best: dict[tuple[str, int], int] = {}
        for f, spec in enumerate(fits):
            if spec.rep >= 0:
                continue
            vk = (spec.variant, spec.k)
            if vk not in best or finals[f] < finals[best[vk]]:
                best[vk] = f
        keep = sorted(best.values())
    request: dict[GroupKey, list[int]] = {}
    for f in keep:
        key, slot = model.slot[f]
        request.setdefault(key, []).append(slot)
    executor.map_reduce(extract_step, model.extract_request(request), read_x=False)
    states = list(executor.states())
    labels: dict[int, np.ndarray] = {}
    H: dict[int, np.ndarray] = {}
    for f, spec in enumerate(fits):
        key, slot = model.slot[f]
        if spec.rep < 0:
            labels[f] = np.concatenate([s["labels"][key][slot] for s in states])
    for f in keep:
        key, slot = model.slot[f]
        rows = fits[f].k
        H[f] = np.hstack([s["H"][key][slot][:rows] for s in states]).astype(dtype, copy=False)
    return MultiFitOutcome(
        fits=fits,
        Ws=model.Ws,
        objectives=trace.objectives,
        relative_errors=trace.relative_errors,
        n_iter=trace.n_iter,
        converged=trace.converged,
        test_errors=model.test_errors,
        labels=labels,
        H=H,
        xx=float(stats["xx"]),
        n_obs=float(stats["n_obs"]),
        n_missing=float(stats["n_missing"]),
        total_s=trace.total_s,
        iter_times=trace.iter_times,
    )
