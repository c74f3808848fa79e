"""The one block step: every alternating model's iteration on one column block.

Plain NMF, restarts, masks, many fits of different ranks (rank survey, permuted null,
held-out replicates), lNMF, jNMF, iNMF and transfer all run :func:`fit_step`. A *fit* is
one factorization the driver tracks; active fits that can share work form a group keyed
``(variant, ranks per dataset, masked)``: the data or its column-permuted null, the basis
width per dataset (nearby ranks padded with zero columns into one vectorised solve), and
whether entries may be hidden. Per variant one ``WᵀX_j`` GEMM serves every group and one
``X_j Hᵀ`` GEMM gives every fit's W-step statistics.

Masks are *corrections*: a block with no hidden entry takes exactly the unmasked path, so a
mask that hides nothing gives the unmasked fit bit for bit; one with hidden entries solves
with per-column Grams ``G − Σ_missing w_i w_iᵀ`` and emits the removals for the W step.
Partials are ``{"groups": {group index: {dataset: statistics}}}``, summed over the union of
keys (``engine.reduce``).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.io.errors import InputError
from scalenmf.io.masked import FitBlock, block_matrix
from scalenmf.kernels.backend import NUMPY, backend_for
from scalenmf.kernels.batched import quad_form, removed_grams
from scalenmf.kernels.fixed import solve_fixed_basis_kl
from scalenmf.kernels.hashing import heldout_pattern, permute_columns_dense, permute_columns_sparse
from scalenmf.kernels.mu import kl_block, kl_row_hessians, mu_kl_h, wh_at
from scalenmf.kernels.nnls import COMPILED_KL

VARIANTS = ("data", "null")
SOLVERS = ("als", "hals", "mu")
LOSSES = ("frobenius", "kl")
INITS = ("nndsvda", "nndsvd", "random")
#: (loss, solver) pairs that run with masks and many ranks (every pair that exists).
SUPPORTED = {("frobenius", "als"), ("frobenius", "hals"), ("frobenius", "mu"), ("kl", "mu")}
#: Coordinate sweeps at most per exact (``nnls="cd"``) ALS half-step.
ALS_SWEEPS = 50

GroupKey = tuple[str, tuple[int, ...], bool]  # (variant, rank per dataset, masked)


@dataclass(frozen=True)
class NMFConfig:
    """Everything a block step and a W step need to know about the model (pickles).

    Attributes
    ----------
    k : int
        Rank (0 where every fit has its own).
    solver : {"als", "hals", "mu"}
        Exact NNLS (``nnls``: "bpp" pivoting or "cd" to ``inner_tol``) each half-step,
        ``inner_sweeps`` coordinate sweeps, or one multiplicative step.
    loss : {"frobenius", "kl"}
    l1_w, l1_h, l2_w, l2_h : float
        Penalties ``l1·Σ + ½ l2·‖·‖²``.
    cv_fraction, cv_seed, null_seed : float, int, int
        Held-out share and the seeds of held-out patterns and of the permuted null.
    masked_data : bool
        X has missing entries. ``fixed_w``: solve H only.
    backend, device : str
        Where the kernels run (``kernels.backend``): numpy, or torch on "cpu" / "cuda" /
        "auto" (resolved by every process for itself, so mixed clusters work).
    gpu_memory_limit : int, optional
        Bytes of X blocks that may stay resident on a GPU.
    mu_steps : int
        KL multiplicative H steps per block step (the online solver takes several: it sees
        each block once per epoch).
    kl_h : {"mu", "cd"}
        The KL H step: ``mu_steps`` multiplicative steps, or coordinate descent with Newton
        steps (``inner_sweeps`` sweeps at most, each column stopping when its projected
        gradient is within ``inner_tol`` of its scale; numpy, no hidden entries).
    kl_hessian : bool
        KL: the block step also returns ``rowQ``, the loss's Hessian in each row of W
        (``kernels.mu.kl_row_hessians``), for the online solver's Newton W step.
    """

    k: int = 0
    solver: str = "als"
    loss: str = "frobenius"
    l1_w: float = 0.0
    l1_h: float = 0.0
    l2_w: float = 0.0
    l2_h: float = 0.0
    nnls: str = "bpp"
    inner_sweeps: int = 3
    inner_tol: float = 1e-4
    cv_fraction: float = 0.05
    cv_seed: int = 0
    null_seed: int = 0
    masked_data: bool = False
    fixed_w: bool = False
    backend: str = "numpy"
    device: str = "cpu"
    gpu_memory_limit: int | None = None
    mu_steps: int = 1
    kl_h: str = "mu"
    kl_hessian: bool = False


def check_supported(loss: str, solver: str) -> None:
    """Raise a clear error for a (loss, solver) pair that does not exist."""
    if (loss, solver) not in SUPPORTED:
        pairs = ", ".join(f"{s} ({lo})" for lo, s in sorted(SUPPORTED))
        raise ValueError(f"the solvers are {pairs}; got solver={solver!r} with loss={loss!r}")


def solve_nnls(
    config: NMFConfig, G: Any, B: Any, X0: Any, l1: float, l2: float, ops: Any = NUMPY
) -> Any:
    """One half-step of a batch of fits, the one solver dispatch: G (A, k, k) or
    (A, n, k, k), B and the current factor X0 (A, k, n), on the backend ``ops``."""
    if config.solver == "mu":
        return ops.mu_frobenius(G, B, X0, l1=l1, l2=l2)
    if config.solver == "als" and config.nnls == "bpp":
        return ops.nnls_bpp(G, B, X0, l1=l1, l2=l2)[0]
    # Exact CD: every column meets the KKT test to inner_tol or is finished by pivoting.
    sweeps, tol = (
        (ALS_SWEEPS, config.inner_tol) if config.solver == "als" else (config.inner_sweeps, 0.0)
    )
    return ops.nnls_cd(G, B, X0, l1=l1, l2=l2, max_sweeps=sweeps, tol=tol, finish=tol > 0)[0]


def backend_of(config: NMFConfig) -> Any:
    """The backend the config asks for (numpy on the host unless ``backend="torch"``)."""
    if config.backend == "numpy":
        return NUMPY
    return backend_for(config.backend, config.device, config.gpu_memory_limit)


# -- what travels to the blocks ----------------------------------------------------------


@dataclass
class GroupCast:
    """One group of the broadcast: the active fits' bases and Grams, per dataset."""

    key: GroupKey
    members: tuple[int, ...]  # fit index of every slot of the group's H stack
    slots: np.ndarray  # (A,) the active slots
    reps: tuple[int, ...]  # held-out replicate of each active slot (−1: none)
    W: list[np.ndarray]  # per dataset: (m, A·k_d), data dtype
    grams: list[np.ndarray]  # per dataset: (A, k_d, k_d) float64
    h_start: np.ndarray  # (n_slots,) constant start of H (MU and KL need H > 0)

    @property
    def n_slots(self) -> int:
        return len(self.members)

    @functools.cached_property
    def whole(self) -> bool:
        """Every slot of the stack is active, in order (its H is the stack itself)."""
        s = self.slots.tolist()  # a handful of slots: Python beats two numpy calls here
        return len(s) == self.n_slots and all(a < b for a, b in itertools.pairwise(s))


