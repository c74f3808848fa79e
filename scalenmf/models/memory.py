"""What a fit needs in memory, and the blocking and concurrency that keep it within a limit.

A fit's peak resident memory is, on the machine that runs the block steps:

- the process's **baseline**: the interpreter and libraries (measured when the fit starts,
  plus ``RUNTIME_RESERVE`` for the codec and BLAS threads, arenas and modules the first
  step loads; a Dask worker's is ``WORKER_BASELINE``);
- what lives for the whole fit (``fixed``): the block states (every run's H; under NNDSVD
  the projections T and V, held side by side while one replaces the other), the W's and
  the partial sums waiting in the tree reduction;
- for every block being processed at once (``in_flight``), its worst moment: while it is
  read, the storage chunks being decoded and the block they fill; while it is stepped, the
  block and the block step's temporaries (``step_bytes``, measured with tracemalloc: a
  float64 copy of a float32 block, KL's m × n_j quotients, BPP's per-column systems);
- X itself when its blocks are held in memory between iterations (``cache``).

``plan_memory`` picks, for a memory limit, the widest blocks and the most concurrent blocks
whose need stays within it, or raises ``MemoryLimitError`` naming the smallest limit that
would work. The estimate is deliberately whole (everything above is counted); the measured
peaks against it are in ``docs/benchmarks.md`` ("Memory limit").
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scalenmf.engine import local
from scalenmf.io.planning import MIN_BLOCK_COLS, align_bounds, bounds_by_nnz, bounds_from_cols
from scalenmf.io.source import MatrixSource

MB = 2**20
#: Memory the process takes beyond its RSS when the fit starts: the codec's and BLAS's
#: threads and buffers, malloc arenas, the modules the first step imports (measured 7–30
#: MB for a dense Zarr store on Linux).
RUNTIME_RESERVE = 16 * MB
#: Resident size of a Dask worker process that has run a block step (interpreter,
#: distributed, numpy, scipy, zarr and the engine: 100 MB measured on Linux).
WORKER_BASELINE = 110 * MB
#: Share of a Dask worker's memory limit a plan may fill: the nanny pauses a worker at 80 %
#: and restarts it at 95 %, and freed memory is not always returned to the OS at once.
WORKER_SHARE = 0.75
#: Narrowest block a plan makes when the limit leaves no room for wider ones.
MIN_PLAN_COLS = 16
#: The Zarr reader decodes the chunks of one read concurrently (zarr's default: up to 10).
CONCURRENT_CHUNKS = 10
#: Oversampling of the randomized SVD behind NNDSVD (models/init.py), for its state sizes.
_OVERSAMPLE = 10


class MemoryLimitError(ValueError):
    """The memory limit is below what the fit needs; the message names the smallest one."""


@dataclass(frozen=True)
class FitShape:
    """What a fit's memory depends on besides the data: rank, runs, loss, start, dtype."""

    k: int
    n_runs: int = 1
    loss: str = "frobenius"
    init: str = "nndsvda"
    work_itemsize: int = 8
    masked: bool = False


@dataclass
class MemoryPlan:
    """The blocking and concurrency chosen for a limit, and what they are expected to use.

    Attributes
    ----------
    limit : int
        The limit planned for (bytes; per worker on Dask).
    block_bounds : list of (int, int)
        The column blocks.
    in_flight : int
        Blocks processed at the same time in one process (threads locally, 1 per worker).
    keep_x : bool
        Whether X blocks stay in memory between iterations.
    spill_states : bool
        Whether the block states are kept in a scratch store (locally, when in memory
        they would take more than ``STATE_SHARE`` of the limit).
    need : int
        Expected peak bytes of one process (the breakdown sums to it).
    breakdown : dict
        ``baseline``, ``fixed``, ``blocks_in_flight``, ``x_held``.
    """

    limit: int
    block_bounds: list[tuple[int, int]]
    in_flight: int
    keep_x: bool
    need: int
    breakdown: dict[str, int] = field(default_factory=dict)
    spill_states: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("block_bounds")
        out["n_blocks"] = len(self.block_bounds)
        out["block_cols"] = max(b - a for a, b in self.block_bounds)
        return out


def size_text(nbytes: float) -> str:
    """Bytes as ``--memory-limit`` takes them back (decimal units, rounded up): ``"229MB"``."""
    if nbytes >= 10 * 10**9:
        return f"{math.ceil(nbytes / 10**9)}GB"
    if nbytes >= 10**9:
        return f"{math.ceil(nbytes / 10**8) / 10:g}GB"
    return f"{math.ceil(nbytes / 10**6)}MB"


