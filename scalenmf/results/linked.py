"""Results of linked NMF, iNMF and projection, their stores and loaders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalenmf.kernels.quantiles import chunked_median
from scalenmf.results.base import Result, need


@dataclass
class DatasetInfo:
    """One dataset of a multi-dataset fit: its name and where its samples sit in H."""

    name: str
    start: int
    stop: int
    relative_error: float = float("nan")

    @property
    def n(self) -> int:
        return self.stop - self.start

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": [self.start, self.stop],
            "relative_error": None if np.isnan(self.relative_error) else self.relative_error,
        }


def _col_dataset(datasets: list[DatasetInfo]) -> np.ndarray:
    out = np.zeros(datasets[-1].stop if datasets else 0, dtype=np.int32)
    for i, ds in enumerate(datasets):
        out[ds.start : ds.stop] = i
    return out


def _datasets_from(attrs: dict[str, Any]) -> list[DatasetInfo]:
    out = []
    for ds in attrs.get("datasets", []):
        a, b = ds["columns"]
        rel = ds.get("relative_error")
        out.append(DatasetInfo(str(ds["name"]), int(a), int(b), np.nan if rel is None else rel))
    return out


def _split_labels(labels: np.ndarray | None, datasets: list[DatasetInfo]) -> list[Any]:
    if labels is None:
        return [None] * len(datasets)
    return [labels[ds.start : ds.stop] for ds in datasets]


def _joined(col_labels: list[Any]) -> np.ndarray | None:
    """Every dataset's sample labels end to end (None unless every dataset has them)."""
    if col_labels and all(c is not None for c in col_labels):
        return np.concatenate([np.asarray(c) for c in col_labels])
    return None