@dataclass
class StepCast:
    config: NMFConfig
    groups: list[GroupCast]
    validate: bool = False
    #: Emit ``XHt`` as ``X (H − H_old)ᵀ`` and ``HHt_change = H Hᵀ − H_old H_oldᵀ`` (H_old: the
    #: block's previous H): the online solver keeps exact full-data statistics by adding
    #: them (Frobenius only).
    delta: bool = False
    #: Columns of H still all zero (never solved, Frobenius) start the solve at the clipped
    #: unconstrained solution ``max(G⁻¹ (B − l1), 0)``: a few coordinate sweeps from there
    #: come within 1e-6 of exact NNLS where the same sweeps from 0 miss by 1 % (online).
    ls_start: bool = False
    #: With ``delta``: per block index, the weight its previous statistics carry in the
    #: driver's sums (absent: 1); the block then returns ``X (H − α H_old)ᵀ``, ``H Hᵀ −
    #: α H_old H_oldᵀ``, so the sums hold every block once, its latest H weighted 1.
    old_weight: dict[int, float] | None = None
    #: With ``delta`` and KL ``kl_hessian``: per block index, the W its previous H was
    #: solved with (the layout of the group's W), so that the block can take its previous
    #: share of the rows' second-order models out of the driver's sums (absent: none).
    old_W: dict[int, np.ndarray] | None = None


