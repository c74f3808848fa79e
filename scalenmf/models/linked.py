"""Linked NMF (lNMF), joint NMF and linked transfer learning on the one-pass engine.

For datasets A_1 … A_K with the same features, linked NMF (seed 003, eq. 4) minimises::

    Σ_d ‖A_d − W H_d − U_d V_d‖²_F     (or the generalized KL divergence)

with a shared basis W (m × k_shared) and a unique basis U_d (m × k_unique_d) per dataset.
It is NMF with the full basis ``[W | U_1 | … | U_K]`` and a block-structured H whose
structural zeros are kept: the samples of dataset d use only the factors
``shared ∪ unique_d``. Every column block belongs to one dataset (``ChainedSource``), so
the block step solves its H-block with the sub-basis of that dataset alone, and the
structural zeros are never stored: they are exactly zero by construction. The summed
statistics ``Σ X_j H_jᵀ`` and ``Σ H_j H_jᵀ`` then have the block structure of eq. (14), and
the W step is the ordinary row-wise update of the full basis — the linked update of W and
the unique updates of every U_d at once, each from the samples that use it.

jNMF is the case ``k_unique = 0``. Linked transfer learning (eq. 7) is one dataset whose
shared basis W is given and held fixed: only U (and H, V) are learned.

The block step here is written for any model whose H-step, per dataset, is an NNLS (or
MU) problem with a dataset-specific basis and Gram matrix: iNMF (``models/inmf.py``)
reuses it with ``W + V_d`` as the basis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalenmf._typing import Block
from scalenmf.kernels import gram, kl_block, mu_kl_h, rhs, x_ht
from scalenmf.kernels.mu import EPS
from scalenmf.models.nmf import NMFConfig, _update_h, check_block, objective, update_w

# -- which factors every dataset uses ---------------------------------------------------


@dataclass(frozen=True)
class LinkedLayout:
    """The columns of the full basis ``[W | U_1 | … | U_K]`` and who uses them.

    Attributes
    ----------
    k_shared : int
        Columns of W (used by every dataset).
    k_unique : tuple of int
        Columns of U_d per dataset (0: none, as in jNMF).
    n_fixed : int
        Leading columns held fixed (transfer learning: the given W); 0 otherwise.
    """

    k_shared: int
    k_unique: tuple[int, ...]
    n_fixed: int = 0

    @property
    def n_datasets(self) -> int:
        return len(self.k_unique)

    @property
    def total(self) -> int:
        return self.k_shared + sum(self.k_unique)

    def unique_slice(self, d: int) -> slice:
        start = self.k_shared + sum(self.k_unique[:d])
        return slice(start, start + self.k_unique[d])

    def factors(self, d: int) -> np.ndarray:
        """Indices of the full-basis columns that dataset ``d`` uses (shared, then unique)."""
        u = self.unique_slice(d)
        return np.concatenate([np.arange(self.k_shared), np.arange(u.start, u.stop)]).astype(
            np.int64
        )

    def mask(self) -> np.ndarray:
        """``(total, n_datasets)`` bool: factor i may be non-zero in dataset d's H."""
        out = np.zeros((self.total, self.n_datasets), dtype=bool)
        for d in range(self.n_datasets):
            out[self.factors(d), d] = True
        return out


# -- block state, broadcast and the step ------------------------------------------------


@dataclass
class DatasetBlock:
    """State of one column block: its dataset, its index and the H-block of every run.

    ``H[run]`` holds only the rows of the factors the dataset uses (``k_d × n_j``).
    """

    dataset: int
    index: int
    H: list[np.ndarray | None] = field(default_factory=list)


@dataclass(frozen=True)
class StatPlan:
    """Where the per-dataset statistics of a block go.

    ``slot[d]`` is the slab of the ``XHt`` partial that dataset d writes (0 for lNMF, where
    every dataset writes the same m × total matrix; d for iNMF, which needs them apart),
    ``cols[d]`` the columns of that slab it fills, ``width`` the slab width.
    """

    n_datasets: int
    n_slots: int
    width: int
    slot: tuple[int, ...]
    cols: tuple[tuple[int, ...], ...]


@dataclass
class DatasetBroadcast:
    """What travels to every block: per dataset, the stacked bases and Grams of the runs."""

    config: NMFConfig
    plan: StatPlan
    bases: list[np.ndarray]  # per dataset: (m, len(active) * k_d)
    grams: list[list[np.ndarray]]  # per dataset, per active run: (k_d, k_d) float64
    active: tuple[int, ...]
    n_runs: int
    h_start: list[float]


