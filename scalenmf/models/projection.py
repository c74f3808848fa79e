"""H for samples given a fixed basis W: the NMF H-step iterated with no W step."""

from __future__ import annotations

from typing import Any

import numpy as np

from scalenmf.engine.executor import Executor
from scalenmf.engine.loop import run_alternating
from scalenmf.models.init import data_stats
from scalenmf.models.nmf import NMFConfig, NMFModel


class FixedBasisModel(NMFModel):
    """NMF whose W never moves: each pass solves (or improves) every H block."""

    def advance(self, run: int, partials: dict[str, Any], index: int) -> None:
        return None


def project_blocks(
    executor: Executor,
    W: np.ndarray,
    config: NMFConfig,
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
    progress: Any = None,
) -> tuple[np.ndarray, list[float], list[float]]:
    """Solve ``min_H≥0`` of the configured loss with W fixed, over every column block.

    With ``solver="als"`` one pass gives the exact NNLS solution (a second pass confirms it);
    HALS and MU need several passes.

    Returns
    -------
    H : ndarray, shape (k, n)
    objectives : list of float
        Objective after every pass.
    relative_errors : list of float
    """
    stats = data_stats(executor)
    m, n = executor.source.shape
    mean = max(float(stats["xsum"]), 0.0) / max(1, m * n)
    start = float(np.sqrt(mean / W.shape[1])) or 1.0
    model = FixedBasisModel(config, [W], [start], stats["xx"])
    trace = run_alternating(model, executor, max_iter=max_iter, tol=tol, progress=progress)
    H = np.hstack([state[0] for state in executor.states()])
    return H, trace.objectives[0], trace.relative_errors[0]