@dataclass(repr=False)
class LinkedNMFResult(Result):
    """A linked factorization ``A_d ≈ W H_d + U_d V_d`` for every dataset d (seed eq. 4).

    Attributes
    ----------
    W : ndarray, shape (m, k_shared)
        The shared basis.
    H : list of ndarray, shape (k_shared, n_d)
        Coefficients of the shared factors, per dataset.
    U : list of ndarray, shape (m, k_unique_d)
        The unique basis of every dataset (``(m, 0)`` in jNMF).
    V : list of ndarray, shape (k_unique_d, n_d)
        Coefficients of the unique factors, per dataset.
    datasets : list of DatasetInfo
        Names, column ranges in the concatenated H, per-dataset relative errors.
    loss_history, relative_error, n_iter, converged, params, runs, timings, info
        As in ``NMFResult``.
    row_labels : ndarray of str or None
    col_labels : list of (ndarray of str or None)
        Per dataset.
    """

    W: np.ndarray
    H: list[np.ndarray]
    U: list[np.ndarray]
    V: list[np.ndarray]
    datasets: list[DatasetInfo]
    loss_history: list[float]
    relative_error: float
    n_iter: int
    converged: bool
    params: dict[str, Any]
    row_labels: np.ndarray | None = None
    col_labels: list[Any] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    model = "lnmf"

    @property
    def k_shared(self) -> int:
        return int(self.W.shape[1])

    @property
    def k_unique(self) -> list[int]:
        return [int(U.shape[1]) for U in self.U]

    @property
    def names(self) -> list[str]:
        return [ds.name for ds in self.datasets]

    @property
    def basis(self) -> np.ndarray:
        """The full basis ``[W | U_1 | … | U_K]`` (m × total)."""
        return np.hstack([self.W, *self.U])

    @property
    def coefficients(self) -> np.ndarray:
        """The block-structured H of the full basis (total × n), structural zeros included."""
        total = self.k_shared + sum(self.k_unique)
        n = sum(H.shape[1] for H in self.H)
        out = np.zeros((total, n), dtype=self.W.dtype)
        row = self.k_shared
        for d, ds in enumerate(self.datasets):
            out[: self.k_shared, ds.start : ds.stop] = self.H[d]
            out[row : row + self.k_unique[d], ds.start : ds.stop] = self.V[d]
            row += self.k_unique[d]
        return out

    def factor_labels(self) -> list[str]:
        """``shared_1 …`` then ``<dataset>_unique_1 …``, in the order of ``basis``."""
        out = [f"shared_{i + 1}" for i in range(self.k_shared)]
        for ds, k in zip(self.datasets, self.k_unique, strict=True):
            out += [f"{ds.name}_unique_{i + 1}" for i in range(k)]
        return out

    def reconstruct(self, d: int) -> np.ndarray:
        """``W H_d + U_d V_d`` (m × n_d) — only for data that fit in memory."""
        return self.W @ self.H[d] + self.U[d] @ self.V[d]

    def attrs(self) -> dict[str, Any]:
        datasets = []
        for ds, k in zip(self.datasets, self.k_unique, strict=True):
            datasets.append({**ds.as_dict(), "k_unique": k})
        return {
            "model": self.model,
            "k": self.k_shared,
            "k_shared": self.k_shared,
            "k_unique": self.k_unique,
            "datasets": datasets,
            **self.fit_attrs(),
        }

    def store_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Layout: ``scalenmf.io.linked_results``."""
        arrays: dict[str, np.ndarray] = {"W": self.W, "H": np.hstack(self.H)}
        axes = {"H": 1, "col_dataset": 0}
        for d in range(len(self.datasets)):
            arrays[f"U_{d}"] = self.U[d]
            arrays[f"V_{d}"] = self.V[d]
            axes[f"V_{d}"] = 1
        arrays["col_dataset"] = _col_dataset(self.datasets)
        return arrays, axes

    def store_labels(self) -> dict[str, Any]:
        return {
            "row_labels": self.row_labels,
            "col_labels": _joined(self.col_labels),
            "factor_labels": self.factor_labels(),
        }

    @classmethod
    def _read(cls, path: str | os.PathLike[str]) -> Result:
        return load_linked(path)

    def to_pandas(self) -> tuple[Any, Any]:
        """The full basis (features × factors) and its coefficients (factors × samples,
        structural zeros included) as DataFrames, factors named by ``factor_labels``."""
        names = self.factor_labels()
        basis = self.frame(self.basis, self.row_labels, names, row_name="feature")
        coef = self.frame(self.coefficients, names, _joined(self.col_labels), col_name="sample")
        return basis, coef

    def _repr_parts(self) -> list[str]:
        return [
            f"k_shared={self.k_shared}",
            f"k_unique={self.k_unique}",
            f"datasets={self.names}",
            f"m={self.W.shape[0]}",
            f"n={[H.shape[1] for H in self.H]}",
            f"n_iter={self.n_iter}",
            f"relative_error={self.relative_error:.5g}",
        ]


@dataclass(repr=False)
class INMFResult(Result):
    """An integrative factorization ``X_d ≈ (W + V_d) H_d`` (LIGER's iNMF).

    Attributes
    ----------
    W : ndarray, shape (m, k)
        Shared basis.
    V : list of ndarray, shape (m, k)
        Dataset-specific bases.
    H : list of ndarray, shape (k, n_d)
        Coefficients per dataset.
    lam : float
        λ of the fit.
    datasets, loss_history, relative_error, n_iter, converged, params, row_labels,
    col_labels, runs, timings, info
        As in ``LinkedNMFResult``.
    """

    W: np.ndarray
    V: list[np.ndarray]
    H: list[np.ndarray]
    lam: float
    datasets: list[DatasetInfo]
    loss_history: list[float]
    relative_error: float
    n_iter: int
    converged: bool
    params: dict[str, Any]
    row_labels: np.ndarray | None = None
    col_labels: list[Any] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    model = "inmf"

    @property
    def k(self) -> int:
        return int(self.W.shape[1])

    @property
    def names(self) -> list[str]:
        return [ds.name for ds in self.datasets]

    def reconstruct(self, d: int) -> np.ndarray:
        """``(W + V_d) H_d`` (m × n_d)."""
        return (self.W + self.V[d]) @ self.H[d]

    def attrs(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "k": self.k,
            "lam": self.lam,
            "datasets": [ds.as_dict() for ds in self.datasets],
            **self.fit_attrs(),
        }

    def store_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Layout: ``scalenmf.io.linked_results``."""
        arrays: dict[str, np.ndarray] = {"W": self.W, "H": np.hstack(self.H)}
        for d in range(len(self.datasets)):
            arrays[f"V_{d}"] = self.V[d]
        arrays["col_dataset"] = _col_dataset(self.datasets)
        return arrays, {"H": 1, "col_dataset": 0}

    def store_labels(self) -> dict[str, Any]:
        return {"row_labels": self.row_labels, "col_labels": _joined(self.col_labels)}

    @classmethod
    def _read(cls, path: str | os.PathLike[str]) -> Result:
        return load_linked(path)

    def to_pandas(self) -> tuple[Any, Any]:
        """The shared basis W (features × k) and H (k × all samples) as DataFrames."""
        names = [f"F{i + 1}" for i in range(self.k)]
        W = self.frame(self.W, self.row_labels, names, row_name="feature")
        H = self.frame(np.hstack(self.H), names, _joined(self.col_labels), col_name="sample")
        return W, H

    def _repr_parts(self) -> list[str]:
        return [
            f"k={self.k}",
            f"lam={self.lam:g}",
            f"datasets={self.names}",
            f"n_iter={self.n_iter}",
            f"relative_error={self.relative_error:.5g}",
        ]


@dataclass(repr=False)
class ProjectionResult(Result):
    """Coefficients of new samples on a fixed basis, with per-sample quality.

    Attributes
    ----------
    H : ndarray, shape (k, n)
        Coefficients (exposures) of the new samples on the basis W.
    W : ndarray, shape (m, k)
        The basis, rows in its own order.
    cosine : ndarray, shape (n,)
        Cosine similarity of every sample with its reconstruction (NaN for empty samples);
        with ``k_new`` the reconstruction of the whole model ``W H + U V``.
    relative_error : ndarray, shape (n,)
        ``‖x − x̂‖ / ‖x‖`` per sample (same reconstruction as ``cosine``).
    novel : ndarray of bool, shape (n,)
        Samples the basis W explains poorly (rule in ``novelty``).
    novelty : dict
        The rule: ``cosine_below`` and ``robust_z_above`` thresholds and how many samples
        each flagged.
    basis_cosine, basis_relative_error : ndarray, shape (n,)
        The same figures for the W part alone (equal to ``cosine`` / ``relative_error``
        when ``k_new = 0``).
    U : ndarray, shape (m, r) or None
        New factors learned by linked transfer learning (``k_new = r``).
    V : ndarray, shape (r, n) or None
        Their coefficients.
    new_share : ndarray, shape (n,) or None
        Share of every sample's reconstructed counts carried by U V.
    explained : dict
        ``basis_r2`` (1 − ‖X − WH‖²/‖X‖²), ``total_r2`` (with U V), ``basis_count_share`` and
        ``new_count_share`` (shares of the reconstructed counts).
    H_lower, H_upper : ndarray, shape (k, n) or None
        Bootstrap percentile intervals of H (``bootstrap > 0``).
    objective : float
        Final objective (data term plus penalties).
    overall_relative_error : float
        ``‖X − X̂‖_F / ‖X‖_F`` over all samples.
    """

    H: np.ndarray
    W: np.ndarray
    cosine: np.ndarray
    relative_error: np.ndarray
    novel: np.ndarray
    novelty: dict[str, Any]
    basis_cosine: np.ndarray
    basis_relative_error: np.ndarray
    explained: dict[str, float]
    objective: float
    overall_relative_error: float
    params: dict[str, Any]
    U: np.ndarray | None = None
    V: np.ndarray | None = None
    new_share: np.ndarray | None = None
    H_lower: np.ndarray | None = None
    H_upper: np.ndarray | None = None
    row_labels: np.ndarray | None = None
    col_labels: np.ndarray | None = None
    factor_labels: np.ndarray | None = None
    loss_history: list[float] = field(default_factory=list)
    n_iter: int = 1
    converged: bool = True
    timings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    model = "projection"

    @property
    def k(self) -> int:
        return int(self.W.shape[1])

    @property
    def k_new(self) -> int:
        return 0 if self.U is None else int(self.U.shape[1])

    @property
    def n_novel(self) -> int:
        """How many samples are flagged novel (counted a chunk at a time when stored)."""
        if isinstance(self.novel, np.ndarray):
            return int(np.count_nonzero(self.novel))
        return sum(int(np.count_nonzero(c)) for c in _chunks(self.novel))

    def attrs(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "k": self.k,
            "k_new": self.k_new,
            **self.fit_attrs(
                objective=float(self.objective),
                relative_error=float(self.overall_relative_error),
                explained=self.explained,
                novelty=self.novelty,
                n_novel=self.n_novel,
            ),
        }

    def summary(self) -> dict[str, Any]:
        """Figures worth printing: sample count, median cosine, novel samples, shares."""
        if isinstance(self.cosine, np.ndarray):
            finite = self.cosine[np.isfinite(self.cosine)]
            median = float(np.median(finite)) if finite.size else float("nan")
        else:  # kept in storage (a projection too large to hold): read a chunk at a time
            median = chunked_median(lambda: _chunks(self.cosine))
        return {
            "n_samples": int(self.H.shape[1]),
            "median_cosine": median,
            "n_novel": self.n_novel,
            **self.explained,
        }

    def store_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Layout: ``scalenmf.io.linked_results``."""
        arrays: dict[str, np.ndarray] = {
            "W": self.W,
            "H": self.H,
            "cosine": self.cosine,
            "relative_error": self.relative_error,
            "novel": self.novel.astype(bool) if isinstance(self.novel, np.ndarray) else self.novel,
            "basis_cosine": self.basis_cosine,
            "basis_relative_error": self.basis_relative_error,
        }
        axes = {name: 0 for name in arrays if name not in ("W", "H")}
        axes["H"] = 1
        optional = {
            "U": (self.U, None),
            "V": (self.V, 1),
            "new_share": (self.new_share, 0),
            "H_lower": (self.H_lower, 1),
            "H_upper": (self.H_upper, 1),
        }
        for name, (value, axis) in optional.items():
            if value is not None:
                arrays[name] = value
                if axis is not None:
                    axes[name] = axis
        return arrays, axes

    @classmethod
    def _read(cls, path: str | os.PathLike[str]) -> Result:
        return load_projection(path)

    def to_pandas(self) -> tuple[Any, Any]:
        """H (factors × samples) and the per-sample quality (samples × ``cosine``,
        ``relative_error``, ``basis_cosine``, ``basis_relative_error``, ``novel`` and,
        with ``k_new``, ``new_share``) as DataFrames."""
        import pandas as pd

        H = self.frame(self.H, self.factor_labels, self.col_labels, col_name="sample")
        columns: dict[str, Any] = {
            "cosine": self.cosine,
            "relative_error": self.relative_error,
            "basis_cosine": self.basis_cosine,
            "basis_relative_error": self.basis_relative_error,
            "novel": self.novel.astype(bool),
        }
        if self.new_share is not None:
            columns["new_share"] = self.new_share
        quality = pd.DataFrame(columns, index=H.columns)
        return H, quality

    def _repr_parts(self) -> list[str]:
        s = self.summary()
        return [
            f"k={self.k}",
            f"k_new={self.k_new}",
            f"n={s['n_samples']}",
            f"median cosine={s['median_cosine']:.4g}",
            f"novel={s['n_novel']}",
        ]


def _chunks(values: Any) -> Iterator[np.ndarray]:
    """A per-sample vector kept in storage, one stored chunk at a time."""
    step = int(values.chunks[0])
    for a in range(0, int(values.shape[0]), step):
        yield np.asarray(values[a : a + step])


# -- loaders ----------------------------------------------------------------------------


def load_linked(path: str | os.PathLike[str]) -> LinkedNMFResult | INMFResult:
    """Read a store written by ``lnmf`` / ``inmf`` (``LinkedNMFResult`` or ``INMFResult``)."""
    from scalenmf.io.linked_results import read_model_store

    arrays, attrs, labels = read_model_store(path, ("lnmf", "inmf"))
    datasets = _datasets_from(attrs)
    H_all = need(arrays, "H", path)
    H = [H_all[:, ds.start : ds.stop] for ds in datasets]
    common: dict[str, Any] = {
        "datasets": datasets,
        "loss_history": list(attrs.get("loss_history", [])),
        "relative_error": float(attrs.get("relative_error", float("nan"))),
        "n_iter": int(attrs.get("n_iter", 0)),
        "converged": bool(attrs.get("converged", False)),
        "params": dict(attrs.get("params", {})),
        "row_labels": labels.get("row_labels"),
        "col_labels": _split_labels(labels.get("col_labels"), datasets),
        "runs": list(attrs.get("runs", [])),
        "timings": dict(attrs.get("timings", {})),
        "info": dict(attrs.get("info", {})),
    }
    n_ds = len(datasets)
    if attrs["model"] == "inmf":
        V = [need(arrays, f"V_{d}", path) for d in range(n_ds)]
        return INMFResult(
            W=need(arrays, "W", path), V=V, H=H, lam=float(attrs.get("lam", 0.0)), **common
        )
    U = [need(arrays, f"U_{d}", path) for d in range(n_ds)]
    V = [need(arrays, f"V_{d}", path) for d in range(n_ds)]
    return LinkedNMFResult(W=need(arrays, "W", path), H=H, U=U, V=V, **common)


def load_projection(path: str | os.PathLike[str]) -> ProjectionResult:
    """Read a store written by ``project`` / ``scalenmf project``."""
    from scalenmf.io.linked_results import read_model_store

    arrays, attrs, labels = read_model_store(path, "projection")
    return ProjectionResult(
        H=need(arrays, "H", path),
        W=need(arrays, "W", path),
        cosine=need(arrays, "cosine", path),
        relative_error=need(arrays, "relative_error", path),
        novel=need(arrays, "novel", path).astype(bool),
        novelty=dict(attrs.get("novelty", {})),
        basis_cosine=need(arrays, "basis_cosine", path),
        basis_relative_error=need(arrays, "basis_relative_error", path),
        explained=dict(attrs.get("explained", {})),
        objective=float(attrs.get("objective", float("nan"))),
        overall_relative_error=float(attrs.get("relative_error", float("nan"))),
        params=dict(attrs.get("params", {})),
        U=arrays.get("U"),
        V=arrays.get("V"),
        new_share=arrays.get("new_share"),
        H_lower=arrays.get("H_lower"),
        H_upper=arrays.get("H_upper"),
        row_labels=labels.get("row_labels"),
        col_labels=labels.get("col_labels"),
        factor_labels=labels.get("factor_labels"),
        loss_history=list(attrs.get("loss_history", [])),
        n_iter=int(attrs.get("n_iter", 1)),
        converged=bool(attrs.get("converged", True)),
        timings=dict(attrs.get("timings", {})),
        info=dict(attrs.get("info", {})),
    )
