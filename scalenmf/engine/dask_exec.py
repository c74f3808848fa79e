"""The Dask executor: the same block map and tree reduce, run as tasks on a cluster.

X blocks are loaded by the workers themselves (from the store, by path) and kept resident
as task outputs when the cluster has room; H blocks stay on the workers as task outputs of
the previous step (never only as scattered data). Per iteration only the broadcast (W and
small matrices) goes out and the k×k / m×k partials come back. Each iteration submits the
same number of tasks and releases the previous ones, so the graph does not grow.
"""

from __future__ import annotations

import logging
import operator
import uuid
from collections.abc import Iterator
from typing import Any

from scalenmf.engine.executor import BlockFn, BlockRef, apply_block, realign
from scalenmf.engine.reduce import TreeReducer, add_partials
from scalenmf.io.source import MatrixSource

log = logging.getLogger(__name__)

#: Share of the cluster's total worker memory that resident X blocks may take.
RESIDENT_SHARE = 0.5


def _load(ref: BlockRef) -> Any:
    # Realigned once here, so a resident block is not copied again at every step.
    return realign(ref.load())


def connect(scheduler: Any = None, workers: int | None = None, memory_limit: int | None = None):
    """``(client, owned_cluster, owns_client)`` for an address, scheduler file, Client or N."""
    from distributed import Client, LocalCluster

    if scheduler is not None and hasattr(scheduler, "submit"):
        return scheduler, None, False
    if scheduler is not None:
        address = str(scheduler)
        if address.endswith(".json"):
            return Client(scheduler_file=address, timeout="30s"), None, True
        return Client(address, timeout="30s"), None, True
    cluster = LocalCluster(
        n_workers=int(workers or 1),
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        # The dashboard stays on loopback; a user who wants it remote asks for it.
        dashboard_address="127.0.0.1:0",
        memory_limit=memory_limit if memory_limit else "auto",
    )
    return Client(cluster), cluster, True


class DaskExecutor:
    """Run block steps as tasks on a ``distributed`` cluster.

    Parameters
    ----------
    source : MatrixSource
        Must be readable on the workers (a store path, or in-memory data that pickles).
    scheduler : str or Client, optional
        Address, scheduler file (``*.json``) or Client.
    workers : int, optional
        Start a LocalCluster with this many single-threaded worker processes.
    memory_limit : int, optional
        Bytes per worker (for a LocalCluster) — also decides whether X stays resident.
    resident : bool, optional
        Force X blocks resident on workers (True) or re-read every step (False).
    """

    def __init__(
        self,
        source: MatrixSource,
        *,
        scheduler: Any = None,
        workers: int | None = None,
        memory_limit: int | None = None,
        resident: bool | None = None,
    ):
        self.source = source
        self.client, self._cluster, self._owns_client = connect(scheduler, workers, memory_limit)
        self._token = uuid.uuid4().hex[:8]
        self._step = 0
        self._states: list[Any] = [None] * source.n_blocks
        self._resident: list[Any] | None = None
        self._want_resident = resident
        self._decided = False

    # -- X blocks ---------------------------------------------------------------------
    def _cluster_memory(self) -> int:
        info = self.client.scheduler_info()
        return int(sum(w.get("memory_limit", 0) or 0 for w in info["workers"].values()))

    def _decide_resident(self) -> None:
        if self._decided:
            return
        self._decided = True
        keep = self._want_resident
        if keep is None:
            total = self._cluster_memory()
            keep = total == 0 or self.source.nbytes <= RESIDENT_SHARE * total
        if keep:
            self._resident = [
                self.client.submit(
                    _load, BlockRef(self.source, j), key=f"scalenmf-x-{self._token}-{j}", pure=False
                )
                for j in range(self.source.n_blocks)
            ]

    def _xref(self, j: int) -> Any:
        if self._resident is not None:
            return self._resident[j]
        return BlockRef(self.source, j)

    # -- the step ---------------------------------------------------------------------
    def map_reduce(self, fn: BlockFn, broadcast: Any, *, read_x: bool = True) -> Any:
        if read_x:
            self._decide_resident()
        client = self.client
        self._step += 1
        tag = f"{self._token}-{self._step}"
        [bc] = client.scatter([broadcast], broadcast=True, hash=False)
        outs = [
            client.submit(
                apply_block,
                fn,
                self._xref(j) if read_x else None,
                self._states[j],
                bc,
                key=f"scalenmf-step-{tag}-{j}",
                pure=False,
            )
            for j in range(self.source.n_blocks)
        ]
        new_states = [
            client.submit(operator.getitem, o, 0, key=f"scalenmf-h-{tag}-{j}", pure=False)
            for j, o in enumerate(outs)
        ]
        partials = [
            client.submit(operator.getitem, o, 1, key=f"scalenmf-p-{tag}-{j}", pure=False)
            for j, o in enumerate(outs)
        ]
        counter = iter(range(10**9))

        def merge(a: Any, b: Any) -> Any:
            return client.submit(
                add_partials, a, b, key=f"scalenmf-sum-{tag}-{next(counter)}", pure=False
            )

        reducer: TreeReducer[Any] = TreeReducer(merge)
        for p in partials:
            reducer.push(p)
        total = reducer.result()
        # Received arrays may be unaligned (see ``realign``): copy those before any math.
        result = realign(total.result() if hasattr(total, "result") else total)
        # New H blocks replace the old; dropping the references frees the old tasks.
        self._states = new_states
        del outs, partials, total, bc
        return result

    def states(self) -> Iterator[Any]:
        for s in self._states:
            yield realign(s.result() if hasattr(s, "result") else s)

    def set_states(self, states: list[Any]) -> None:
        if len(states) != self.source.n_blocks:
            raise ValueError(f"expected {self.source.n_blocks} block states, got {len(states)}")
        self._states = [
            self.client.scatter(s, hash=False) if s is not None else None for s in states
        ]

    def close(self) -> None:
        self._states = [None] * self.source.n_blocks
        self._resident = None
        if self._owns_client:
            self.client.close()
            self._owns_client = False
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def describe(self) -> dict[str, Any]:
        info = self.client.scheduler_info()
        return {
            "executor": "dask",
            "scheduler": str(self.client.scheduler.address),
            "n_workers": len(info.get("workers", {})),
            "resident": self._resident is not None,
        }
