"""What every public function shares: its setup and the collection of its result.

``nmf``, ``lnmf`` / ``jnmf`` / ``inmf``, ``project``, ``rank_survey`` and ``consensus``
each do the same around their own logic, written once here:

- **setup**: check the parameters and choose the solver (``checked_params``), open the
  input and check the ranks against it (``open_input``), fix the working precision
  (``work_dtype``), build the block-step configuration (``model_config``), take the same
  cluster options (``scheduler``, ``workers``, ``memory_limit``, ``threads``,
  ``scheduler_file``, ``security``, ``connect_timeout``, ``scratch``: ``cluster_options``) and open
  and close the executor they name (``ClusterOptions.executor``);
- **the run**: iterate under a progress bar (``iterate``, ``progress_shown``);
- **collection**: pick the best run and gather what every result records about it
  (``best_run``, ``fit_summary``, ``run_rows``, ``fit_timings``, ``run_info``,
  ``result_params``).

Importing this module loads no model and no executor (the planner and the estimator
import it for ``check_rank``): those are imported by the functions that use them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from scalenmf.io.errors import InputError
from scalenmf.validation import NMF_RULES, check_params, parse_memory

if TYPE_CHECKING:
    from scalenmf.engine.checkpoint import Checkpointer
    from scalenmf.engine.executor import Executor
    from scalenmf.engine.loop import IterationInfo, LoopSnapshot, LoopTrace
    from scalenmf.io.source import MatrixSource
    from scalenmf.models.memory import FitShape
    from scalenmf.models.step import NMFConfig

log = logging.getLogger("scalenmf")

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


@contextmanager
def progress_shown(progress: Any, total: int, desc: str) -> Iterator[Any]:
    """``progress_bar`` for the length of a ``with`` block, closed however it ends."""
    bar = progress_bar(progress, total, desc)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def resolve_solver(solver: str | None, loss: str) -> str:
    """Default solver per loss: exact ALS for Frobenius, multiplicative updates for KL."""
    if solver is None:
        return "mu" if loss == "kl" else "als"
    if loss == "kl" and solver not in ("mu", "online"):
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


def open_input(
    X: Any, *, block_cols: Any = None, ranks: Iterable[int] = (), layer: str | None = None
) -> MatrixSource:
    """X as a source, every rank of ``ranks`` checked against its shape.

    Parameters
    ----------
    X : path, ndarray, scipy.sparse matrix, dask array, MatrixSource or AnnData, shape (m, n)
        An ``anndata.AnnData`` (cells × genes) is read transposed (``layer``: one of its
        layers instead of ``X.X``).
    block_cols : int, list of int or list of (int, int), optional
        Re-block the source.
    ranks : iterable of int
        Each must be in ``1 … min(m, n)``.
    """
    from scalenmf.io.anndata import anndata_source, is_anndata
    from scalenmf.io.matrix import as_source

    if layer is not None or is_anndata(X):
        if not is_anndata(X):
            raise ValueError("layer= names a layer of an AnnData object; X is not one")
        X = anndata_source(X, layer)
    source = as_source(X, block_cols=block_cols)
    for k in ranks:
        check_rank(k, source.shape)
    return source


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


def backend_options(backend: str | None, device: str | None) -> tuple[str, str]:
    """``(backend, device)`` of a fit: numpy on the CPU unless torch or a device is asked for.

    A CUDA device implies torch; ``device="auto"`` takes a GPU where the block runs has one.
    """
    if device is not None and not isinstance(device, str):
        device = str(device)
    if backend is None:
        backend = "torch" if device not in (None, "cpu") else "numpy"
    if backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be 'numpy' or 'torch'; got {backend!r}")
    if backend == "numpy":
        if device not in (None, "cpu", "auto"):
            raise ValueError(f"device={device!r} needs backend='torch' (--backend torch)")
        return "numpy", "cpu"
    device = device or "auto"
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto'; got {device!r}")
    try:
        import torch
    except ImportError as err:
        raise ImportError("backend='torch' needs torch: pip install 'scalenmf[torch]'") from err
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: torch sees no CUDA device on this machine")
    return "torch", device


def byte_count(value: int | str | None, name: str) -> int | None:
    """Bytes from an integer or a string such as ``"8GB"`` (None stays None)."""
    if value is None:
        return None
    from dask.utils import parse_bytes

    try:
        out = int(parse_bytes(value)) if isinstance(value, str) else int(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} must be a number of bytes such as '8GB'; got {value!r}") from err
    if out <= 0:
        raise ValueError(f"{name} must be positive; got {value!r}")
    return out


def kernel_backend(
    backend: str | None, device: str | None, gpu_memory_limit: int | str | None = None
) -> dict[str, Any]:
    """The ``NMFConfig`` fields of where the block kernels run (checked)."""
    name, dev = backend_options(backend, device)
    limit = byte_count(gpu_memory_limit, "gpu_memory_limit")
    return {"backend": name, "device": dev, "gpu_memory_limit": limit}


def gpu_dtype(dtype: Any, device: str) -> Any:
    """float32 on a GPU unless a dtype is given (the objective stays float64 in any case)."""
    return "float32" if dtype is None and device.startswith("cuda") else dtype


def model_config(p: dict[str, Any], **fields_: Any) -> NMFConfig:
    """The block-step configuration of the checked parameters ``p`` (solver, loss,
    penalties, NNLS), with ``fields_`` (k, masks, cross-validation) on top."""
    from scalenmf.models.step import NMFConfig

    if p["solver"] == "online":
        raise ValueError("solver='online' is a solver of nmf() and fit; use als, hals or mu here")
    base: dict[str, Any] = {
        "solver": p["solver"],
        "loss": p["loss"],
        "l1_w": p.get("l1_w", 0.0),
        "l1_h": p.get("l1_h", 0.0),
        "l2_w": p.get("l2_w", 0.0),
        "l2_h": p.get("l2_h", 0.0),
        "nnls": p.get("nnls", "bpp"),
        "inner_sweeps": HALS_SWEEPS if p["solver"] == "hals" else 50,
    }
    return NMFConfig(**{**base, **fields_})


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
    scratch : path or URL, optional
        Directory for scratch stores (see the attribute below).
    """

    scheduler: Any = None
    workers: int | None = None
    memory_limit: int | None = None
    threads: int | None = None
    scheduler_file: str | None = None
    security: Any = None
    connect_timeout: str | float | None = None
    #: Hold X blocks in memory (set by ``fit_memory``'s plan; None: the executor decides).
    keep_x: bool | None = None
    #: Keep the block states in a scratch store (set by ``fit_memory``'s plan; None: the
    #: executor decides).
    spill_states: bool | None = None
    #: Where scratch stores go (spilled block states, the Dask anchor, per-sample outputs
    #: past their memory share): a directory or URL; None: ``$SCALENMF_SCRATCH`` or the
    #: system's temporary directory. Every store made there is removed when the run ends.
    scratch: Any = None

    def fit_memory(
        self, source: MatrixSource, shape: FitShape, *, fixed_blocking: bool = False
    ) -> tuple[MatrixSource, ClusterOptions]:
        """The blocking and concurrency that keep a fit of ``source`` within ``memory_limit``.

        Locally the limit is the whole process's (its resident size now counts); on a
        LocalCluster (``workers``) it is each worker's. Without a limit, or on a cluster
        started elsewhere (whose workers have their own limits), nothing changes.

        Returns
        -------
        (source, options)
            ``source`` re-blocked as planned, and these options with the planned threads
            and ``keep_x``.

        Raises
        ------
        MemoryLimitError
            The limit is too small; the message names the smallest that would work.
        """
        if self.memory_limit is None or self.scheduler is not None or self.scheduler_file:
            return source, self
        import os
        from dataclasses import replace

        from scalenmf.engine.memory import process_rss, tighten_heap
        from scalenmf.models.memory import RUNTIME_RESERVE, WORKER_BASELINE, plan_memory

        threads = int(self.threads or os.cpu_count() or 1)
        if self.workers:
            baseline = WORKER_BASELINE
        else:
            tighten_heap()
            # Rounded up, so that a few MB more or less at start give the same blocks (a
            # checkpoint is resumed only with the blocking it was made with).
            quantum = 8 * 2**20
            baseline = -(-(process_rss() + RUNTIME_RESERVE) // quantum) * quantum
        plan = plan_memory(
            source,
            shape,
            self.memory_limit,
            threads=threads,
            baseline=baseline,
            workers=self.workers,
            fixed_blocking=fixed_blocking,
        )
        log.info("memory plan: %s", plan.to_dict())
        if list(plan.block_bounds) != list(source.block_bounds):
            source = source.reblock(plan.block_bounds)
        threads_now = self.threads
        if not self.workers and plan.in_flight < threads:
            threads_now = plan.in_flight  # blocks in line; BLAS keeps its threads
        spill = plan.spill_states if not self.workers else None
        return source, replace(self, threads=threads_now, keep_x=plan.keep_x, spill_states=spill)

    def executor_args(self) -> dict[str, Any]:
        """Keyword arguments of ``scalenmf.engine.make_executor``."""
        # Not dataclasses.asdict: it deep-copies, and a Client or Security must be passed on.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def open(self, source: MatrixSource) -> Executor:
        """The executor for ``source``: local threads, or Dask when a cluster is named."""
        from scalenmf.engine import make_executor

        return make_executor(source, **self.executor_args())

    @contextmanager
    def executor(self, source: MatrixSource) -> Iterator[Executor]:
        """``open(source)`` for the length of a ``with`` block; closed however it ends."""
        executor = self.open(source)
        try:
            yield executor
        finally:
            executor.close()


def cluster_options(
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    threads: int | None = None,
    scheduler_file: str | None = None,
    security: Any = None,
    connect_timeout: str | float | None = None,
    scratch: Any = None,
) -> ClusterOptions:
    """Check the cluster options (``workers ≥ 1``, a readable ``memory_limit``, a
    writable ``scratch`` directory, created if missing).

    Every public function passes its eight cluster arguments here, in this order
    (``CLUSTER_ARGS``; ``cluster_options_of(locals())`` does it by name).
    """
    from scalenmf.io.state_store import check_scratch

    return ClusterOptions(
        scheduler=scheduler,
        workers=NMF_RULES["workers"].check("workers", workers),
        memory_limit=parse_memory(memory_limit),
        threads=threads,
        scheduler_file=scheduler_file,
        security=security,
        connect_timeout=connect_timeout,
        scratch=check_scratch(scratch),
    )


#: The cluster arguments of every public function, in ``cluster_options``' order.
CLUSTER_ARGS = (
    "scheduler",
    "workers",
    "memory_limit",
    "threads",
    "scheduler_file",
    "security",
    "connect_timeout",
    "scratch",
)


def cluster_options_of(args: Mapping[str, Any]) -> ClusterOptions:
    """``cluster_options`` of the ``CLUSTER_ARGS`` in ``args`` (a function's ``locals()``):
    every public function takes them under these names (tests/test_layers.py checks)."""
    return cluster_options(**{name: args[name] for name in CLUSTER_ARGS})


# -- the run ------------------------------------------------------------------------------


def iterate(
    model: Any,
    executor: Executor,
    *,
    max_iter: int,
    tol: float,
    desc: str,
    progress: Any = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    checkpoint: Checkpointer | None = None,
    resume: LoopSnapshot | None = None,
) -> LoopTrace:
    """``run_alternating`` under a progress bar named ``desc``."""
    from scalenmf.engine.loop import run_alternating

    with progress_shown(progress, max_iter, desc) as bar:
        return run_alternating(
            model,
            executor,
            max_iter=max_iter,
            tol=tol,
            callback=callback,
            progress=bar,
            checkpoint=checkpoint,
            resume=resume,
        )


# -- collecting the result ----------------------------------------------------------------
# ``trace`` below is anything with per-fit ``objectives``, ``relative_errors``, ``n_iter``
# and ``converged`` lists: the ``LoopTrace`` of one model's runs or the outcome of many fits.


def best_run(trace: Any) -> int:
    """The run with the lowest final objective (NaN runs never win)."""
    import numpy as np

    return int(np.nanargmin([hist[-1] for hist in trace.objectives]))


def fit_summary(trace: Any, r: int) -> dict[str, Any]:
    """What every result records of its kept run ``r``: ``loss_history``,
    ``relative_error``, ``n_iter``, ``converged``."""
    return {
        "loss_history": [float(v) for v in trace.objectives[r]],
        "relative_error": float(trace.relative_errors[r][-1]),
        "n_iter": int(trace.n_iter[r]),
        "converged": bool(trace.converged[r]),
    }


def run_rows(trace: Any, runs: Sequence[int] | None = None, *, history: bool = False) -> list[dict]:
    """One summary per run (``run``, ``objective``, ``relative_error``, ``n_iter``,
    ``converged``; ``loss_history`` too with ``history``)."""
    rows = []
    for r in range(len(trace.objectives)) if runs is None else runs:
        row: dict[str, Any] = {
            "run": r,
            "objective": float(trace.objectives[r][-1]),
            "relative_error": float(trace.relative_errors[r][-1]),
            "n_iter": int(trace.n_iter[r]),
            "converged": bool(trace.converged[r]),
        }
        if history:
            row["loss_history"] = [float(v) for v in trace.objectives[r]]
        rows.append(row)
    return rows


def fit_timings(
    t0: float, t_init: float, trace: LoopTrace, r: int, *, errors: bool = True
) -> dict[str, Any]:
    """``total_s`` (since ``t0``, a ``perf_counter``), ``init_s``, ``loop_s``,
    ``iter_times`` and, with ``errors``, the kept run's ``relative_errors`` per iteration."""
    out: dict[str, Any] = {
        "total_s": time.perf_counter() - t0,
        "init_s": t_init,
        "loop_s": trace.total_s,
        "iter_times": trace.iter_times,
    }
    if errors:
        out["relative_errors"] = [float(v) for v in trace.relative_errors[r]]
    return out


def run_info(source: MatrixSource, executor: Executor, **extra: Any) -> dict[str, Any]:
    """``extra``, then the blocking, the input's description and the executor's."""
    widths = [b - a for a, b in source.block_bounds]
    return {
        **extra,
        "block_cols": max(widths) if widths else 0,
        "n_blocks": source.n_blocks,
        "input": source.describe(),
        **executor.describe(),
    }


def result_params(p: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The parameters a result records: ``p`` with ``extra``, less the memory budget (a
    property of the machine, not of the fit)."""
    return {**p, "memory_limit": None, **extra}
