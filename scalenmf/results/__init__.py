"""What the public functions return: factors, diagnostics and provenance, and their stores.

``base``: ``Result``, the base of them all (``params``, ``info``, ``save``, ``load``,
``to_pandas``, the repr); ``nmf``: ``NMFResult`` and ``load``; ``linked``:
``LinkedNMFResult``, ``INMFResult``, ``ProjectionResult`` and their loaders;
``selection``: ``RankSurvey`` and ``ConsensusResult``.
"""

from scalenmf.results.base import Result
from scalenmf.results.linked import (
    DatasetInfo,
    INMFResult,
    LinkedNMFResult,
    ProjectionResult,
    load_linked,
    load_projection,
)
from scalenmf.results.nmf import NMFResult, load
from scalenmf.results.selection import ConsensusResult, RankSurvey

__all__ = [
    "ConsensusResult",
    "DatasetInfo",
    "INMFResult",
    "LinkedNMFResult",
    "NMFResult",
    "ProjectionResult",
    "RankSurvey",
    "Result",
    "load",
    "load_linked",
    "load_projection",
]
