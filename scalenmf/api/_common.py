"""The setup every public function shares: parameter checks, working dtype, the cluster
options and the executor they open, the progress bar.

``nmf``, ``lnmf``, ``inmf``, ``project``, ``rank_survey`` and ``consensus`` check their
parameters, choose the solver, fix the working precision, take the same cluster options
(``scheduler``, ``workers``, ``memory_limit``, ``threads``, ``scheduler_file``,
``security``, ``connect_timeout``) and show a progress bar in the same way; it is written
once here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from scalenmf.io.errors import InputError
from scalenmf.validation import NMF_RULES, check_params, parse_memory

if TYPE_CHECKING:
    from scalenmf.engine.executor import Executor
    from scalenmf.io.source import MatrixSource

#: Inner coordinate sweeps per HALS half-step: a few cheap sweeps on the k×n_j block
#: (no new look at X) cut the number of passes over X (accelerated HALS, Gillis & Glineur).
HALS_SWEEPS = 3


def progress_bar(progress: Any, total: int, desc: str) -> Any:
    """A tqdm bar on stderr, or None (``progress=None``: only when stderr is a terminal)."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from scalenmf.engine.progress import progress_bar as make_bar

    # a tqdm bar on a terminal; in a log, a line every few percent
    return make_bar(total, desc, sys.stderr)


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


@dataclass(frozen=True)
class ClusterOptions:
    """Where the blocks are processed: the options every public function takes.

    Attributes
    ----------
    scheduler : str or distributed.Client, optional
        A Dask cluster: ``"tcp://host:port"``, a scheduler file, or a Client.
    workers : int, optional
        Start a local Dask cluster with this many worker processes.
    memory_limit : int, optional
        Bytes (parsed from ``"2GB"``). Locally, X blocks are cached only if they fit; on
        a LocalCluster it is the per-worker limit.
    threads : int, optional
        Threads of the local executor (default: all cores).
    scheduler_file : path, optional
        Connect to the cluster whose scheduler wrote this file.
    security : distributed.security.Security, optional
        TLS credentials for a cluster that requires them.
    connect_timeout : str or float, optional
        How long to try reaching the scheduler (default 30 s).
    """

    scheduler: Any = None
    workers: int | None = None
    memory_limit: int | None = None
    threads: int | None = None
    scheduler_file: str | None = None
    security: Any = None
    connect_timeout: str | float | None = None

    def executor_args(self) -> dict[str, Any]:
        """Keyword arguments of ``scalenmf.engine.make_executor``."""
        # Not dataclasses.asdict: it deep-copies, and a Client or Security must be passed on.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def open(self, source: MatrixSource) -> Executor:
        """The executor for ``source``: local threads, or Dask when a cluster is named."""
        from scalenmf.engine import make_executor

        return make_executor(source, **self.executor_args())


def cluster_options(
    *,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    threads: int | None = None,
    scheduler_file: str | None = None,
    security: Any = None,
    connect_timeout: str | float | None = None,
) -> ClusterOptions:
    """Check the cluster options (``workers ≥ 1``, a readable ``memory_limit``)."""
    return ClusterOptions(
        scheduler=scheduler,
        workers=NMF_RULES["workers"].check("workers", workers),
        memory_limit=parse_memory(memory_limit),
        threads=threads,
        scheduler_file=scheduler_file,
        security=security,
        connect_timeout=connect_timeout,
    )
