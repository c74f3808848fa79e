"""The public functions: one module per task, one common setup (``api._common``).

``fit``: ``nmf`` (and what the estimator and the CLI build on); ``linked``: ``lnmf``,
``jnmf``, ``inmf``, ``lnmf_ranks``; ``project``: ``project``; ``selection``:
``rank_survey``, ``consensus`` and masked fits.
"""

from scalenmf.api._common import HALS_SWEEPS, check_rank, resolve_solver
from scalenmf.api.fit import fit_fingerprint, fit_on_executor, nmf, run_manifest
from scalenmf.api.linked import RankProposal, inmf, jnmf, lnmf, lnmf_ranks
from scalenmf.api.project import project
from scalenmf.api.selection import consensus, parse_ks, rank_survey

__all__ = [
    "HALS_SWEEPS",
    "RankProposal",
    "check_rank",
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
]
