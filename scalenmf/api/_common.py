"""The setup every public function shares: parameter checks, working dtype, progress bar.

``nmf``, ``lnmf``, ``inmf``, ``project``, ``rank_survey`` and ``consensus`` check their
parameters, choose the solver, fix the working precision and show a progress bar in the
same way; it is written once here.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from scalenmf.io.errors import InputError
from scalenmf.validation import NMF_RULES, check_params

#: Inner coordinate sweeps per HALS half-step: a few cheap sweeps on the k×n_j block
#: (no new look at X) cut the number of passes over X (accelerated HALS, Gillis & Glineur).
HALS_SWEEPS = 3


def progress_bar(progress: Any, total: int, desc: str) -> Any:
    """A tqdm bar on stderr, or None (``progress=None``: only when stderr is a terminal)."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", leave=False, file=sys.stderr)


def resolve_solver(solver: str | None, loss: str) -> str:
    """Default solver per loss: exact ALS for Frobenius, multiplicative updates for KL."""
    if solver is None:
        return "mu" if loss == "kl" else "als"
    if loss == "kl" and solver != "mu":
        raise ValueError(
            f"loss='kl' is solved by multiplicative updates: use solver='mu', not {solver!r}"
        )
    return solver


def check_rank(k: int, shape: tuple[int, int]) -> None:
    """Refuse an empty X and a rank outside ``1 … min(m, n)``."""
    m, n = shape
    if m == 0 or n == 0:
        raise InputError(f"X is empty (shape {m}×{n})")
    if k > min(m, n):
        raise ValueError(
            f"k must be between 1 and min(m, n) = {min(m, n)} for X of shape {m}×{n}; got {k}"
        )


def checked_params(rules: dict[str, Any], solver: str | None, **params: Any) -> dict[str, Any]:
    """``params`` checked against ``rules``, plus ``"solver"`` resolved for the loss.

    ``params`` must include ``loss`` (the solver's default depends on it).
    """
    p = check_params(rules, **params)
    p["solver"] = resolve_solver(
        None if solver is None else NMF_RULES["solver"].check("solver", solver), p["loss"]
    )
    return p


def work_dtype(dtype: Any, source: Any) -> np.dtype:
    """The working precision: ``dtype`` if given, else that of the source; float32 or 64."""
    out = np.dtype(dtype) if dtype is not None else np.dtype(source.dtype)
    if out not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {out}")
    return out
