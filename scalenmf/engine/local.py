"""Laptop mode: blocks streamed from the store (or held in memory) through a thread pool."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from scalenmf.engine.allocator import keep_freed_memory
from scalenmf.engine.base import BlockFn, BlockRef, realign, resolve_block
from scalenmf.engine.reduce import TreeReducer, add_partials
from scalenmf.io.planning import MIN_SPREAD_VALUES
from scalenmf.io.source import MatrixSource
from scalenmf.io.state_store import StateStore, scratch_location, state_nbytes

log = logging.getLogger(__name__)

#: Share of the memory budget that cached X blocks may take; the rest is for H, the
#: per-thread temporaries and the blocks in flight.
CACHE_SHARE = 0.6

#: Share of the memory budget that the block states (every run's H, k × n and more) may
#: take in memory; past it they are kept in a scratch Zarr store (``io/state_store.py``),
#: each read and written with its X block, so that memory does not grow with n.
STATE_SHARE = 0.25

#: Blocks run concurrently only when the average block holds at least this many stored
#: values. Below it a block step takes tens of microseconds, less than handing it to a
#: thread and back, so the blocks run in line, one after another (measured in
#: benchmarks/bench_small.py: the crossover on 2–16 cores is near 2¹⁷ values). The default
#: blocking splits X over threads only above the same size.
PARALLEL_MIN_VALUES = MIN_SPREAD_VALUES

#: A problem of fewer stored values than this (about 8 MB of float64) runs its whole loop
#: with BLAS pinned to one thread: its products take microseconds to a millisecond, and
#: waking BLAS threads for them costs more than they save — on a busy machine up to a
#: scheduler slice per call (a 96 × 500 KL fit ran 7× slower with two BLAS threads).
SMALL_PROBLEM_VALUES = 1 << 20

_CONTROLLER: Any = None
#: Returned by a thread that has kept its block's new state itself.
_KEPT: Any = type("_Kept", (), {})()
#: Marks a block whose state is in the scratch store.
_IN_STORE: Any = type("_InStore", (), {"__repr__": lambda self: "<state in the scratch store>"})()


def _blas_controller() -> Any:
    """One ``ThreadpoolController`` for the process.

    Building one scans the loaded shared libraries (``/proc/self/maps`` on Linux), which
    costs milliseconds; ``threadpool_limits`` builds a new one on every call. The BLAS
    libraries a fit uses are loaded long before the first fit, so one scan serves them all.
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


@contextlib.contextmanager
def _blas_threads(limit: int | None) -> Iterator[None]:
    """Pin BLAS to ``limit`` threads while blocks run concurrently (no oversubscription)."""
    if limit is None:
        yield
        return
    with _blas_controller().limit(limits=limit, user_api="blas"):
        yield


def _block_values(source: MatrixSource) -> float:
    """Average stored values per block (non-zeros for sparse sources)."""
    return float(source.nnz) / max(1, source.n_blocks)