def dataset_stats_step(X: Block, state: DatasetBlock, n_datasets: int):
    """Statistics pass: validate the block, ‖X_d‖² and ΣX_d per dataset; state untouched."""
    stats = check_block(X)
    xx = np.zeros(n_datasets)
    xsum = np.zeros(n_datasets)
    xx[state.dataset] = stats["xx"]
    xsum[state.dataset] = stats["xsum"]
    return state, {"xx": xx, "xsum": xsum}


def _start_h(config: NMFConfig, start: float, k: int, n: int, dtype: np.dtype) -> np.ndarray:
    if config.solver == "mu" or config.loss == "kl":
        return np.full((k, n), start, dtype=dtype)
    return np.zeros((k, n), dtype=dtype)


def _empty_parts(plan: StatPlan) -> dict[str, Any]:
    n, w = plan.n_datasets, plan.width
    return {
        "HHt": np.zeros((n, w, w)),
        "cross": np.zeros(n),
        "hsum": np.zeros((n, w)),
    }


def dataset_step(X: Block, state: DatasetBlock, bc: DatasetBroadcast):
    """One iteration on one column block: the H-step of its dataset, then the partials.

    Parameters
    ----------
    X : ndarray or csc_matrix, shape (m, n_j)
    state : DatasetBlock
    bc : DatasetBroadcast

    Returns
    -------
    new_state : DatasetBlock
    partials : dict
        ``runs``: per active run ``XHt`` (n_slots, m, width), ``HHt`` (n_datasets, width,
        width), ``cross`` (n_datasets,), ``hsum`` (n_datasets, width), and for KL
        ``numer`` (n_slots, m, width) and ``div`` (n_datasets,).
    """
    config, plan = bc.config, bc.plan
    d = state.dataset
    slot, cols = plan.slot[d], list(plan.cols[d])
    basis = bc.bases[d]
    k_d = len(cols)
    m, n_j = X.shape
    dtype = basis.dtype
    H_state: list[np.ndarray | None] = list(state.H) if state.H else [None] * bc.n_runs
    runs: list[dict[str, Any]] = []
    hs: list[np.ndarray] = []
    if config.loss == "kl":
        for idx, run in enumerate(bc.active):
            Wd = basis[:, idx * k_d : (idx + 1) * k_d]
            H = H_state[run]
            if H is None:
                H = _start_h(config, bc.h_start[run], k_d, n_j, dtype)
            H = mu_kl_h(Wd, X, H, l1=config.l1_h, l2=config.l2_h)
            numer, hsum, div, x_wh = kl_block(Wd, X, H)
            H_state[run] = H
            part = _empty_parts(plan)
            part["numer"] = _scatter_cols(numer, plan, slot, cols, m)
            part["div"] = _at(plan.n_datasets, d, div)
            _fill(part, d, cols, H, x_wh, hsum)
            runs.append(part)
    else:
        B_all = rhs(basis, X)
        for idx, run in enumerate(bc.active):
            B = B_all[idx * k_d : (idx + 1) * k_d]
            H = H_state[run]
            if H is None:
                H = _start_h(config, bc.h_start[run], k_d, n_j, dtype)
            H = _update_h(config, bc.grams[d][idx], B, H).astype(dtype, copy=False)
            H_state[run] = H
            hs.append(H)
        H_all = np.vstack(hs) if len(hs) > 1 else hs[0]
        XHt_all = x_ht(X, H_all)
        for idx, H in enumerate(hs):
            H64 = H.astype(np.float64, copy=False)
            B64 = B_all[idx * k_d : (idx + 1) * k_d].astype(np.float64, copy=False)
            part = _empty_parts(plan)
            part["XHt"] = _scatter_cols(
                XHt_all[:, idx * k_d : (idx + 1) * k_d], plan, slot, cols, m
            )
            _fill(part, d, cols, H64, float(np.einsum("ij,ij->", B64, H64)), H64.sum(axis=1))
            runs.append(part)
    return DatasetBlock(d, state.index, H_state), {"runs": runs}


def _at(n: int, d: int, value: float) -> np.ndarray:
    out = np.zeros(n)
    out[d] = value
    return out