# -- what one block costs ----------------------------------------------------------------


def step_bytes(m: int, cols: int, nnz: int, shape: FitShape, x_itemsize: int, sparse: bool) -> int:
    """Peak temporaries of one block step on an (m, cols) block with ``nnz`` stored values.

    Measured with tracemalloc (the block itself not counted): dense Frobenius, a float64
    copy of a float32 block; dense KL, about five m × n_j float64 arrays; sparse KL, about
    three k-vectors per stored value; every solver, up to k(k + 20) values per column and
    run (BPP's per-column systems, the k × n_j right-hand sides and new H), half of that
    again for every further run.
    """
    k, runs = shape.k, shape.n_runs
    per_col = cols * 8 * k * (k + 20) * (1 + 0.5 * (runs - 1))
    if sparse:
        data = nnz * (x_itemsize + 4)
        values = 3 * nnz * k * 8 if shape.loss == "kl" else 0
        total = per_col + values + data
    else:
        cells = m * cols
        copy = cells * 8 if x_itemsize < 8 else 0
        quotients = 40 * cells if shape.loss == "kl" else 0
        # the validating pass: isfinite's boolean mask of the block
        total = per_col + copy + quotients + cells
    return int(total * (2 if shape.masked else 1))


def read_bytes(source: MatrixSource, m: int, cols: int, block: int) -> int:
    """Peak of reading a block of ``cols`` columns (``block`` decoded bytes) from ``source``.

    A chunked dense store decodes every chunk the block touches (concurrently) and copies
    the block out of them; a sparse store reads values and indices, then builds the block.
    """
    if source.in_memory:
        return block
    chunk = getattr(source, "chunk_cols", None)
    if source.is_sparse or not chunk:
        return 2 * block
    stored = int(getattr(source, "stored_itemsize", np.dtype(source.dtype).itemsize))
    touched = min(CONCURRENT_CHUNKS, 1 + math.ceil(max(cols - 1, 0) / chunk))
    if cols <= chunk:
        touched = 1  # a plan's narrow blocks lie inside one chunk (``memory_bounds``)
    decoded = touched * m * chunk * stored
    compressed = decoded // 4  # the raw chunk bytes (a guess: lz4/zstd ratios vary)
    converted = block if stored != np.dtype(source.dtype).itemsize else 0
    return int(decoded + compressed + block + converted)


def fixed_bytes(
    source: MatrixSource,
    shape: FitShape,
    n_blocks: int,
    in_flight: int,
    spill_cols: int | None = None,
    *,
    workers: int | None = None,
) -> int:
    """What lives for the whole fit in the process that holds the states and the W's.

    ``spill_cols``: the block states are kept in a scratch store (``io/state_store.py``)
    and the kept H is written to storage block by block; only the states of ``in_flight``
    blocks of ``spill_cols`` columns are in memory at once (old and new, and the encoded
    copy being written).

    ``workers``: the bytes of *each* of this many Dask workers instead, among which the
    states spread evenly. A worker holds its blocks' old states and their new ones until
    the step's reduction is in (``DaskExecutor.map_reduce`` drops the old then), so twice
    its share, and none of the end: H is gathered on the client, not on a worker.
    """
    m, n = source.shape
    if spill_cols is not None:
        n = 2 * in_flight * spill_cols
    k, runs = shape.k, shape.n_runs
    item = shape.work_itemsize
    l = k + _OVERSAMPLE
    partials = m * l * runs * 8 * (max(1, math.ceil(math.log2(max(n_blocks, 2)))) + in_flight + 2)
    ws = 6 * m * k * runs * 8
    if workers:
        share = math.ceil(n / max(1, int(workers)))
        states = 2 * share * k * runs * item
        init = (k + _OVERSAMPLE) * share * 8 * 2 if shape.init.startswith("nndsvd") else 0
        return int(max(states, init) + partials + ws)
    # Blocks run concurrently hold their old states until the pass ends; in line, a new
    # state replaces the old one block by block.
    h_states = (2 if in_flight > 1 else 1) * n * k * runs * item
    # NNDSVD: T (k + oversample rows, float64), then V (k rows) replacing it (held side
    # by side when blocks run concurrently), then V and the first H.
    rows = 2 * k + _OVERSAMPLE if in_flight > 1 else max(k + _OVERSAMPLE, 2 * k)
    init = rows * n * 8 if shape.init.startswith("nndsvd") else 0
    # The end: the states, H gathered (float64) and its copy in the working dtype.
    end = n * k * runs * item + n * k * (8 + item)
    return int(max(h_states, init, end) + partials + ws)


