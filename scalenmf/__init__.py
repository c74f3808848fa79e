"""scalenmf: out-of-core, Dask-parallel non-negative matrix factorization.

Convention: ``X`` has shape ``(m features, n samples)``; ``X ≈ W @ H`` with ``W`` of shape
``(m, k)`` (the basis) and ``H`` of shape ``(k, n)`` (the coefficients).
"""

from __future__ import annotations

from typing import Any

from scalenmf._version import __version__
from scalenmf.api import nmf
from scalenmf.api_linked import inmf, jnmf, lnmf, lnmf_ranks
from scalenmf.api_project import project
from scalenmf.engine.loop import IterationInfo
from scalenmf.interpret import (
    extract_features,
    feature_scores,
    match,
    predict,
    sparseness,
    top_features,
)
from scalenmf.io import InputError, MatrixSource, open_matrix, write_matrix
from scalenmf.linked_result import (
    INMFResult,
    LinkedNMFResult,
    ProjectionResult,
    load_linked,
    load_projection,
)
from scalenmf.result import NMFResult, load
from scalenmf.selection import ConsensusResult, RankSurvey, consensus, rank_survey

__all__ = [
    "ConsensusResult",
    "ConvergenceWarning",
    "INMFResult",
    "InputError",
    "IterationInfo",
    "LinkedNMFResult",
    "MatrixSource",
    "NMFResult",
    "ProjectionResult",
    "RankSurvey",
    "__version__",
    "consensus",
    "convert",
    "extract_features",
    "feature_scores",
    "inmf",
    "jnmf",
    "lnmf",
    "lnmf_ranks",
    "load",
    "load_linked",
    "load_projection",
    "match",
    "nmf",
    "open_matrix",
    "plan",
    "predict",
    "project",
    "rank_survey",
    "sparseness",
    "top_features",
    "write_matrix",
]


def convert(src: Any, dst: Any, **kwargs: Any) -> str:
    """Stream any supported input into a Zarr matrix store (see ``scalenmf.io.convert``)."""
    from scalenmf.io.convert import convert as _convert

    return _convert(src, dst, **kwargs)


def plan(X: Any, k: int, **kwargs: Any) -> Any:
    """Dry run of a fit: blocks, memory per worker, time per iteration (``scalenmf.planner``)."""
    from scalenmf.planner import plan as _plan

    return _plan(X, k, **kwargs)


def __getattr__(name: str) -> Any:
    # Optional-extra features are imported only when asked for.
    if name == "ConvergenceWarning":  # built on first use (see engine.loop)
        from scalenmf.engine.loop import convergence_warning

        return convergence_warning()
    if name == "DNMF":
        from scalenmf.models.deep import DNMF

        return DNMF
    if name == "tl":  # scanpy-style tools (AnnData in, factors stored in it)
        import scalenmf.tl as tl

        return tl
    if name == "pp":  # preparation steps (normalise, scale), in memory or streamed
        import scalenmf.pp as pp

        return pp
    if name == "NMF":
        from scalenmf.estimators import NMF

        return NMF
    if name == "report":  # needs the plot extra (matplotlib)
        from scalenmf.reporting import report

        return report
    raise AttributeError(f"module 'scalenmf' has no attribute {name!r}")