@dataclass
class BlockState:
    """What a column block keeps between iterations: its dataset, per group key an
    (n_slots, k_d, n_j) stack of H, the permuted null block (made once), the held-out
    patterns per (variant, replicate), and the block's number."""

    dataset: int = 0
    H: dict[GroupKey, np.ndarray] = field(default_factory=dict)
    null: Any = None
    cv: dict[str, Any] = field(default_factory=dict)
    index: int = 0


def check_block(X: Block) -> dict[str, float]:
    """``{"xx": ‖X‖², "xsum": ΣX}`` of a block; InputError on NaN/Inf or negatives."""
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


def stats_step(X: Any, state: Any, bc: Any) -> tuple[Any, dict[str, float]]:
    """Block function for the statistics pass (validation, ‖X‖², ΣX); state untouched."""
    return state, check_block(block_matrix(X))


# -- data variants and held-out patterns ---------------------------------------------------


def _rep_seed(seed: int, rep: int) -> int:
    return int(seed) * 1_000_003 + int(rep) + 1


def permuted_block(block: FitBlock, seed: int) -> tuple[Any, sp.csc_matrix | None]:
    """The randomized null of a block: every column's entries (and missing marks) permuted."""
    if sp.issparse(block.X):
        Xp: Any = permute_columns_sparse(block.X, seed, block.start)
    else:
        Xp = permute_columns_dense(np.asarray(block.X), seed, block.start)
    miss = block.missing
    if miss is not None:
        miss = permute_columns_sparse(miss, seed, block.start)
    return Xp, miss


@dataclass
class MaskParts:
    """A fit's hidden entries in one block: all it may not see, and the held-out test set."""

    missing: sp.csc_matrix | None  # float 1.0 at every hidden entry
    heldout: sp.csc_matrix | None  # float 1.0 at the held-out entries
    heldout_x: sp.csc_matrix | None  # X at the held-out entries (non-zeros only)

    @property
    def empty(self) -> bool:
        return self.missing is None or self.missing.nnz == 0


def _values_at(X: Any, pattern: sp.csc_matrix) -> sp.csc_matrix:
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


def mask_parts(
    X: Any, user_missing: sp.csc_matrix | None, rep: int, config: NMFConfig, start: int
) -> MaskParts:
    """Hidden and held-out entries of a block for replicate ``rep`` (−1: none held out)."""
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
    return MaskParts(missing, ho, _values_at(X, ho))


def _heldout_sse(W: np.ndarray, H64: np.ndarray, mp: MaskParts) -> tuple[float, float]:
    """(‖X‖², ‖X − WH‖²) on the held-out entries."""
    x = mp.heldout_x
    if mp.heldout is None or not mp.heldout.nnz:
        return 0.0, 0.0
    xx = float(x.data @ x.data) if x is not None else 0.0
    wh = wh_at(W, H64, mp.heldout)
    xwh = float(wh_at(W, H64, x) @ x.data) if x is not None and x.nnz else 0.0
    return xx, max(float(wh @ wh) - 2.0 * xwh + xx, 0.0)


def _observed(X: Any, mp: MaskParts | None) -> Any:
    """X with the held-out entries set to 0 (the fit must not see them)."""
    if mp is None or mp.heldout_x is None or not mp.heldout_x.nnz:
        return X
    hx = mp.heldout_x
    if sp.issparse(X):
        out = sp.csc_matrix(X - hx.astype(X.dtype))
        out.eliminate_zeros()
        return out
    out = np.array(X, copy=True)
    out[hx.indices, np.repeat(np.arange(hx.shape[1]), np.diff(hx.indptr))] = 0
    return out


# -- the step ------------------------------------------------------------------------------


def _stack_start(config: NMFConfig, g: GroupCast, k: int, n_j: int, dtype: np.dtype, legacy: Any):
    """The group's H stack before its first update (from an init's per-fit H if given)."""
    const = config.solver == "mu" or config.loss == "kl"
    out = np.empty((g.n_slots, k, n_j), dtype=dtype)
    for s, f in enumerate(g.members):
        given = legacy[f] if isinstance(legacy, list) and f < len(legacy) else None
        if given is not None:
            out[s] = 0
            out[s, : given.shape[0]] = given
        else:
            out[s] = g.h_start[s] if const else 0
    return out