class LocalExecutor:
    """Run block steps on threads of this process.

    X blocks are kept in memory when the source already is in memory, or when all decoded
    blocks fit in ``CACHE_SHARE`` of ``memory_limit``; otherwise each step re-reads its
    block, so peak memory is about ``threads`` blocks regardless of n.

    Parameters
    ----------
    source : MatrixSource
    threads : int
        Worker threads. Blocks run concurrently, each using single-threaded BLAS, when
        there are at least as many blocks as threads and blocks are large enough to be
        worth a thread (``PARALLEL_MIN_VALUES``); otherwise blocks run in line, one after
        another, and BLAS uses the threads — except on small problems
        (``SMALL_PROBLEM_VALUES``), where BLAS stays on one thread.
    memory_limit : int, optional
        Bytes available for X blocks and temporaries (None: cache when it fits in RAM).
    cache : bool, optional
        Hold X blocks in memory (True) or re-read them every step (False), as a memory
        plan decided; None: decide from ``memory_limit``.
    spill_states : bool, optional
        Keep the block states in a scratch Zarr store (True) or in memory (False), as a
        memory plan decided; None: in memory until, projected from the states stored so
        far, all of them would exceed ``STATE_SHARE`` of ``memory_limit`` (never without a
        limit).
    scratch : path, optional
        Directory (or URL) for the scratch store; default ``$SCALENMF_SCRATCH`` or the
        system's temporary directory. The store is removed by ``close``.
    """

    def __init__(
        self,
        source: MatrixSource,
        *,
        threads: int = 1,
        memory_limit: int | None = None,
        cache: bool | None = None,
        spill_states: bool | None = None,
        scratch: Any = None,
    ):
        self.source = source
        self.threads = max(1, int(threads))
        self.memory_limit = memory_limit
        keep_freed_memory()
        self._want_cache = cache
        self._states: list[Any] = [None] * source.n_blocks
        self._cache: list[Any] | None = None
        self._cache_decided = False
        self._pool: ThreadPoolExecutor | None = None
        #: Blocks too small to be worth a thread of their own run in line, one after another.
        self.parallel_blocks = (
            self.threads > 1
            and source.n_blocks >= self.threads
            and _block_values(source) >= PARALLEL_MIN_VALUES
        )
        #: Small problems (see ``SMALL_PROBLEM_VALUES``) keep BLAS on one thread throughout.
        self.small_problem = not self.parallel_blocks and source.nnz < SMALL_PROBLEM_VALUES
        self._scope_depth = 0
        self._want_spill = spill_states
        #: Where scratch stores go (None: ``$SCALENMF_SCRATCH`` or the system's temp dir).
        self.scratch = scratch
        #: Where the states are when they are not in ``_states`` (None: in memory).
        self.spill: StateStore | None = None
        if spill_states:
            self._start_spill()

    # -- block states -----------------------------------------------------------------
    def _start_spill(self) -> None:
        """Move the states to a scratch store; from now on they live there."""
        self.spill = StateStore(scratch_location(self.scratch))
        log.info("keeping block states in the scratch store %s", self.spill.path)
        for j, state in enumerate(self._states):
            if state is not None and state is not _IN_STORE:
                self.spill.write(j, state)
                self._states[j] = _IN_STORE

    @property
    def stream_states(self) -> bool:
        """Whether collecting should take the states one at a time to storage (they are
        kept out of memory)."""
        return self.spill is not None

    def _state(self, j: int) -> Any:
        """Block ``j``'s state, read from the scratch store if it is there."""
        state = self._states[j]
        if state is _IN_STORE:
            assert self.spill is not None
            return realign(self.spill.read(j))
        return state

    def _keep(self, j: int, state: Any) -> None:
        """Hold block ``j``'s new state: in memory, or written to the scratch store."""
        if self.spill is None and self._want_spill is None and self.memory_limit:
            a, b = self.source.block_bounds[j]
            per_col = state_nbytes(state) / max(1, b - a)
            if per_col * self.source.shape[1] > STATE_SHARE * self.memory_limit:
                self._states[j] = state
                self._start_spill()
                return
        if self.spill is None or state is None:
            self._states[j] = state
        else:
            self.spill.write(j, state)
            self._states[j] = _IN_STORE

    def _should_cache(self) -> bool:
        if self.source.in_memory:
            return True
        if self._want_cache is not None:
            return self._want_cache
        budget = self.memory_limit
        if budget is None:
            try:
                import psutil

                budget = int(psutil.virtual_memory().available * 0.5)
            except ImportError:  # pragma: no cover - distributed depends on psutil
                budget = 2**31
        return self.source.nbytes <= CACHE_SHARE * budget

    def _apply(self, fn: BlockFn, xref: Any, state: Any, broadcast: Any) -> tuple[Any, Any]:
        # Unlike ``apply_block``, states and broadcasts are not walked for unaligned arrays:
        # in this process they are numpy's own allocations, always aligned (restored
        # states are realigned once, in ``set_states``). Only X, which the caller may hand
        # over as any view, is checked.
        X = realign(resolve_block(xref)) if xref is not None else None
        return fn(X, state, broadcast)

    def _apply_stored(self, fn: BlockFn, read_x: bool, j: int, broadcast: Any) -> tuple[Any, Any]:
        """``_apply`` on block ``j`` with its state read from and written to the store."""
        state, partial = self._apply(
            fn, self._xref(j) if read_x else None, self._state(j), broadcast
        )
        self._keep(j, state)
        return _KEPT, partial

    def _xref(self, j: int) -> Any:
        if self._cache is not None:
            return self._cache[j]
        return BlockRef(self.source, j)

    def _map(
        self, fn: BlockFn, broadcast: Any, read_x: bool, blocks: list[int]
    ) -> Iterator[tuple[Any, Any]]:
        if self.parallel_blocks:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="scalenmf")
            pool = self._pool
            if self.spill is not None:
                # Each thread reads its block's state and writes the new one: only the
                # states of the blocks in flight are in memory.
                futures = [
                    pool.submit(self._apply_stored, fn, read_x, j, broadcast) for j in blocks
                ]
                for fut in futures:
                    yield fut.result()
                return
            args = [(self._xref(j) if read_x else None, self._states[j]) for j in blocks]
            futures = [pool.submit(self._apply, fn, x, s, broadcast) for x, s in args]
            del args
            for fut in futures:
                yield fut.result()
        else:
            # One block at a time, holding no list of the old states: each is released as
            # its new state replaces it (the memory plan counts one set of states).
            for j in blocks:
                yield self._apply(fn, self._xref(j) if read_x else None, self._state(j), broadcast)

    def map_reduce(
        self, fn: BlockFn, broadcast: Any, *, read_x: bool = True, blocks: Any = None
    ) -> Any:
        if read_x and not self._cache_decided:
            self._cache_decided = True
            if self._should_cache():
                # Reading once here keeps later iterations free of I/O and decoding.
                self._cache = [self.source.read_block(j) for j in range(self.source.n_blocks)]
                log.debug("holding %d X blocks in memory", self.source.n_blocks)
        reducer: TreeReducer[Any] = TreeReducer(add_partials)
        # Inside ``compute_scope`` a small problem already runs with BLAS pinned; entering a
        # limit costs tens of microseconds, as much as a small block step.
        pin = self.parallel_blocks or (self.small_problem and not self._scope_depth)
        with _blas_threads(1 if pin else None):
            idx = list(range(self.source.n_blocks)) if blocks is None else [int(j) for j in blocks]
            for j, (state, partial) in zip(idx, self._map(fn, broadcast, read_x, idx), strict=True):
                if state is not _KEPT:
                    self._keep(j, state)
                reducer.push(partial)
        return reducer.result()

    @contextlib.contextmanager
    def compute_scope(self) -> Iterator[None]:
        """Hold the BLAS setting of small problems for a whole loop (block steps and the
        global updates between them), instead of entering it on every ``map_reduce``."""
        with _blas_threads(1 if self.small_problem else None):
            self._scope_depth += 1
            try:
                yield
            finally:
                self._scope_depth -= 1

    def states(self) -> Iterator[Any]:
        # One at a time: with a scratch store, only the state being looked at is in memory.
        for j in range(self.source.n_blocks):
            yield self._state(j)

    def set_states(self, states: Iterable[Any]) -> None:
        # Taken one at a time: restored from a checkpoint into the scratch store, the
        # states never sit in memory together.
        self._states = [None] * self.source.n_blocks
        count = 0
        for j, state in enumerate(states):
            if j >= self.source.n_blocks:
                count = j + 1
                continue
            self._keep(j, realign(state))
            count = j + 1
        if count != self.source.n_blocks:
            self._states = [None] * self.source.n_blocks
            raise ValueError(f"expected {self.source.n_blocks} block states, got {count}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.spill is not None:
            self.spill.remove()
            self.spill = None
            self._states = [None] * self.source.n_blocks

    def describe(self) -> dict[str, Any]:
        return {
            "executor": "local",
            "threads": self.threads,
            "parallel_blocks": self.parallel_blocks,
            "small_problem": self.small_problem,
            "cached": self._cache is not None,
            "states_in_store": self.spill is not None,
        }
