"""scalenmf: out-of-core, Dask-parallel non-negative matrix factorization.

Convention: ``X`` has shape ``(m features, n samples)``; ``X ≈ W @ H`` with ``W`` of shape
``(m, k)`` (the basis) and ``H`` of shape ``(k, n)`` (the coefficients).

The package imports lazily: ``import scalenmf`` loads nothing but this file, and
``scalenmf.nmf`` (or any name in ``__all__``) imports its module on first use, so that
``import scalenmf.kernels`` or ``scalenmf --help`` do not pay for zarr, dask or scipy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scalenmf._version import __version__

#: Public name -> the module that defines it (imported on first access).
_EXPORTS: dict[str, str] = {
    "ConsensusResult": "scalenmf.results",
    "ConvergenceWarning": "scalenmf.engine.loop",
    "INMFResult": "scalenmf.results",
    "InputError": "scalenmf.io.errors",
    "IterationInfo": "scalenmf.engine.loop",
    "LinkedNMFResult": "scalenmf.results",
    "MatrixSource": "scalenmf.io.source",
    "NMFResult": "scalenmf.results",
    "ProjectionResult": "scalenmf.results",
    "RankSurvey": "scalenmf.results",
    "Result": "scalenmf.results",
    "consensus": "scalenmf.api",
    "extract_features": "scalenmf.interpret",
    "feature_scores": "scalenmf.interpret",
    "inmf": "scalenmf.api",
    "jnmf": "scalenmf.api",
    "lnmf": "scalenmf.api",
    "lnmf_ranks": "scalenmf.api",
    "load": "scalenmf.results",
    "load_linked": "scalenmf.results",
    "load_projection": "scalenmf.results",
    "match": "scalenmf.interpret",
    "nmf": "scalenmf.api",
    "open_matrix": "scalenmf.io",
    "predict": "scalenmf.interpret",
    # The defining module itself: once ``scalenmf.api.project`` (the module) is imported,
    # the attribute ``scalenmf.api.project`` is that module, not the function.
    "project": "scalenmf.api.project",
    "rank_survey": "scalenmf.api",
    "sparseness": "scalenmf.interpret",
    "top_features": "scalenmf.interpret",
    "update": "scalenmf.api",
    "write_matrix": "scalenmf.io",
}

#: Submodules reached as attributes: scanpy-style tools and preparation steps (AnnData).
_SUBMODULES = ("pp", "tl")

#: Names that need an optional extra: not in ``__all__`` (a star import must not fail
#: without torch or matplotlib), but ``scalenmf.DNMF`` and friends work when it is there.
_OPTIONAL: dict[str, str] = {
    "DNMF": "scalenmf.models.deep",  # the torch extra
    "NMF": "scalenmf.estimators",
    "MiniBatchNMF": "scalenmf.estimators",
    "report": "scalenmf.reporting",  # the plot extra (matplotlib)
}

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
    "Result",
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
    "update",
    "write_matrix",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from scalenmf.api import (
        consensus,
        inmf,
        jnmf,
        lnmf,
        lnmf_ranks,
        nmf,
        project,
        rank_survey,
        update,
    )
    from scalenmf.engine.loop import ConvergenceWarning, IterationInfo
    from scalenmf.interpret import (
        extract_features,
        feature_scores,
        match,
        predict,
        sparseness,
        top_features,
    )
    from scalenmf.io import open_matrix, write_matrix
    from scalenmf.io.errors import InputError
    from scalenmf.io.source import MatrixSource
    from scalenmf.results import (
        ConsensusResult,
        INMFResult,
        LinkedNMFResult,
        NMFResult,
        ProjectionResult,
        RankSurvey,
        Result,
        load,
        load_linked,
        load_projection,
    )


def convert(src: Any, dst: Any, **kwargs: Any) -> str:
    """Stream any supported input into a Zarr matrix store (see ``scalenmf.io.convert``)."""
    from scalenmf.io.convert import convert as _convert

    return _convert(src, dst, **kwargs)


def plan(X: Any, k: int, **kwargs: Any) -> Any:
    """Dry run of a fit: blocks, memory per worker, time per iteration (``scalenmf.planner``)."""
    from scalenmf.planner import plan as _plan

    return _plan(X, k, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"scalenmf.{name}")
    module = _EXPORTS.get(name) or _OPTIONAL.get(name)
    if module is None:
        raise AttributeError(f"module 'scalenmf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_OPTIONAL})