def _masks(st: BlockState, variant: str, Xv: Any, miss: Any, g: GroupCast, config, start):
    """Per active slot its ``MaskParts``, or None when no slot hides anything here."""
    if not g.key[2]:
        return None
    out = []
    for rep in g.reps:
        key = f"{variant}:{rep}"
        if key not in st.cv:
            st.cv[key] = mask_parts(Xv, miss, rep, config, start)
        out.append(st.cv[key])
    return None if all(mp.empty for mp in out) else out


def fit_step(block: Any, state: Any, bc: StepCast):
    """One iteration of every active fit on one column block.

    Parameters
    ----------
    block : FitBlock or ndarray / csc_matrix, shape (m, n_j)
    state : BlockState, or None / a list of per-fit H blocks (from an initialisation)
    bc : StepCast

    Returns
    -------
    new_state : BlockState
    partials : dict
        ``groups``: ``{group index: {dataset: statistics}}``, per active slot ``XHt``
        (A, m, k) or KL's ``numer``, ``HHt`` (A, k, k), ``cross`` = Σ x·wh, ``hsum``
        (A, k), KL ``div``; with hidden entries ``rowG_removed`` (A, m, k, k),
        ``denomW_removed`` (A, m, k), ``quad_removed``, ``xx_ho``, ``sse_test`` (A,).
    """
    fb = block if isinstance(block, FitBlock) else FitBlock(block, None, 0)
    legacy = state if isinstance(state, list) else None
    st = state if isinstance(state, BlockState) else BlockState()
    st = BlockState(st.dataset, dict(st.H), st.null, dict(st.cv), st.index)
    config, d = bc.config, st.dataset
    out: dict[str, Any] = {}
    if bc.validate:
        out.update(check_block(fb.X))
    groups: dict[int, Any] = {}
    with backend_of(config).stream():  # a GPU thread's own stream: copies overlap compute
        _variants_step(fb, st, bc, legacy, groups)
    out["groups"] = {i: {d: part} for i, part in groups.items()}
    return st, out


def _variants_step(fb: FitBlock, st: BlockState, bc: StepCast, legacy: Any, groups) -> None:
    """Every group's H step on the data and on its null, filling ``groups``."""
    config, d = bc.config, st.dataset
    for variant in VARIANTS:
        idx = [i for i, g in enumerate(bc.groups) if g.key[0] == variant]
        if not idx:
            continue
        if variant == "data":
            Xv, miss = fb.X, fb.missing
        else:
            if st.null is None:
                st.null = permuted_block(fb, config.null_seed)
            Xv, miss = st.null
        n_j = Xv.shape[1]
        dtype = bc.groups[idx[0]].W[d].dtype
        stacks = {}
        for i in idx:
            g = bc.groups[i]
            H = st.H.get(g.key)
            stacks[i] = (
                H if H is not None else _stack_start(config, g, g.key[1][d], n_j, dtype, legacy)
            )
        masks = {i: _masks(st, variant, Xv, miss, bc.groups[i], config, fb.start) for i in idx}
        if config.loss == "kl":
            prev = None
            if bc.delta and bc.old_W and st.index in bc.old_W:
                prev = (
                    bc.old_weight.get(st.index, 1.0) if bc.old_weight else 1.0,
                    bc.old_W[st.index],
                )
            for i in idx:
                seen = prev if st.H.get(bc.groups[i].key) is not None else None
                stacks[i], groups[i] = _kl_group(
                    config, bc.groups[i], d, Xv, stacks[i], masks[i], seen
                )
        else:
            groups.update(
                _frobenius_groups(
                    config,
                    bc.groups,
                    idx,
                    d,
                    Xv,
                    stacks,
                    masks,
                    bc.delta,
                    bc.ls_start,
                    bc.old_weight.get(st.index, 1.0) if bc.old_weight else 1.0,
                )
            )
        for i in idx:
            st.H[bc.groups[i].key] = stacks[i]


