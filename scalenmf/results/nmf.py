"""The result of a fit: factors, history and provenance, saved as a Zarr result store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalenmf.results.base import Result, need


@dataclass(repr=False)
class NMFResult(Result):
    """A fitted factorization ``X ≈ W H``.

    Attributes
    ----------
    W : ndarray, shape (m, k)
        Basis (signatures, metagenes): one column per factor.
    H : ndarray, shape (k, n)
        Coefficients (exposures): one column per sample.
    loss_history : list of float
        Objective (data term plus penalties) after every iteration of the kept run.
    relative_error : float
        ``‖X − WH‖_F / ‖X‖_F`` of the returned factors.
    n_iter : int
        Iterations of the kept run.
    converged : bool
        Whether the kept run met ``tol`` before ``max_iter``.
    params : dict
        The parameters of the fit (k, solver, loss, penalties, init, seed, ...).
    row_labels, col_labels : ndarray of str or None
        Feature and sample names, when the input had them.
    runs : list of dict
        One summary per run (final objective, relative error, iterations, converged).
    timings : dict
        ``total_s``, ``init_s``, ``loop_s`` and ``iter_times`` (seconds since the loop began,
        after each iteration).
    manifest : dict
        Provenance: parameters, package versions, input checksum, seeds, host, times.
    """

    W: np.ndarray
    H: np.ndarray
    loss_history: list[float]
    relative_error: float
    n_iter: int
    converged: bool
    params: dict[str, Any]
    row_labels: np.ndarray | None = None
    col_labels: np.ndarray | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.W.shape[1])

    def reconstruct(self) -> np.ndarray:
        """``W @ H`` (m, n) — only for data that fit in memory."""
        return self.W @ self.H

    def attrs(self) -> dict[str, Any]:
        """The JSON metadata written with the store."""
        return {"k": self.k, **self.fit_attrs(manifest=self.manifest)}

    def store_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        return {"W": self.W, "H": self.H}, {"H": 1}

    def store_labels(self) -> dict[str, Any]:
        return {"row_labels": self.row_labels, "col_labels": self.col_labels}

    @classmethod
    def _read(cls, path: str | os.PathLike[str]) -> NMFResult:
        return load(path)

    def to_pandas(self) -> tuple[Any, Any]:
        """W (features × k) and H (k × samples) as labelled DataFrames (``scalenmf.tl``)."""
        from scalenmf.tl import result_to_pandas

        return result_to_pandas(self)

    def to_anndata(self, X: Any = None, *, key_added: str = "nmf") -> Any:
        """An AnnData (samples × features) with ``obsm["X_nmf"]``, ``varm["nmf_W"]``,
        ``uns["nmf"]``, as ``scalenmf.tl.nmf`` writes them (``X``: the data, optional)."""
        from scalenmf.tl import result_to_anndata

        return result_to_anndata(self, X, key_added=key_added)

    def _repr_parts(self) -> list[str]:
        m, k = self.W.shape
        return [
            f"k={k}",
            f"X {m}×{self.H.shape[1]}",
            f"solver={self.params.get('solver')!r}",
            f"loss={self.params.get('loss')!r}",
            f"n_iter={self.n_iter}",
            f"relative_error={self.relative_error:.5g}",
            f"converged={self.converged}",
        ]


def load(path: str | os.PathLike[str], *, lazy: bool = False) -> NMFResult:
    """Read a result store written by ``NMFResult.save`` or ``scalenmf fit``.

    Parameters
    ----------
    path : path or URL
    lazy : bool, default False
        Leave H in the store: ``result.H`` is then the stored ``zarr.Array`` (k × n), read
        when indexed, and only its completeness is checked (not its digest, which would
        read it whole). For work that needs W alone (projecting new samples) on a result
        of millions of samples.
    """
    from scalenmf.io.results import read_result

    arrays, attrs, labels = read_result(path, lazy=("H",) if lazy else ())
    return NMFResult(
        W=need(arrays, "W", path),
        H=need(arrays, "H", path),
        loss_history=list(attrs.get("loss_history", [])),
        relative_error=float(attrs.get("relative_error", float("nan"))),
        n_iter=int(attrs.get("n_iter", 0)),
        converged=bool(attrs.get("converged", False)),
        params=dict(attrs.get("params", {})),
        row_labels=labels.get("row_labels"),
        col_labels=labels.get("col_labels"),
        runs=list(attrs.get("runs", [])),
        timings=dict(attrs.get("timings", {})),
        info=dict(attrs.get("info", {})),
        manifest=dict(attrs.get("manifest", {})),
    )
