"""Results of model selection: ``RankSurvey`` (``rank_survey``) and ``ConsensusResult``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from scalenmf.results.base import Result
from scalenmf.results.nmf import NMFResult

if TYPE_CHECKING:
    from scalenmf.models.consensus import FactorConsensus, SampleConsensus


@dataclass(repr=False)
class RankSurvey(Result):
    """The result of ``rank_survey``.

    Attributes
    ----------
    ks : list of int
    summary : list of dict
        One row per k: ``k, error_best, error_mean, cophenetic, dispersion, silhouette,
        stability, cv_error, cv_error_sd`` and more (see ``SUMMARY_COLUMNS``).
    null_summary : list of dict or None
        The same on a copy of X with every column's entries permuted (None: not run).
    suggestion : dict
        ``k``, ``reason``, ``criterion`` and the measures at that k.
    runs : list of dict
        One row per fit: ``k, run, variant, kind, objective, relative_error, n_iter, ...``.
    best : dict of int to NMFResult
        The lowest-objective fit of every k (on X).
    consensus : dict of int to SampleConsensus
        Consensus matrix, tree and clusters per k (on X).
    factors : dict of int to FactorConsensus
        Factor-level consensus per k (on X), when n_runs > 1.
    """

    ks: list[int]
    summary: list[dict[str, Any]]
    null_summary: list[dict[str, Any]] | None
    suggestion: dict[str, Any]
    runs: list[dict[str, Any]]
    best: dict[int, NMFResult]
    consensus: dict[int, SampleConsensus]
    factors: dict[int, FactorConsensus]
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    sample_labels: np.ndarray | None = None

    def table(self, null: bool = False) -> list[dict[str, Any]]:
        rows = self.null_summary if null else self.summary
        return list(rows or [])

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write ``summary.csv``, ``null_summary.csv``, ``suggestion.json``, ``runs.csv``,
        ``survey.json``, ``best/k{K}.zarr`` and ``consensus/k{K}.zarr`` atomically."""
        from scalenmf.io.selection_store import SUMMARY_COLUMNS, write_survey
        from scalenmf.models.survey import EXTRA_COLUMNS

        columns = list(SUMMARY_COLUMNS) + list(EXTRA_COLUMNS)
        return write_survey(self, directory, columns, overwrite=overwrite)

    def to_pandas(self, null: bool = False) -> Any:
        """The summary table (one row per k; ``null``: of the permuted null) as a
        DataFrame indexed by k."""
        import pandas as pd

        return pd.DataFrame(self.table(null)).set_index("k")

    def _repr_parts(self) -> list[str]:
        return [
            f"ks={self.ks}",
            f"suggested k={self.suggestion.get('k')}",
            f"n_fits={len(self.runs)}",
        ]


@dataclass(repr=False)
class ConsensusResult(Result):
    """The result of ``consensus``.

    Attributes
    ----------
    k, n_runs : int
    samples : SampleConsensus
        Consensus matrix (of a subsample above ``max_samples``), its average-linkage tree,
        leaf order, cophenetic correlation, dispersion, and a cluster for every sample.
    factors : FactorConsensus
        Factor-level consensus (medians of clustered factors); its silhouette is the
        stability.
    result : NMFResult
        The consensus factorization: W from the factor consensus, H refitted on X.
    runs : list of dict
        One row per run: ``k, run, objective, relative_error, n_iter, converged``.
    sample_labels : ndarray of str, shape (n,)
    """

    k: int
    n_runs: int
    samples: SampleConsensus
    factors: FactorConsensus | None
    result: NMFResult
    runs: list[dict[str, Any]]
    sample_labels: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def clusters(self) -> np.ndarray:
        """Consensus cluster (1..k) of every sample, in input order."""
        return self.samples.clusters

    @property
    def cophenetic(self) -> float:
        return self.samples.cophenetic

    @property
    def dispersion(self) -> float:
        return self.samples.dispersion

    @property
    def stability(self) -> float:
        return self.factors.silhouette if self.factors is not None else math.nan

    @property
    def subsampled(self) -> bool:
        return self.samples.subsampled

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "n_runs": self.n_runs,
            "cophenetic": self.cophenetic,
            "dispersion": self.dispersion,
            "silhouette": self.samples.silhouette,
            "stability": self.stability,
            "subsampled": self.subsampled,
            "consensus_samples": int(self.samples.samples.size),
            "n_total": self.samples.n_total,
            "relative_error": self.result.relative_error,
            "cluster_sizes": {
                str(c): int(n)
                for c, n in zip(*np.unique(self.clusters, return_counts=True), strict=True)
            },
            "outliers_dropped": int((~self.factors.kept).sum()) if self.factors else 0,
        }

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write ``clusters.csv``, ``consensus.zarr``, ``result.zarr``, ``summary.json``,
        ``runs.csv`` atomically."""
        from scalenmf.interpret import predict
        from scalenmf.io.selection_store import write_consensus

        return write_consensus(self, directory, predict(self.result), overwrite=overwrite)

    def to_pandas(self) -> Any:
        """The consensus cluster (1..k) of every sample as a DataFrame indexed by sample."""
        import pandas as pd

        index = pd.Index(np.asarray(self.sample_labels), name="sample")
        return pd.DataFrame({"cluster": self.clusters}, index=index)

    def _repr_parts(self) -> list[str]:
        parts = [
            f"k={self.k}",
            f"n_runs={self.n_runs}",
            f"cophenetic={self.cophenetic:.4g}",
            f"dispersion={self.dispersion:.4g}",
            f"stability={self.stability:.4g}",
        ]
        return [*parts, "subsampled"] if self.subsampled else parts