def _frobenius_groups(
    config, casts, idx, d, Xv, stacks, masks, delta=False, ls_start=False, old_weight=1.0
) -> dict[int, Any]:
    """H steps of the Frobenius groups of one variant; their partials per group index.

    The products with X and the solves run on the config's backend; the corrections of
    hidden entries (scipy.sparse patterns) keep a variant with masks on numpy.
    """
    ops = NUMPY if any(masks[i] is not None for i in idx) else backend_of(config)
    n_j = Xv.shape[1]
    W_cat = np.hstack([casts[i].W[d] for i in idx]) if len(idx) > 1 else casts[idx[0]].W[d]
    Xb = ops.block(Xv, W_cat.dtype)
    B_all = ops.rhs(ops.array(W_cat), Xb)
    offsets = [0, *itertools.accumulate(casts[i].W[d].shape[1] for i in idx)]
    solved, for_xht = [], []
    for pos, i in enumerate(idx):
        g = casts[i]
        k, A = g.key[1][d], len(g.slots)
        B = B_all[offsets[pos] : offsets[pos + 1]].reshape(A, k, n_j)
        H0 = stacks[i] if g.whole else stacks[i][g.slots]
        G = g.grams[d]
        start = H0
        if ls_start and masks[i] is None and not H0.any(axis=1).all():
            start = _clipped_ls_start(G, ops.host(B, np.float64), H0, config.l1_h, config.l2_h)
        removed = None
        if masks[i] is not None:
            B = B.copy()
            removed = np.zeros((A, n_j, k, k))
            for a, mp in enumerate(masks[i]):
                Wa = g.W[d][:, a * k : (a + 1) * k]
                if mp.heldout_x is not None and mp.heldout_x.nnz:
                    B[a] -= np.asarray(mp.heldout_x.T @ Wa, dtype=np.float64).T
                if not mp.empty:
                    removed[a] = removed_grams(mp.missing, Wa)
            G = G[:, None] - removed
        H = solve_nnls(config, ops.array(G), B, ops.array(start), config.l1_h, config.l2_h, ops)
        H = ops.cast(H, H0.dtype)  # the state's dtype: X Hᵀ is taken of the H kept
        solved.append((i, H, B, removed, H0))
        if delta:
            H = H - (ops.array(H0) if old_weight == 1.0 else old_weight * ops.array(H0))
        for_xht.append(H.reshape(-1, n_j))
    XHt_all = ops.host(ops.x_ht(Xb, for_xht[0] if len(for_xht) == 1 else ops.vstack(for_xht)))
    m = XHt_all.shape[0]
    out = {}
    for pos, (i, H_dev, B_dev, removed, H_old) in enumerate(solved):
        g = casts[i]
        k, A = g.key[1][d], len(g.slots)
        H = ops.host(H_dev, stacks[i].dtype)
        if g.whole:
            stacks[i] = H
        else:
            stacks[i] = np.array(stacks[i], copy=True)
            stacks[i][g.slots] = H
        XHt = XHt_all[:, offsets[pos] : offsets[pos + 1]].reshape(m, A, k).transpose(1, 0, 2)
        H64 = H.astype(np.float64, copy=False)
        part: dict[str, Any] = {
            "XHt": np.ascontiguousarray(XHt),
            "HHt": np.matmul(H64, H64.transpose(0, 2, 1)),
            "cross": np.einsum("akn,akn->a", ops.host(B_dev, np.float64), H64),
            "hsum": H64.sum(axis=2),
        }
        if delta:  # XHt is then X (H − H_old)ᵀ
            part["HHt_change"] = part["HHt"] - old_weight * _gram(H_old)
            part["hsum_change"] = part["hsum"] - old_weight * H_old.astype(np.float64).sum(axis=2)
        if removed is not None:
            _mask_terms(part, g, d, H64, masks[i], removed)
        out[i] = part
    return out


def _clipped_ls_start(
    G: np.ndarray, B: np.ndarray, H0: np.ndarray, l1: float, l2: float
) -> np.ndarray:
    """``H0`` (A, k, n) with its all-zero columns replaced by ``max((G + l2 I)⁻¹ (B − l1), 0)``.

    ``G`` (A, k, k) and ``B = Wᵀ X`` (A, k, n) are the NNLS problem's Gram and right-hand
    side; a singular Gram (a zero factor) falls back to its pseudo-inverse."""
    fresh = np.logical_not(np.asarray(H0).any(axis=1)).reshape(H0.shape[0], -1)  # (A, n)
    if not fresh.any():
        return H0
    out = np.array(H0, copy=True)
    k = G.shape[-1]
    for a in range(G.shape[0]):
        cols = np.flatnonzero(fresh[a])
        if not cols.size:
            continue
        Ga = G[a] + l2 * np.eye(k)
        rhs_a = B[a][:, cols] - l1
        try:
            sol = np.linalg.solve(Ga, rhs_a)
        except np.linalg.LinAlgError:
            sol = np.linalg.pinv(Ga) @ rhs_a
        out[a][:, cols] = np.maximum(sol, 0.0)
    return out.astype(H0.dtype, copy=False)


