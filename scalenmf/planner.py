"""``plan``: a dry run that sizes a fit before it is started.

It opens the input (no full read), takes the blocking the fit would use, and runs the real
block step on a few blocks with a random W to measure seconds per column (read and
compute apart). From those it estimates, for a given number of workers: the memory each
worker needs, the wall time of one iteration, and how many workers keep X resident in
memory. What it cannot see (other jobs on the nodes, the network) is left out; the probe's
figures are printed so the user can judge.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scalenmf.io.matrix import as_source
from scalenmf.validation import parse_memory

#: Memory of an idle dask worker process (interpreter, numpy, distributed).
WORKER_BASELINE_BYTES = 250 * 2**20
#: Scheduler and transfer overhead per block task and iteration on Dask (measured order).
TASK_OVERHEAD_S = 0.004
#: Share of a worker's memory that resident X blocks may use (as the Dask executor).
RESIDENT_SHARE = 0.5


@dataclass
class Plan:
    """What ``plan`` estimates for a fit of ``X`` (m × n) at rank ``k``."""

    shape: tuple[int, int]
    sparse: bool
    dtype: str
    k: int
    n_runs: int
    n_blocks: int
    block_cols: int
    block_bytes: int
    x_bytes: int
    h_bytes: int
    workers: int
    workers_for_resident: int | None
    resident: bool
    memory_per_worker_bytes: int
    memory_breakdown: dict[str, int]
    seconds_per_iteration: float
    probe: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(
    X: Any,
    k: int,
    *,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    block_cols: Any = None,
    n_runs: int = 1,
    solver: str | None = None,
    loss: str = "frobenius",
    probe_blocks: int = 2,
) -> Plan:
    """Estimate memory per worker, seconds per iteration, blocking and worker count.

    Parameters
    ----------
    X : path, URL, array or MatrixSource, shape (m, n)
    k : int
        Rank.
    workers : int, optional
        Plan for this many workers (default: the number that keeps X resident within
        ``memory_limit``, else this machine's cores).
    memory_limit : int or str, optional
        Memory per worker (``"8GB"``); decides whether X can stay resident.
    block_cols : optional
        Override the blocking (as in ``nmf``).
    n_runs : int
        Restarts sharing each pass (H memory grows with them).
    probe_blocks : int
        Blocks read and stepped to measure speed.
    """
    from scalenmf.api import check_rank

    if int(k) < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    source = as_source(X, block_cols=block_cols)
    check_rank(int(k), source.shape)
    m, n = source.shape
    itemsize = np.dtype(source.dtype).itemsize
    widths = [b - a for a, b in source.block_bounds]
    widest = max(widths)
    block_bytes = max(source.block_nbytes(j) for j in range(source.n_blocks))
    x_bytes = int(source.nbytes)
    h_bytes = int(k * n * n_runs * itemsize)
    budget = parse_memory(memory_limit)
    need = None
    if budget is not None:
        room = RESIDENT_SHARE * budget - WORKER_BASELINE_BYTES
        need = math.ceil(x_bytes / room) if room > 0 else None
    if workers is None:
        workers = max(1, min(source.n_blocks, need or (os.cpu_count() or 1)))
    workers = max(1, int(workers))
    resident = need is not None and workers >= need if budget is not None else True
    per_block_temp = int(
        widest * k * n_runs * 8 * 3  # B_j, the new H_j and its float64 copy
        + m * k * n_runs * 8 * 2  # X_j H_jᵀ and the broadcast W
        + (0 if resident else block_bytes)  # the block being read when X is not resident
    )
    breakdown = {
        "x_resident": math.ceil(x_bytes / workers) if resident else 0,
        "h_blocks": math.ceil(h_bytes / workers),
        "step_temporaries": per_block_temp,
        "worker_baseline": WORKER_BASELINE_BYTES,
    }
    probe = _measure(source, int(k), n_runs, solver, loss, max(1, int(probe_blocks)))
    cols_per_worker = n / workers
    compute = probe["step_s_per_col"] * cols_per_worker
    read = 0.0 if resident else probe["read_s_per_col"] * cols_per_worker
    tasks = TASK_OVERHEAD_S * math.ceil(source.n_blocks / workers) if workers > 1 else 0.0
    seconds = compute + read + tasks + probe["w_update_s"]
    return Plan(
        shape=(m, n),
        sparse=bool(source.is_sparse),
        dtype=str(np.dtype(source.dtype)),
        k=int(k),
        n_runs=int(n_runs),
        n_blocks=source.n_blocks,
        block_cols=widest,
        block_bytes=int(block_bytes),
        x_bytes=x_bytes,
        h_bytes=h_bytes,
        workers=workers,
        workers_for_resident=need,
        resident=bool(resident),
        memory_per_worker_bytes=int(sum(breakdown.values())),
        memory_breakdown=breakdown,
        seconds_per_iteration=float(seconds),
        probe=probe,
    )


def _measure(
    source: Any, k: int, n_runs: int, solver: str | None, loss: str, blocks: int
) -> dict[str, float]:
    """Seconds per column to read and to step a few real blocks, and of one W update."""
    from scalenmf.api import HALS_SWEEPS, resolve_solver
    from scalenmf.engine.reduce import TreeReducer, add_partials
    from scalenmf.models.init import random_w
    from scalenmf.models.nmf import NMFConfig, NMFModel

    solver = resolve_solver(solver, loss)
    config = NMFConfig(
        k=k, solver=solver, loss=loss, inner_sweeps=HALS_SWEEPS if solver == "hals" else 50
    )
    m = source.shape[0]
    dtype = np.dtype(source.dtype)
    rng = np.random.default_rng(0)
    picks = np.linspace(0, source.n_blocks - 1, min(blocks, source.n_blocks)).astype(int)
    t_read = t_step = 0.0
    cols = 0
    reducer: TreeReducer[Any] = TreeReducer(add_partials)
    mean = 1.0
    Ws = [random_w(m, k, mean, rng, dtype) for _ in range(n_runs)]
    model = NMFModel(config, Ws, [1.0] * n_runs, 1.0)
    bc = model.broadcast(list(range(n_runs)), False)
    for j in sorted(set(picks.tolist())):
        t0 = time.perf_counter()
        block = source.read_block(int(j))
        t1 = time.perf_counter()
        # Two steps: the second, warm-started one is what a typical iteration costs.
        state, _ = model.step(block, None, bc)
        t2 = time.perf_counter()
        state, parts = model.step(block, state, bc)
        t3 = time.perf_counter()
        t_read += t1 - t0
        t_step += t3 - t2
        cols += block.shape[1]
        reducer.push(parts)
    total = reducer.result()
    t0 = time.perf_counter()
    for r in range(n_runs):
        model.score(r, total, r)
        model.advance(r, total, r)
    model.flush()
    w_update = time.perf_counter() - t0
    cols = max(1, cols)
    return {
        "probed_columns": float(cols),
        "read_s_per_col": t_read / cols,
        "step_s_per_col": t_step / cols,
        "w_update_s": w_update,
    }


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1024 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def format_plan(p: Plan) -> str:
    """The plan as a short human-readable report."""
    m, n = p.shape
    kind = "sparse" if p.sparse else "dense"
    lines = [
        f"X {m}×{n} {kind} {p.dtype} ({_size(p.x_bytes)} decoded), k={p.k}, runs={p.n_runs}",
        f"blocks: {p.n_blocks} of up to {p.block_cols} columns ({_size(p.block_bytes)} each)",
        f"workers: {p.workers}"
        + (
            f" (X stays resident with ≥ {p.workers_for_resident})" if p.workers_for_resident else ""
        ),
        f"X resident on the workers: {'yes' if p.resident else 'no (re-read every iteration)'}",
        f"memory per worker: ~{_size(p.memory_per_worker_bytes)}  ("
        + ", ".join(f"{k.replace('_', ' ')} {_size(v)}" for k, v in p.memory_breakdown.items())
        + ")",
        f"time per iteration: ~{p.seconds_per_iteration:.3g} s  (probe: "
        f"{p.probe['probed_columns']:.0f} columns, "
        f"step {p.probe['step_s_per_col'] * 1e6:.3g} µs/col, "
        f"read {p.probe['read_s_per_col'] * 1e6:.3g} µs/col, "
        f"W update {p.probe['w_update_s']:.3g} s)",
    ]
    return "\n".join(lines)
