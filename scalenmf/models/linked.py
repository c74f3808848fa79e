"""Linked NMF (lNMF), joint NMF, linked transfer learning and iNMF on the one block step.

Linked NMF (seed 003, eq. 4) minimises ``Σ_d ‖A_d − W H_d − U_d V_d‖²`` (or KL) with a
shared basis W and a unique U_d per dataset: NMF with the full basis ``[W | U_1 | … | U_K]``
whose H keeps its structural zeros. A block of dataset d is solved with that dataset's
columns alone, so the zeros are never stored, and the summed ``Σ X_j H_jᵀ``, ``Σ H_j H_jᵀ``
have the structure of eq. (14): the W step is the ordinary update of the full basis. jNMF
is ``k_unique = 0``; transfer learning (eq. 7) holds a given W fixed. iNMF (LIGER) uses
``W + V_d`` as dataset d's basis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scalenmf.kernels import gram
from scalenmf.kernels.mu import EPS
from scalenmf.models.fits import FitsModel, FitSpec, penalty, squared_error, update_w
from scalenmf.models.step import GroupKey, NMFConfig

# -- which factors every dataset uses ---------------------------------------------------


@dataclass(frozen=True)
class LinkedLayout:
    """The columns of ``[W | U_1 | … | U_K]``: ``k_shared`` of W, ``k_unique[d]`` of U_d,
    the first ``n_fixed`` held fixed (transfer learning)."""

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


# -- lNMF / jNMF / transfer and iNMF as models for the driver -------------------------------


class LinkedModel(FitsModel):
    """lNMF, jNMF and transfer learning for ``run_alternating``.

    Parameters
    ----------
    Ws : list of ndarray, shape (m, total)
        The starting full basis of every run.
    h_start : list of float
        Constant start of H per run (MU and KL need a positive H).
    xx : ndarray, shape (n_datasets,)
        ‖A_d‖² of every dataset.
    """

    def __init__(
        self,
        config: NMFConfig,
        layout: LinkedLayout,
        Ws: list[np.ndarray],
        h_start: list[float],
        xx: np.ndarray,
    ):
        self.layout = layout
        self.n_datasets = layout.n_datasets
        self.xx_d = np.asarray(xx, dtype=np.float64)
        fits = [FitSpec(layout.total, run=r) for r in range(len(Ws))]
        super().__init__(config, fits, Ws, float(self.xx_d.sum()), h_start=h_start)
        self.dataset_errors: list[np.ndarray] = [np.full(self.n_datasets, np.nan)] * len(Ws)

    def group_key(self, spec: FitSpec) -> GroupKey:
        widths = tuple(len(self.layout.factors(d)) for d in range(self.layout.n_datasets))
        return ("data", widths, False)

    def dataset_basis(self, f: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Fit f's basis for dataset d and its Gram (the one the H step solves with)."""
        cols = self.layout.factors(d)
        W = self.Ws[f][:, cols]
        return W, gram(W)

    def bases(self, key: GroupKey, fits: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        Ws, grams = [], []
        for d in range(self.n_datasets):
            pairs = [self.dataset_basis(f, d) for f in fits]
            Ws.append(np.ascontiguousarray(np.hstack([W for W, _ in pairs])))
            grams.append(np.stack([G for _, G in pairs]))
        return Ws, grams

    def _dataset_parts(self, partials: Any, f: int) -> list[tuple[dict[str, Any], int]]:
        ci, a = self._where[f]
        per = partials["groups"][ci]
        return [(per[d], a) for d in range(self.n_datasets)]

    def fit_gram(self, f: int, d: int, G: np.ndarray) -> np.ndarray:
        """The Gram of the model of dataset d (the H step's G may add a penalty: iNMF)."""
        return G

    def _score_all(self, partials: Any) -> dict[int, tuple[float, float]]:
        scores = {}
        kl = self.config.loss == "kl"
        for f, (ci, a) in self._where.items():
            sq = np.zeros(self.n_datasets)
            data = h_sum = h_sq = 0.0
            for d, (part, _) in enumerate(self._dataset_parts(partials, f)):
                G = self._casts[ci].grams[d][a]
                G_fit = self.fit_gram(f, d, G)
                sq[d] = squared_error(float(self.xx_d[d]), part, a, G_fit)
                HHt = part["HHt"][a]
                # The H step's Gram minus the model's: iNMF's ½λ‖V_d H_d‖², 0 for lNMF.
                extra = 0.5 * float(np.einsum("ij,ij->", G - G_fit, HHt))
                data += (float(part["div"][a]) if kl else 0.5 * sq[d]) + extra
                h_sum += float(part["hsum"][a].sum())
                h_sq += float(np.trace(HHt))
            with np.errstate(divide="ignore", invalid="ignore"):
                self.dataset_errors[f] = np.where(self.xx_d > 0, np.sqrt(sq / self.xx_d), 0.0)
            obj = data + penalty(self.config, self.Ws[f], h_sum, h_sq)
            scores[f] = (obj, float(np.sqrt(sq.sum() / self.xx)) if self.xx > 0 else 0.0)
        return scores

    def full_part(self, partials: Any, f: int) -> dict[str, Any]:
        """Fit f's W-step statistics summed over the datasets, in the full basis' columns."""
        total = self.layout.total
        key = "numer" if self.config.loss == "kl" else "XHt"
        out: dict[str, Any] = {"HHt": np.zeros((total, total)), "hsum": np.zeros(total)}
        for d, (part, a) in enumerate(self._dataset_parts(partials, f)):
            cols = self.layout.factors(d)
            out.setdefault(key, np.zeros((part[key].shape[1], total)))[:, cols] += part[key][a]
            out["HHt"][np.ix_(cols, cols)] += part["HHt"][a]
            out["hsum"][cols] += part["hsum"][a]
        return out

    def advance(self, run: int, partials: Any, index: int) -> None:
        part = self.full_part(partials, run)
        self.Ws[run] = update_free_columns(self.config, self.Ws[run], part, self.layout.n_fixed)

    def flush(self) -> None:
        return None  # W steps are taken at once (one per run)


def update_free_columns(
    config: NMFConfig, W: np.ndarray, part: dict[str, Any], n_fixed: int
) -> np.ndarray:
    """The W step with the first ``n_fixed`` columns fixed: the free columns F solve with
    ``XHt_F − W_fixed·HHt_{fixed,F}`` (MU keeps the full model in its denominator)."""
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


class INMFModel(LinkedModel):
    """iNMF (Welch et al. 2019): ``½ Σ_d ‖X_d − (W + V_d) H_d‖² + ½ λ Σ_d ‖V_d H_d‖²``.

    Block coordinate descent in LIGER's order, each step an NNLS in Gram form: H_d with
    basis ``W + V_d`` and Gram ``(W+V_d)ᵀ(W+V_d) + λ V_dᵀV_d`` (the block step); V_d with
    ``(1+λ) H_d H_dᵀ`` and ``X_d H_dᵀ − W H_d H_dᵀ``; W with ``Σ_d H_d H_dᵀ`` and
    ``Σ_d (X_d H_dᵀ − V_d H_d H_dᵀ)``. ``Ws`` (m, k) and ``Vs`` (per dataset (m, k)) are
    the starts of every run.
    """

    def __init__(
        self,
        config: NMFConfig,
        lam: float,
        Ws: list[np.ndarray],
        Vs: list[list[np.ndarray]],
        xx: np.ndarray,
    ):
        self.lam = float(lam)
        self.Vs = [[np.ascontiguousarray(V) for V in per] for per in Vs]
        k = Ws[0].shape[1]
        n = len(self.Vs[0])
        layout = LinkedLayout(k, (0,) * n)
        super().__init__(config, layout, Ws, [0.0] * len(Ws), xx)

    def dataset_basis(self, f: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        V = self.Vs[f][d]
        basis = self.Ws[f] + V
        return basis, gram(basis) + self.lam * gram(V)

    def fit_gram(self, f: int, d: int, G: np.ndarray) -> np.ndarray:
        return gram(self.Ws[f] + self.Vs[f][d])

    def advance(self, run: int, partials: Any, index: int) -> None:
        W = self.Ws[run]
        W64 = W.astype(np.float64)
        parts = self._dataset_parts(partials, run)
        Vs = []
        for d, (part, a) in enumerate(parts):
            HHt = part["HHt"][a]
            rhs = part["XHt"][a] - W64 @ HHt
            V = self.Vs[run][d]
            Vs.append(update_w(self.config, V, {"XHt": rhs, "HHt": (1.0 + self.lam) * HHt}))
        HHt_sum = sum(part["HHt"][a] for part, a in parts)
        rhs_w = sum(
            part["XHt"][a] - V.astype(np.float64) @ part["HHt"][a]
            for (part, a), V in zip(parts, Vs, strict=True)
        )
        self.Ws[run] = update_w(self.config, W, {"XHt": rhs_w, "HHt": HHt_sum})
        self.Vs[run] = Vs


def full_h(layout: LinkedLayout, d: int, H: np.ndarray) -> np.ndarray:
    """A dataset's compact H-block (k_d × n) as rows of the full H, structural zeros in."""
    out = np.zeros((layout.total, H.shape[1]), dtype=H.dtype)
    out[layout.factors(d)] = H
    return out


def assign_factors(usage: np.ndarray, layout: LinkedLayout) -> np.ndarray:
    """Order jNMF factors as ``[W | U_1 | … | U_K]`` from ``usage`` (total, n_datasets),
    factor i's share of dataset d's counts: first the ``k_shared`` most evenly used, then
    each dataset's factors by the Hungarian method on the rest. Returns (total,) int."""
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