def _gram(H: np.ndarray) -> np.ndarray:
    """``H Hᵀ`` per slot in float64, (A, k, k)."""
    H64 = H.astype(np.float64, copy=False)
    return np.matmul(H64, H64.transpose(0, 2, 1))


def _mask_terms(part, g: GroupCast, d: int, H64, masks: list[MaskParts], removed) -> None:
    """The corrections a block with hidden entries adds to a group's partials."""
    A, k = H64.shape[0], H64.shape[1]
    m = part["XHt"].shape[1]
    part["rowG_removed"] = np.zeros((A, m, k, k))
    part["xx_ho"] = np.zeros(A)
    part["sse_test"] = np.zeros(A)
    part["quad_removed"] = quad_form(removed, H64)
    for a, mp in enumerate(masks):
        Wa = g.W[d][:, a * k : (a + 1) * k]
        if mp.heldout_x is not None and mp.heldout_x.nnz:
            part["XHt"][a] -= np.asarray(mp.heldout_x @ H64[a].T)
        if not mp.empty:
            part["rowG_removed"][a] = removed_grams(sp.csr_matrix(mp.missing).T, H64[a].T)
        part["xx_ho"][a], part["sse_test"][a] = _heldout_sse(Wa, H64[a], mp)


def _kl_group(config, g: GroupCast, d: int, Xv, stack, masks, prev=None):
    """KL H steps of one group (slot by slot: ``mu_steps`` multiplicative steps, or
    coordinate descent where ``config.kl_h == "cd"``) and its W-step statistics (on the
    config's backend when no entry is hidden). With ``config.kl_hessian`` also each row
    of W's second-order model of the block's loss (``rowQ``, ``rowLin``: see
    ``kl_row_model``), less ``α`` times the block's previous one where ``prev = (α,
    W_old)`` (the W its previous H was solved with), so that the driver's sums hold
    every block once."""
    H_prev = stack
    k = g.key[1][d]
    ops = NUMPY if masks is not None else backend_of(config)
    stack = np.array(stack, copy=True)
    # Coordinate descent is compiled for the CPU: its blocks take the host path.
    cd = config.kl_h == "cd" and COMPILED_KL is not None and ops is NUMPY
    Xb = None if masks is not None or cd else ops.block(Xv, stack.dtype)
    parts = []
    for a, slot in enumerate(g.slots):
        W = g.W[d][:, a * k : (a + 1) * k]
        mp = None if masks is None else masks[a]
        if Xb is None:
            Xobs = _observed(Xv, mp)
            missing = None if mp is None or mp.empty else mp.missing
            H = stack[slot]
            if cd and missing is None:
                H = solve_fixed_basis_kl(
                    W,
                    Xobs,
                    H,
                    l1=config.l1_h,
                    l2=config.l2_h,
                    max_iter=config.inner_sweeps,
                    tol=config.inner_tol,
                )[0]
            else:
                for _ in range(config.mu_steps):
                    H = mu_kl_h(W, Xobs, H, l1=config.l1_h, l2=config.l2_h, missing=missing)
            numer, hsum, div, x_wh = kl_block(W, Xobs, H)
        else:
            Wd = ops.array(W)
            H_dev = ops.array(stack[slot])
            for _ in range(config.mu_steps):
                H_dev = ops.mu_kl_h(Wd, Xb, H_dev, l1=config.l1_h, l2=config.l2_h)
            numer, hsum, div, x_wh = ops.kl_block(Wd, Xb, H_dev)
            H, numer, hsum = ops.host(H_dev), ops.host(numer), ops.host(hsum)
        stack[slot] = H
        H64 = H.astype(np.float64, copy=False)
        part: dict[str, Any] = {
            "numer": numer,
            "hsum": hsum,
            "div": div,
            "cross": x_wh,
            "HHt": H64 @ H64.T,
        }
        if config.kl_hessian:
            Xo = _observed(Xv, mp)
            part["rowQ"], part["rowLin"] = kl_row_model(W, Xo, H64, numer, hsum)
            if prev is not None and prev[0] != 0.0:
                W_old = prev[1][:, a * k : (a + 1) * k]
                H_old = np.asarray(H_prev[slot], dtype=np.float64)
                numer_old, hsum_old = kl_block(W_old, Xo, H_old)[:2]
                Q_old, lin_old = kl_row_model(W_old, Xo, H_old, numer_old, hsum_old)
                part["rowQ"] = part["rowQ"] - prev[0] * Q_old
                part["rowLin"] = part["rowLin"] - prev[0] * lin_old
        if masks is not None:
            removed = np.zeros((H.shape[1], k, k))
            part["denomW_removed"] = np.zeros(W.shape)
            if missing is not None:
                part["div"] = div - float(wh_at(W, H64, missing).sum())
                part["denomW_removed"] = np.asarray(missing @ H64.T)
                removed = removed_grams(missing, W)
            part["quad_removed"] = float(quad_form(removed[None], H64[None])[0])
            part["xx_ho"], part["sse_test"] = _heldout_sse(W, H64, mp) if mp else (0.0, 0.0)
        parts.append(part)
    return stack, {key: np.stack([np.asarray(p[key]) for p in parts]) for key in parts[0]}