# -- the plan ----------------------------------------------------------------------------


def _block_bytes(source: MatrixSource, m: int, cols: int) -> tuple[int, int]:
    """(decoded bytes, stored values) of an average block of ``cols`` columns."""
    n = max(1, source.shape[1])
    if source.is_sparse:
        nnz = math.ceil(source.nnz * cols / n)
        return nnz * (np.dtype(source.dtype).itemsize + 4) + 8 * (cols + 1), nnz
    return m * cols * np.dtype(source.dtype).itemsize, m * cols


def _widest(source: MatrixSource) -> int:
    return max(b - a for a, b in source.block_bounds)


def per_block_bytes(source: MatrixSource, shape: FitShape, cols: int) -> int:
    """Peak of one block in flight: while it is read, or while it is stepped."""
    m = source.shape[0]
    block, nnz = _block_bytes(source, m, cols)
    stepping = block + step_bytes(
        m, cols, nnz, shape, np.dtype(source.dtype).itemsize, source.is_sparse
    )
    return max(read_bytes(source, m, cols, block), stepping)


def _candidates(source: MatrixSource, widest: int) -> list[int]:
    """Block widths to try, widest first: the current one, whole chunks, parts of a chunk."""
    chunk = getattr(source, "chunk_cols", None)
    out = {widest}
    if chunk and not source.is_sparse:
        c = (widest // chunk) * chunk
        while c >= chunk:
            out.add(c)
            c -= chunk
        for parts in range(2, max(2, chunk // MIN_PLAN_COLS) + 1):
            out.add(math.ceil(chunk / parts))
            if math.ceil(chunk / parts) <= MIN_PLAN_COLS:
                break
    else:
        c = widest
        while c > MIN_PLAN_COLS:
            c = max(MIN_PLAN_COLS, c // 2)
            out.add(c)
    return sorted((c for c in out if c >= 1), reverse=True)


def memory_bounds(source: MatrixSource, cols: int) -> list[tuple[int, int]]:
    """Blocks of about ``cols`` columns: whole chunks, or equal parts of one chunk."""
    n = source.shape[1]
    chunk = getattr(source, "chunk_cols", None)
    if source.is_sparse and hasattr(source, "indptr"):
        per_col = source.nnz / max(1, n)
        return bounds_by_nnz(source.indptr, max(1, int(per_col * cols)))
    if not chunk or source.is_sparse:
        return bounds_from_cols(n, cols)
    if cols >= chunk:
        return align_bounds(chunk, n, cols)
    parts = math.ceil(chunk / cols)
    bounds: list[tuple[int, int]] = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        edges = np.linspace(start, stop, min(parts, stop - start) + 1).round().astype(int)
        bounds += [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]
    return bounds


def plan_memory(
    source: MatrixSource,
    shape: FitShape,
    limit: int,
    *,
    threads: int,
    baseline: int,
    workers: int | None = None,
    fixed_blocking: bool = False,
) -> MemoryPlan:
    """The widest blocks and most concurrent blocks whose peak fits ``limit``.

    Parameters
    ----------
    source : MatrixSource, shape (m, n)
    shape : FitShape
    limit : int
        Bytes for the whole process (locally) or per worker (``workers`` given).
    threads : int
        Threads available locally (blocks run concurrently only as many).
    baseline : int
        The process's resident bytes before the fit (locally: measured now).
    workers : int, optional
        Plan for a LocalCluster of this many single-threaded workers: ``limit`` is each
        worker's; the states and X spread over them.
    fixed_blocking : bool
        Keep the source's blocking (the user chose it); only check it fits.

    Raises
    ------
    MemoryLimitError
        Even one block at a time of the narrowest blocking would exceed ``limit``.
    """
    n_workers = max(1, int(workers or 1))
    room = WORKER_SHARE * limit if workers else float(limit)
    widest = _widest(source)
    widths = [widest] if fixed_blocking else _candidates(source, widest)
    flights = [1] if workers else sorted({max(1, int(threads)), 1}, reverse=True)
    chunk = getattr(source, "chunk_cols", None) or MIN_BLOCK_COLS

    def spills(cols: int, in_flight: int) -> bool:
        if workers:
            return False  # a cluster's states spread over its workers
        n_blocks = max(1, math.ceil(source.shape[1] / max(cols, 1)))
        held = fixed_bytes(source, shape, n_blocks, in_flight)
        # Past this share of the room the states go to a scratch store (the executor's
        # own rule when no plan decides, read at call time so that both stay one).
        return held > local.STATE_SHARE * room

    def need_of(cols: int, in_flight: int, keep: bool) -> dict[str, int]:
        n_blocks = max(1, math.ceil(source.shape[1] / max(cols, 1)))
        spill = cols if spills(cols, in_flight) else None
        fixed = fixed_bytes(source, shape, n_blocks, in_flight, spill, workers=workers)
        per = per_block_bytes(source, shape, cols)
        # An in-memory X is part of the measured baseline already.
        held = source.nbytes if keep and not source.in_memory else 0
        if keep and not source.in_memory:
            # A held block is not read again: its step's peak is its temporaries only.
            block, _ = _block_bytes(source, source.shape[0], cols)
            per = max(per - block, 0)
        if workers:
            held = math.ceil(held / n_workers)
        return {
            "baseline": int(baseline),
            "fixed": int(fixed),
            "blocks_in_flight": int(in_flight * per),
            "x_held": int(held),
        }

    chosen: tuple[int, int, dict[str, int]] | None = None
    for in_flight in flights:
        for cols in widths:
            parts = need_of(cols, in_flight, False)
            if sum(parts.values()) <= room:
                # Concurrent blocks are worth it only as whole chunks (no chunk decoded
                # twice); else one block at a time, as wide as fits, with BLAS threads.
                if in_flight == 1 or cols >= min(chunk, widest) or in_flight == flights[-1]:
                    chosen = (cols, in_flight, parts)
                break
        if chosen is not None:
            break
    if chosen is None:
        narrow = widths[-1]
        smallest = sum(need_of(narrow, 1, False).values())
        smallest = math.ceil(smallest / (WORKER_SHARE if workers else 1.0))
        what = "each Dask worker" if workers else "this fit"
        hint = ", or give a smaller block_cols" if fixed_blocking else ""
        raise MemoryLimitError(
            f"memory_limit is too small ({size_text(limit)}): {what} needs at least "
            f"{size_text(smallest)} (a baseline of {size_text(baseline)}, the block states "
            f"and one block of {narrow} columns at a time); raise it to "
            f"{size_text(smallest)}{hint}"
        )
    cols, in_flight, _ = chosen
    bounds = list(source.block_bounds) if fixed_blocking or cols == widest else None
    if bounds is None:
        bounds = memory_bounds(source, cols)
    keep = _keep_x(source, need_of(cols, in_flight, True), room)
    final = need_of(cols, in_flight, keep)
    return MemoryPlan(
        limit=int(limit),
        block_bounds=bounds,
        in_flight=in_flight,
        keep_x=keep,
        need=int(sum(final.values())),
        breakdown=final,
        spill_states=spills(cols, in_flight),
    )


def _keep_x(source: MatrixSource, held: dict[str, int], room: float) -> bool:
    """Hold X in memory when it is there already or when it fits with everything else."""
    return source.in_memory or sum(held.values()) <= room


# -- projection ---------------------------------------------------------------------------


def projection_sample_bytes(rows: int, itemsize: int, bootstrap: bool, transfer: bool) -> int:
    """Bytes a projection keeps for every sample until it is collected.

    H (``rows`` values in the working dtype; with the bootstrap its lower and upper bounds
    too), the per-sample figures (float64: cosine and relative error, and with transfer
    learning those of the basis alone and the new factors' share) and the novelty flag.
    """
    matrices = rows * itemsize * (3 if bootstrap else 1)
    vectors = 8 * (5 if transfer else 2)
    return int(matrices + vectors + 1)


def projection_spills(n: int, per_sample: int, limit: int | None) -> bool | None:
    """Whether a projection of ``n`` samples keeps its per-sample output out of memory.

    In memory the blocks' outputs and their joined copies are held together (twice
    ``per_sample`` bytes a sample); past ``STATE_SHARE`` of ``limit`` they go to scratch
    arrays block by block instead, so that memory does not grow with n. None without a
    limit (the executor's own rule: in memory).
    """
    if limit is None:
        return None
    return 2 * n * per_sample > local.STATE_SHARE * limit
