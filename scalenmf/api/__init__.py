"""The public functions: one module per task, one common setup (``api._common``).

``fit``: ``nmf`` (and what the estimator and the CLI build on); ``linked``: ``lnmf``,
``jnmf``, ``inmf``, ``lnmf_ranks``; ``project``: ``project``; ``selection``:
``rank_survey``, ``consensus`` and masked fits. ``_common``: what they all share, written
once: the setup (parameter checks, the input, the working dtype, the block-step config,
the cluster options every function takes and the executor they open), the run under a
progress bar, and the collection of the result.

Names import their module on first use, so that ``from scalenmf.api import check_rank``
(the planner, the estimator) does not load every model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "HALS_SWEEPS": "scalenmf.api._common",
    "ClusterOptions": "scalenmf.api._common",
    "check_rank": "scalenmf.api._common",
    "cluster_options": "scalenmf.api._common",
    "resolve_solver": "scalenmf.api._common",
    "fit_fingerprint": "scalenmf.api.fit",
    "fit_on_executor": "scalenmf.api.fit",
    "nmf": "scalenmf.api.fit",
    "run_manifest": "scalenmf.api.fit",
    "RankProposal": "scalenmf.api.linked",
    "inmf": "scalenmf.api.linked",
    "jnmf": "scalenmf.api.linked",
    "lnmf": "scalenmf.api.linked",
    "lnmf_ranks": "scalenmf.api.linked",
    "project": "scalenmf.api.project",
    "consensus": "scalenmf.api.selection",
    "parse_ks": "scalenmf.api.selection",
    "rank_survey": "scalenmf.api.selection",
    "update": "scalenmf.api.refit",
}

__all__ = [
    "HALS_SWEEPS",
    "ClusterOptions",
    "RankProposal",
    "check_rank",
    "cluster_options",
    "consensus",
    "fit_fingerprint",
    "fit_on_executor",
    "inmf",
    "jnmf",
    "lnmf",
    "lnmf_ranks",
    "nmf",
    "parse_ks",
    "project",
    "rank_survey",
    "resolve_solver",
    "run_manifest",
    "update",
]

if TYPE_CHECKING:
    from scalenmf.api._common import (
        HALS_SWEEPS,
        ClusterOptions,
        check_rank,
        cluster_options,
        resolve_solver,
    )
    from scalenmf.api.fit import fit_fingerprint, fit_on_executor, nmf, run_manifest
    from scalenmf.api.linked import RankProposal, inmf, jnmf, lnmf, lnmf_ranks
    from scalenmf.api.project import project
    from scalenmf.api.refit import update
    from scalenmf.api.selection import consensus, parse_ks, rank_survey


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalenmf.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
