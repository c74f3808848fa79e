"""Plain NMF: one fit, or restarts of one rank, on the one block step.

The block step, the W step and the objective are those of every model
(``models/step.py``, ``models/fits.py``); plain NMF is the one-dataset case with one fit
per restart, its W of every run stacked so that one GEMM serves all of them.
"""

from __future__ import annotations

import numpy as np

from scalenmf.models.fits import FitsModel, FitSpec, objective, update_w
from scalenmf.models.step import INITS, LOSSES, SOLVERS, NMFConfig, check_block, stats_step

__all__ = [
    "INITS",
    "LOSSES",
    "SOLVERS",
    "NMFConfig",
    "NMFModel",
    "check_block",
    "objective",
    "stats_step",
    "update_w",
]


class NMFModel(FitsModel):
    """Restarts of one rank: fit r is run r, started from ``Ws[r]``."""

    def __init__(self, config: NMFConfig, Ws: list[np.ndarray], h_start: list[float], xx: float):
        fits = [FitSpec(config.k, run=r) for r in range(len(Ws))]
        super().__init__(config, fits, Ws, xx, h_start=h_start)
