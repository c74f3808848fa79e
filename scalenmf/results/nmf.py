"""The result of a fit: factors, history and provenance, saved as a Zarr result store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalenmf._version import __version__


@dataclass
class NMFResult:
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

    @property
    def loss(self) -> float:
        """Final objective value."""
        return float(self.loss_history[-1]) if self.loss_history else float("nan")

    def reconstruct(self) -> np.ndarray:
        """``W @ H`` (m, n) — only for data that fit in memory."""
        return self.W @ self.H

    def attrs(self) -> dict[str, Any]:
        """The JSON metadata written with the store."""
        return {
            "k": self.k,
            "solver": self.params.get("solver"),
            "loss": self.params.get("loss"),
            "params": self.params,
            "seed": self.params.get("seed"),
            "n_iter": self.n_iter,
            "converged": self.converged,
            "loss_history": [float(v) for v in self.loss_history],
            "relative_error": float(self.relative_error),
            "runs": self.runs,
            "timings": self.timings,
            "info": self.info,
            "manifest": self.manifest,
            "scalenmf_version": __version__,
        }

    def to_pandas(self) -> tuple[Any, Any]:
        """W (features × k) and H (k × samples) as labelled DataFrames (``scalenmf.tl``)."""
        from scalenmf.tl import result_to_pandas

        return result_to_pandas(self)

    def to_anndata(self, X: Any = None, *, key_added: str = "nmf") -> Any:
        """An AnnData (samples × features) with ``obsm["X_nmf"]``, ``varm["nmf_W"]``,
        ``uns["nmf"]``, as ``scalenmf.tl.nmf`` writes them (``X``: the data, optional)."""
        from scalenmf.tl import result_to_anndata

        return result_to_anndata(self, X, key_added=key_added)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write the result store (atomically: a crash never leaves half a result)."""
        from scalenmf.io.results import write_result

        block = self.info.get("block_cols")
        return write_result(
            path,
            {"W": self.W, "H": self.H},
            attrs=self.attrs(),
            labels={"row_labels": self.row_labels, "col_labels": self.col_labels},
            col_chunk=int(block) if block else None,
            overwrite=overwrite,
        )

    def __repr__(self) -> str:
        m, k = self.W.shape
        n = self.H.shape[1]
        return (
            f"NMFResult(k={k}, X {m}×{n}, solver={self.params.get('solver')!r}, "
            f"loss={self.params.get('loss')!r}, n_iter={self.n_iter}, "
            f"relative_error={self.relative_error:.5g}, converged={self.converged})"
        )


def load(path: str | os.PathLike[str]) -> NMFResult:
    """Read a result store written by ``NMFResult.save`` or ``scalenmf fit``."""
    from scalenmf.io.results import read_result

    arrays, attrs, labels = read_result(path)
    if "W" not in arrays or "H" not in arrays:
        from scalenmf.io.errors import InputError

        raise InputError(f"result store {str(path)!r} lacks W or H")
    return NMFResult(
        W=arrays["W"],
        H=arrays["H"],
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
