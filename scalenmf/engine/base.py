"""What every executor offers the fit loops (the contract; ``executor.py`` chooses one).

An executor owns the column blocks of X and one piece of *state* per block (the H block of
every run). A fit loop only ever asks it to apply a pure block function to every block and
return the tree-summed partials::

    partials = executor.map_reduce(block_fn, broadcast)

``block_fn(X_j, state_j, broadcast) -> (new_state_j, partials_j)`` is a module-level pure
function (so it pickles to Dask workers); ``X_j`` is ``None`` when ``read_x=False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from scalenmf.engine.allocator import keep_freed_memory
from scalenmf.io.source import MatrixSource

BlockFn = Callable[[Any, Any, Any], tuple[Any, Any]]


@dataclass(frozen=True)
class BlockRef:
    """A block to be read where the task runs (a worker, or a local thread)."""

    source: MatrixSource
    index: int

    def load(self) -> Any:
        return self.source.read_block(self.index)


def resolve_block(ref: Any) -> Any:
    """The in-memory block behind a cached block or a ``BlockRef``."""
    return ref.load() if isinstance(ref, BlockRef) else ref


def realign(obj: Any) -> Any:
    """``obj`` with every ndarray that is not aligned to its itemsize replaced by a copy.

    Arrays deserialized from a Dask message can start at any byte offset. numpy hands only
    aligned arrays to BLAS and multiplies unaligned ones with its own loops, which sum in
    another order: the executors would then differ in the last bits. Walks dicts, lists,
    tuples and dataclasses; returns ``obj`` itself when nothing needed a copy.
    """
    if isinstance(obj, np.ndarray):
        return obj if obj.flags.aligned else obj.copy(order="K")
    if isinstance(obj, dict):
        items = {key: realign(value) for key, value in obj.items()}
        same = all(items[key] is value for key, value in obj.items())
        return obj if same else items
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        values = [realign(value) for value in obj]
        same = all(new is old for new, old in zip(values, obj, strict=True))
        return obj if same else type(obj)(values)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            if f.init:
                value = getattr(obj, f.name)
                new = realign(value)
                if new is not value:
                    changes[f.name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    return obj


def apply_block(fn: BlockFn, xref: Any, state: Any, broadcast: Any) -> tuple[Any, Any]:
    """Run ``fn`` on one block: the one place a block is read for a step (on workers)."""
    keep_freed_memory()  # once per worker process
    X = resolve_block(xref) if xref is not None else None
    return fn(realign(X), realign(state), realign(broadcast))


class Executor(Protocol):
    """The contract between the fit loops and where blocks live."""

    source: MatrixSource

    def map_reduce(
        self, fn: BlockFn, broadcast: Any, *, read_x: bool = True, blocks: Any = None
    ) -> Any:
        """Apply ``fn`` to every block (or to the blocks numbered in ``blocks``; the others
        keep their states), keep the new states, return the summed partials."""

    def states(self) -> Iterator[Any]:
        """The per-block states, in block order (brought to this process)."""

    def set_states(self, states: Iterable[Any]) -> None:
        """Replace the per-block states (e.g. restoring a checkpoint), taken in order
        from ``states`` (a list or an iterator: one per block)."""

    def close(self) -> None:
        """Release threads, futures or the cluster the executor started."""

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description for result attrs."""
