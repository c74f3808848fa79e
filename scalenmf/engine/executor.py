"""How an executor is chosen: ``make_executor`` (also ``scalenmf.engine.make_executor``).

The contract every executor meets lives in ``engine/base.py`` (re-exported here, so
``from scalenmf.engine.executor import Executor`` keeps working); the executors import the
contract, not this module, so the factory can import them without a cycle.
"""

from __future__ import annotations

import os
from typing import Any

from scalenmf.engine.base import BlockFn, BlockRef, Executor, apply_block, realign, resolve_block
from scalenmf.io.source import MatrixSource

__all__ = [
    "BlockFn",
    "BlockRef",
    "Executor",
    "apply_block",
    "make_executor",
    "realign",
    "resolve_block",
]


def make_executor(
    source: MatrixSource,
    *,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | None = None,
    threads: int | None = None,
    keep_x: bool | None = None,
    spill_states: bool | None = None,
    scratch: Any = None,
    **cluster: Any,
) -> Executor:
    """Pick the executor: Dask when a scheduler or a worker count is given, else local.

    Parameters
    ----------
    source : MatrixSource
    scheduler : str or distributed.Client, optional
        ``"tcp://host:port"``, a scheduler-file path, or a connected Client.
    workers : int, optional
        Start a LocalCluster with this many worker processes.
    memory_limit : int, optional
        Bytes. Locally: keep X blocks in memory only if they fit. On Dask: per worker.
    threads : int, optional
        Local thread count (default: the machine's cores).
    keep_x : bool, optional
        Hold X blocks in memory between steps (True) or re-read them (False), as a memory
        plan decided (the local cache, the Dask resident blocks); None: decide from
        ``memory_limit``.
    spill_states : bool, optional
        Keep the block states in a scratch Zarr store (True) or in memory (False), as a
        memory plan decided; None: the local executor decides from ``memory_limit`` (a
        Dask executor keeps them on its workers).
    scratch : path, optional
        Where scratch stores go (the local executor's states, the Dask executor's anchor):
        a directory or URL; default ``$SCALENMF_SCRATCH`` or the system's temporary one.
    **cluster
        Passed to ``DaskExecutor`` (``scheduler_file``, ``security``, ``connect_timeout``,
        ``anchor_every``); None values are dropped.
    """
    cluster = {key: value for key, value in cluster.items() if value is not None}
    if scheduler is not None or workers or cluster.get("scheduler_file") is not None:
        from scalenmf.engine.dask_exec import DaskExecutor

        return DaskExecutor(
            source,
            scheduler=scheduler,
            workers=workers,
            memory_limit=memory_limit,
            resident=keep_x,
            scratch=scratch,
            **cluster,
        )
    from scalenmf.engine.local import LocalExecutor

    return LocalExecutor(
        source,
        threads=threads or (os.cpu_count() or 1),
        memory_limit=memory_limit,
        cache=keep_x,
        spill_states=spill_states,
        scratch=scratch,
    )