def _scatter_cols(
    block: np.ndarray, plan: StatPlan, slot: int, cols: list[int], m: int
) -> np.ndarray:
    out = np.zeros((plan.n_slots, m, plan.width))
    out[slot][:, cols] = block
    return out


def _fill(
    part: dict[str, Any], d: int, cols: list[int], H: np.ndarray, cross: float, hsum: np.ndarray
) -> None:
    H64 = np.asarray(H, dtype=np.float64)
    part["HHt"][d][np.ix_(cols, cols)] = H64 @ H64.T
    part["cross"][d] = cross
    part["hsum"][d][cols] = hsum


# -- lNMF / jNMF / transfer as a model for the driver -----------------------------------


def linked_plan(layout: LinkedLayout) -> StatPlan:
    """Every dataset writes into one m × total slab, at the columns it uses."""
    return StatPlan(
        n_datasets=layout.n_datasets,
        n_slots=1,
        width=layout.total,
        slot=(0,) * layout.n_datasets,
        cols=tuple(tuple(int(c) for c in layout.factors(d)) for d in range(layout.n_datasets)),
    )


def summed(part: dict[str, Any]) -> dict[str, Any]:
    """A run's per-dataset partials summed over the datasets (the plain-NMF statistics)."""
    out: dict[str, Any] = {
        "HHt": part["HHt"].sum(axis=0),
        "cross": float(part["cross"].sum()),
        "hsum": part["hsum"].sum(axis=0),
    }
    if "XHt" in part:
        out["XHt"] = part["XHt"].sum(axis=0)
    if "numer" in part:
        out["numer"] = part["numer"].sum(axis=0)
        out["div"] = float(part["div"].sum())
    return out


def dataset_errors(G: np.ndarray, part: dict[str, Any], xx: np.ndarray) -> np.ndarray:
    """Relative Frobenius error per dataset, from the Gram trick on its own statistics."""
    out = np.zeros(xx.shape[0])
    for d in range(xx.shape[0]):
        sq = xx[d] - 2.0 * part["cross"][d] + float(np.einsum("ij,ij->", G, part["HHt"][d]))
        out[d] = np.sqrt(max(sq, 0.0) / xx[d]) if xx[d] > 0 else 0.0
    return out


def update_free_columns(
    config: NMFConfig, W: np.ndarray, part: dict[str, Any], n_fixed: int
) -> np.ndarray:
    """The W step with the first ``n_fixed`` columns held fixed (transfer learning).

    The free columns F solve their sub-problem exactly as ``update_w`` would, with the fixed
    columns' share moved to the right-hand side: ``XHt_F − W_fixed·HHt_{fixed,F}``. MU keeps
    the full model in its denominator, which is what makes it monotone.
    """
    if n_fixed == 0:
        return update_w(config, W, part)
    if n_fixed >= W.shape[1]:
        return W
    free = slice(n_fixed, W.shape[1])
    out = W.copy()
    if config.loss == "kl":
        sub = {"numer": part["numer"][:, free], "hsum": part["hsum"][free]}
        out[:, free] = update_w(config, W[:, free], sub)
        return out
    HHt, XHt = part["HHt"], part["XHt"]
    if config.solver == "mu":
        U = W[:, free].astype(np.float64)
        denom = W.astype(np.float64) @ HHt[:, free] + (config.l1_w + EPS)
        if config.l2_w:
            denom += config.l2_w * U
        out[:, free] = (U * np.maximum(XHt[:, free], 0) / denom).astype(W.dtype)
        return out
    fixed = slice(0, n_fixed)
    adjusted = XHt[:, free] - W[:, fixed].astype(np.float64) @ HHt[fixed, free]
    out[:, free] = update_w(config, W[:, free], {"XHt": adjusted, "HHt": HHt[free, free]})
    return out


