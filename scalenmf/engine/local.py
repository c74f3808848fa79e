"""Laptop mode: blocks streamed from the store (or held in memory) through a thread pool."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from scalenmf.engine.base import BlockFn, BlockRef, apply_block
from scalenmf.engine.reduce import TreeReducer, add_partials
from scalenmf.io.source import MatrixSource

log = logging.getLogger(__name__)

#: Share of the memory budget that cached X blocks may take; the rest is for H, the
#: per-thread temporaries and the blocks in flight.
CACHE_SHARE = 0.6


@contextlib.contextmanager
def _blas_threads(limit: int | None) -> Iterator[None]:
    """Pin BLAS to ``limit`` threads while blocks run concurrently (no oversubscription)."""
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit, user_api="blas"):
        yield


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
        there are at least as many blocks as threads; otherwise blocks run one after
        another and BLAS uses the threads.
    memory_limit : int, optional
        Bytes available for X blocks and temporaries (None: cache when it fits in RAM).
    """

    def __init__(self, source: MatrixSource, *, threads: int = 1, memory_limit: int | None = None):
        self.source = source
        self.threads = max(1, int(threads))
        self.memory_limit = memory_limit
        self._states: list[Any] = [None] * source.n_blocks
        self._cache: list[Any] | None = None
        self._cache_decided = False
        self._pool: ThreadPoolExecutor | None = None
        self.parallel_blocks = self.threads > 1 and source.n_blocks >= self.threads

    def _should_cache(self) -> bool:
        if self.source.in_memory:
            return True
        budget = self.memory_limit
        if budget is None:
            try:
                import psutil

                budget = int(psutil.virtual_memory().available * 0.5)
            except ImportError:  # pragma: no cover - distributed depends on psutil
                budget = 2**31
        return self.source.nbytes <= CACHE_SHARE * budget

    def _xref(self, j: int) -> Any:
        if self._cache is not None:
            return self._cache[j]
        return BlockRef(self.source, j)

    def _map(self, fn: BlockFn, broadcast: Any, read_x: bool) -> Iterator[tuple[Any, Any]]:
        n = self.source.n_blocks
        args = [(self._xref(j) if read_x else None, self._states[j]) for j in range(n)]
        if self.parallel_blocks:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="scalenmf")
            pool = self._pool
            futures = [pool.submit(apply_block, fn, x, s, broadcast) for x, s in args]
            for fut in futures:
                yield fut.result()
        else:
            for x, s in args:
                yield apply_block(fn, x, s, broadcast)

    def map_reduce(self, fn: BlockFn, broadcast: Any, *, read_x: bool = True) -> Any:
        if read_x and not self._cache_decided:
            self._cache_decided = True
            if self._should_cache():
                # Reading once here keeps later iterations free of I/O and decoding.
                self._cache = [self.source.read_block(j) for j in range(self.source.n_blocks)]
                log.debug("holding %d X blocks in memory", self.source.n_blocks)
        reducer: TreeReducer[Any] = TreeReducer(add_partials)
        with _blas_threads(1 if self.parallel_blocks else None):
            for j, (state, partial) in enumerate(self._map(fn, broadcast, read_x)):
                self._states[j] = state
                reducer.push(partial)
        return reducer.result()

    def states(self) -> Iterator[Any]:
        yield from self._states

    def set_states(self, states: list[Any]) -> None:
        if len(states) != self.source.n_blocks:
            raise ValueError(f"expected {self.source.n_blocks} block states, got {len(states)}")
        self._states = list(states)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        return {
            "executor": "local",
            "threads": self.threads,
            "parallel_blocks": self.parallel_blocks,
            "cached": self._cache is not None,
        }