def kl_row_model(
    W: np.ndarray, X: Any, H: np.ndarray, numer: np.ndarray, hsum: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each row of W's second-order model of a block's KL loss at ``W``, for the Newton
    W step: ``½ wᵀ Q_i w + lin_iᵀ w`` with ``Q_i`` the row's Hessian (m, k, k) and
    ``lin_i = g_i − Q_i w_i`` (m, k), ``g = 1·Hᵀ − (X ⊘ WH) Hᵀ`` its gradient (``numer`` and
    ``hsum`` of ``kl_block``). Float64."""
    Q = kl_row_hessians(W, X, H)
    grad = np.asarray(hsum, np.float64)[None, :] - numer
    return Q, grad - np.einsum("iab,ib->ia", Q, np.asarray(W, dtype=np.float64))


# -- passes other than the iteration ----------------------------------------------------


def fit_stats_step(block: Any, state: Any, bc: Any) -> tuple[Any, dict[str, Any]]:
    """Validation and sums over the observed entries, per dataset: ‖X‖², ΣX, counts."""
    fb = block if isinstance(block, FitBlock) else FitBlock(block, None, 0)
    stats = check_block(fb.X)
    m, n = fb.X.shape
    missing = 0 if fb.missing is None else int(fb.missing.nnz)
    d = state.dataset if isinstance(state, BlockState) else 0
    obs = {"n_obs": float(m * n - missing), "n_missing": float(missing)}
    return state, {"datasets": {d: {**stats, **obs}}}


def dataset_totals(stats: dict[str, Any], n_datasets: int) -> dict[str, np.ndarray]:
    """The per-dataset sums of ``fit_stats_step`` as arrays of length ``n_datasets``."""
    keys = ("xx", "xsum", "n_obs", "n_missing")
    per = stats["datasets"]
    return {
        key: np.array([per.get(d, {}).get(key, 0.0) for d in range(n_datasets)]) for key in keys
    }


def require_entries(xx: float) -> None:
    if xx == 0:
        raise InputError("X is all zeros (on its observed entries); there is nothing to fit")


@dataclass
class Extract:
    """What the last pass keeps of every block: sample labels of some fits, H of others."""

    wsum: dict[GroupKey, np.ndarray]  # (n_slots, k): column sums of every fit's W
    keep: dict[GroupKey, list[int]]  # slots whose H is brought back
    labels: bool = True


def extract_step(block: Any, state: BlockState, req: Extract):
    """Replace a block's state by every fit's int16 labels (the largest coefficient, W's
    columns scaled to unit sum, as R NMF's ``predict``) and the kept H blocks."""
    labels = {}
    kept = {}
    for key, H in state.H.items():
        if req.labels and key in req.wsum:
            scaled = H.astype(np.float64) * req.wsum[key][:, :, None]
            labels[key] = np.argmax(scaled, axis=1).astype(np.int16)
        kept[key] = {slot: H[slot] for slot in req.keep.get(key, [])}
    return {"dataset": state.dataset, "labels": labels, "H": kept}, {}


def initial_states(block_dataset: list[int]) -> list[BlockState]:
    """One empty state per column block, each knowing its dataset."""
    return [BlockState(int(d), index=j) for j, d in enumerate(block_dataset)]


__all__ = [
    "BlockState",
    "Extract",
    "GroupCast",
    "NMFConfig",
    "StepCast",
    "check_supported",
    "extract_step",
    "fit_stats_step",
    "fit_step",
    "initial_states",
    "solve_nnls",
]