class LinkedModel:
    """lNMF (and jNMF, and transfer learning) for ``run_alternating``.

    Parameters
    ----------
    config : NMFConfig
        ``k`` is the total number of factors; solver, loss and penalties as for NMF.
    layout : LinkedLayout
    Ws : list of ndarray, shape (m, total)
        The starting full basis of every run.
    h_start : list of float
        Constant start of H per run (MU and KL need a positive H).
    xx : ndarray, shape (n_datasets,)
        ‖A_d‖² of every dataset.
    """

    step = staticmethod(dataset_step)

    def __init__(
        self,
        config: NMFConfig,
        layout: LinkedLayout,
        Ws: list[np.ndarray],
        h_start: list[float],
        xx: np.ndarray,
    ):
        self.config = config
        self.layout = layout
        self.plan = linked_plan(layout)
        self.Ws = [np.ascontiguousarray(W) for W in Ws]
        self.h_start = h_start
        self.xx = np.asarray(xx, dtype=np.float64)
        self.n_runs = len(Ws)
        self.dataset_errors: list[np.ndarray] = [np.full(layout.n_datasets, np.nan)] * len(Ws)
        self._grams: dict[int, np.ndarray] = {}

    def broadcast(self, active: list[int], first: bool) -> DatasetBroadcast:
        self._grams = {run: gram(self.Ws[run]) for run in active}
        bases, grams = [], []
        for d in range(self.layout.n_datasets):
            f = self.layout.factors(d)
            subs = [self.Ws[run][:, f] for run in active]
            bases.append(np.ascontiguousarray(np.hstack(subs) if len(subs) > 1 else subs[0]))
            grams.append([self._grams[run][np.ix_(f, f)] for run in active])
        return DatasetBroadcast(
            self.config, self.plan, bases, grams, tuple(active), self.n_runs, self.h_start
        )

    def score(self, run: int, partials: dict[str, Any], index: int) -> tuple[float, float]:
        part = partials["runs"][index]
        G = self._grams[run]
        self.dataset_errors[run] = dataset_errors(G, part, self.xx)
        return objective(self.config, self.Ws[run], G, summed(part), float(self.xx.sum()))

    def advance(self, run: int, partials: dict[str, Any], index: int) -> None:
        part = summed(partials["runs"][index])
        self.Ws[run] = update_free_columns(self.config, self.Ws[run], part, self.layout.n_fixed)


def initial_states(block_dataset: list[int], n_runs: int) -> list[DatasetBlock]:
    """One empty ``DatasetBlock`` per column block."""
    return [DatasetBlock(d, j, [None] * n_runs) for j, d in enumerate(block_dataset)]


def full_h(layout: LinkedLayout, d: int, H: np.ndarray) -> np.ndarray:
    """A dataset's compact H-block (k_d × n) as rows of the full H, structural zeros in."""
    out = np.zeros((layout.total, H.shape[1]), dtype=H.dtype)
    out[layout.factors(d)] = H
    return out


def assign_factors(usage: np.ndarray, layout: LinkedLayout) -> np.ndarray:
    """Order jNMF factors as ``[W | U_1 | … | U_K]`` from how much every dataset uses them.

    Parameters
    ----------
    usage : ndarray, shape (total, n_datasets)
        Share of dataset d's reconstructed counts carried by factor i.
    layout : LinkedLayout

    Returns
    -------
    ndarray of int, shape (total,)
        Factor indices: first the ``k_shared`` most evenly used (the highest ratio of their
        smallest to largest share), then for every dataset the factors assigned to it by
        the Hungarian method on the remaining shares.
    """
    from scipy.optimize import linear_sum_assignment

    total = usage.shape[0]
    top = usage.max(axis=1)
    balance = np.where(top > 0, usage.min(axis=1) / np.where(top > 0, top, 1.0), 0.0)
    shared = np.argsort(-balance, kind="stable")[: layout.k_shared]
    rest = np.setdiff1d(np.arange(total), shared)
    owners = np.repeat(np.arange(layout.n_datasets), layout.k_unique)
    order = list(shared)
    if owners.size:
        # A factor's claim on a dataset is its share there minus its best share elsewhere.
        claim = np.empty((rest.size, owners.size))
        for c, d in enumerate(owners):
            others = np.delete(usage[rest], d, axis=1)
            best_other = others.max(axis=1) if others.shape[1] else 0.0
            claim[:, c] = usage[rest, d] - best_other
        rows, cols = linear_sum_assignment(-claim)
        picked = dict(zip(cols.tolist(), rest[rows].tolist(), strict=True))
        order += [picked[c] for c in range(owners.size)]
    return np.asarray(order, dtype=np.int64)


def random_basis(
    m: int, k: int, mean: float, rng: np.random.Generator, dtype: np.dtype
) -> np.ndarray:
    """A seeded half-normal basis scaled to the data's mean (as ``init="random"``)."""
    scale = np.sqrt(max(mean, 0.0) / max(k, 1)) or 1.0
    return (np.abs(rng.standard_normal((m, k))) * scale).astype(dtype)
