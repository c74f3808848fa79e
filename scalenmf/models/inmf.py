"""Integrative NMF (iNMF) as LIGER formulates it, on the one-pass engine.

For datasets X_1 … X_K (features × samples) iNMF minimises::

    ½ Σ_d ‖X_d − (W + V_d) H_d‖²_F  +  ½ λ Σ_d ‖V_d H_d‖²_F

with a shared basis W (m × k), a dataset-specific basis V_d (m × k) and coefficients H_d
(k × n_d), all non-negative (Welch et al. 2019; Yang & Michailidis 2016). λ trades the
fit of each dataset against how much of it may be dataset-specific.

Each iteration is block coordinate descent in LIGER's order, H then V then W, every step
an exact (ALS) or approximate (HALS) NNLS in Gram form:

- H_d: basis ``W + V_d`` with Gram ``(W+V_d)ᵀ(W+V_d) + λ V_dᵀV_d`` — the same
  dataset-wise block step as linked NMF (``models/linked.py``);
- V_d: Gram ``(1+λ) H_d H_dᵀ``, right-hand side ``X_d H_dᵀ − W H_d H_dᵀ``;
- W: Gram ``Σ_d H_d H_dᵀ``, right-hand side ``Σ_d (X_d H_dᵀ − V_d H_d H_dᵀ)``.

The per-dataset statistics ``X_d H_dᵀ`` and ``H_d H_dᵀ`` come from one read of every block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalenmf.kernels import gram
from scalenmf.models.linked import DatasetBroadcast, StatPlan, dataset_step
from scalenmf.models.nmf import NMFConfig, update_w


def inmf_plan(k: int, n_datasets: int) -> StatPlan:
    """Every dataset writes its own m × k slab (the V_d and W steps need them apart)."""
    cols = tuple(range(k))
    return StatPlan(
        n_datasets=n_datasets,
        n_slots=n_datasets,
        width=k,
        slot=tuple(range(n_datasets)),
        cols=(cols,) * n_datasets,
    )


class INMFModel:
    """iNMF for ``run_alternating``.

    Parameters
    ----------
    config : NMFConfig
        ``k``, ``solver`` (als or hals) and the NNLS settings.
    lam : float
        λ.
    Ws : list of ndarray, shape (m, k)
        Starting shared basis per run.
    Vs : list of list of ndarray, shape (m, k)
        Starting dataset bases per run.
    xx : ndarray, shape (n_datasets,)
    """

    step = staticmethod(dataset_step)

    def __init__(
        self,
        config: NMFConfig,
        lam: float,
        Ws: list[np.ndarray],
        Vs: list[list[np.ndarray]],
        xx: np.ndarray,
    ):
        self.config = config
        self.lam = float(lam)
        self.Ws = [np.ascontiguousarray(W) for W in Ws]
        self.Vs = [[np.ascontiguousarray(V) for V in per] for per in Vs]
        self.xx = np.asarray(xx, dtype=np.float64)
        self.n_datasets = self.xx.shape[0]
        self.plan = inmf_plan(config.k, self.n_datasets)
        self.n_runs = len(Ws)
        self.dataset_errors: list[np.ndarray] = [np.full(self.n_datasets, np.nan)] * len(Ws)
        self._fit_grams: dict[int, list[np.ndarray]] = {}
        self._v_grams: dict[int, list[np.ndarray]] = {}

    def broadcast(self, active: list[int], first: bool) -> DatasetBroadcast:
        bases, grams = [], []
        for run in active:
            self._fit_grams[run] = [gram(self.Ws[run] + V) for V in self.Vs[run]]
            self._v_grams[run] = [gram(V) for V in self.Vs[run]]
        for d in range(self.n_datasets):
            subs = [self.Ws[run] + self.Vs[run][d] for run in active]
            bases.append(np.ascontiguousarray(np.hstack(subs) if len(subs) > 1 else subs[0]))
            grams.append(
                [self._fit_grams[run][d] + self.lam * self._v_grams[run][d] for run in active]
            )
        return DatasetBroadcast(
            self.config, self.plan, bases, grams, tuple(active), self.n_runs, [0.0] * self.n_runs
        )

    def score(self, run: int, partials: dict[str, Any], index: int) -> tuple[float, float]:
        part = partials["runs"][index]
        fit = np.zeros(self.n_datasets)
        penalty = 0.0
        for d in range(self.n_datasets):
            HHt = part["HHt"][d]
            sq = self.xx[d] - 2.0 * part["cross"][d] + _trace(self._fit_grams[run][d], HHt)
            fit[d] = max(sq, 0.0)
            penalty += self.lam * _trace(self._v_grams[run][d], HHt)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.dataset_errors[run] = np.where(self.xx > 0, np.sqrt(fit / self.xx), 0.0)
        total = float(self.xx.sum())
        rel = float(np.sqrt(fit.sum() / total)) if total > 0 else 0.0
        return 0.5 * float(fit.sum() + penalty), rel

    def advance(self, run: int, partials: dict[str, Any], index: int) -> None:
        part = partials["runs"][index]
        W = self.Ws[run]
        W64 = W.astype(np.float64)
        Vs = []
        for d, V in enumerate(self.Vs[run]):
            HHt = part["HHt"][d]
            rhs = part["XHt"][d] - W64 @ HHt
            Vs.append(update_w(self.config, V, {"XHt": rhs, "HHt": (1.0 + self.lam) * HHt}))
        HHt_sum = part["HHt"].sum(axis=0)
        rhs_w = part["XHt"].sum(axis=0) - sum(
            V.astype(np.float64) @ part["HHt"][d] for d, V in enumerate(Vs)
        )
        self.Ws[run] = update_w(self.config, W, {"XHt": rhs_w, "HHt": HHt_sum})
        self.Vs[run] = Vs


def _trace(A: np.ndarray, B: np.ndarray) -> float:
    """``tr(A·B)`` for symmetric A, B."""
    return float(np.einsum("ij,ij->", A, B))
