"""The Dask executor: the same block map and tree reduce, run as tasks on a cluster.

X blocks are loaded by the workers themselves (from the store, by path) and kept resident
as task outputs when the cluster has room; they have no dependencies, so Dask recomputes a
lost one on another worker. H blocks stay on the workers as task outputs of the previous
step. Per iteration only the broadcast (W and small matrices) goes out and the k×k / m×k
partials come back. Each step submits the same number of tasks and releases the previous
ones, so the graph does not grow.

Fault tolerance. A task output whose worker dies can be recomputed only while its inputs
still exist, and the previous H blocks are released after every step (else the graph would
grow). So the executor keeps its own lineage, bounded: an *anchor* (a copy of the block
states, taken every ``anchor_every`` steps) and the log of the steps since (their block
function and broadcast). When a worker is lost and a block state with it, the executor
re-submits the logged steps from the anchor. The block functions are pure and the
reduction order is fixed, so the replayed states and partials are bit-identical to the lost
ones: the fit ends exactly as an undisturbed one.

The anchor is kept in storage when the workers can reach it (``anchor="storage"``; the
default when every worker runs on this host, or when a ``scratch`` location is given): each
worker writes the states it holds to a scratch Zarr store (``io/state_store.py``) and the
client holds only their names, so client memory does not grow with n. A new anchor is
written as a new generation and the old one dropped only once it is complete. Otherwise
(``anchor="client"``) the states are copied to the client, as one copy of them. Either way
the client holds at most ``anchor_every`` broadcasts.
"""

from __future__ import annotations

import logging
import operator
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any

from scalenmf.engine import local
from scalenmf.engine.base import BlockFn, BlockRef, apply_block, realign
from scalenmf.engine.memory import WORKER_MALLOC_ENV
from scalenmf.engine.reduce import TreeReducer, add_partials
from scalenmf.io.source import MatrixSource
from scalenmf.io.state_store import StateStore, scratch_location, state_nbytes

log = logging.getLogger(__name__)

#: Share of the cluster's total worker memory that resident X blocks may take.
RESIDENT_SHARE = 0.5
#: Steps between two copies of the block states to the client (the replay anchor).
ANCHOR_EVERY = 10
#: Where the anchor is kept by default ("auto": storage when the workers can reach it).
ANCHOR = "auto"
#: A step's partials are summed on the client (one gather) rather than by a tree of tasks
#: when all of them together take at most this many bytes (measured on the step before).
CLIENT_REDUCE_BYTES = 32 * 2**20
#: Recoveries in a row (worker lost again during a replay) before giving up.
MAX_RECOVERIES = 5
#: Seconds between two checks for lost block states while a step runs.
POLL_S = 0.5
#: Deadline for fetching a finished future's value before checking for lost workers.
FETCH_TIMEOUT_S = 30.0
#: Attempts at scattering data while a dead worker is still listed by the scheduler.
SCATTER_TRIES = 6
#: First deadline of a scatter (doubled at every retry).
SCATTER_TIMEOUT_S = 10.0
#: How long to wait for the client to reconnect to its scheduler before giving up.
RECONNECT_WAIT_S = 60.0
#: The event a nanny logs on the scheduler when it restarts its worker for memory.
MEMORY_KILL_TOPIC = "worker-restart-memory"
#: Hosts whose workers share this machine's file system (the default anchor goes to storage).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Where a LocalCluster's dashboard listens: loopback only, on a free port.
LOCAL_DASHBOARD = "127.0.0.1:0"


class ClusterError(ValueError):
    """The Dask cluster cannot be reached or used (address, TLS, lost workers, scheduler)."""


class _StateLost(Exception):
    """A block state held by a worker that left; the step must be replayed."""


# -- connecting -----------------------------------------------------------------------


def tls_security(
    ca_file: str | os.PathLike[str] | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None = None,
) -> Any:
    """A ``distributed.security.Security`` for a TLS cluster, or None without certificates.

    Parameters
    ----------
    ca_file : path
        The certificate authority that signed the scheduler's and workers' certificates.
    cert : path
        This client's certificate (PEM); it may also hold the private key.
    key : path, optional
        The private key of ``cert`` when it is a separate file.
    """
    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    if all(v is None for v in given.values()):
        return None
    if ca_file is None or cert is None:
        raise ClusterError(
            "TLS needs both --tls-ca-file and --tls-cert (and --tls-key if separate)"
        )
    for name, value in given.items():
        if value is not None and not os.path.isfile(value):
            raise ClusterError(f"{name}: no such file: {str(value)!r}")
    from distributed.security import Security

    return Security(
        tls_ca_file=str(ca_file),
        tls_client_cert=str(cert),
        tls_client_key=str(key) if key is not None else None,
        require_encryption=True,
    )


#: What connecting can raise. Something other than a Dask scheduler at the address sends
#: bytes that distributed decodes as a frame length (``MemoryError: Unable to allocate
#: 3.07 EiB``) or as garbage (``KeyError``, ``struct.error``...).
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    ValueError,
    TypeError,
    MemoryError,
    KeyError,
    IndexError,
    OverflowError,
)


def _connect_error(target: str, exc: BaseException, security: Any) -> ClusterError:
    if isinstance(exc, (MemoryError, KeyError, IndexError, OverflowError)):
        return ClusterError(
            f"cannot connect to the Dask scheduler at {target}: what answers there does not "
            f"speak Dask's protocol ({type(exc).__name__}); is the address right?"
        )
    hint = ""
    if security is None:
        hint = (
            "; if the scheduler requires TLS, give its address as tls://… and pass "
            "--tls-ca-file, --tls-cert and --tls-key"
        )
    elif target.startswith("tcp://"):
        hint = "; with TLS certificates the address should start with tls://"
    return ClusterError(f"cannot connect to the Dask scheduler at {target}: {_one_line(exc)}{hint}")


def connect(
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | None = None,
    *,
    scheduler_file: str | os.PathLike[str] | None = None,
    security: Any = None,
    timeout: str | float = "30s",
    dashboard_address: str | None = LOCAL_DASHBOARD,
):
    """``(client, owned_cluster, owns_client)`` for an address, scheduler file, Client or N.

    Parameters
    ----------
    scheduler : str or Client, optional
        ``tcp://host:port`` / ``tls://host:port``, a scheduler file (``*.json``), or a Client.
    workers : int, optional
        Start a LocalCluster of this many single-threaded worker processes on 127.0.0.1.
    scheduler_file : path, optional
        The JSON file ``dask scheduler --scheduler-file`` writes.
    security : distributed.security.Security, optional
        TLS credentials (see ``tls_security``).
    dashboard_address : str or None
        Where a LocalCluster's dashboard listens: loopback by default, None for none.
    """
    from distributed import Client, LocalCluster

    if scheduler is not None and hasattr(scheduler, "submit"):
        return scheduler, None, False
    if scheduler is not None and str(scheduler).endswith(".json") and scheduler_file is None:
        scheduler, scheduler_file = None, scheduler
    if scheduler is not None and scheduler_file is not None:
        raise ClusterError("give a scheduler address or a scheduler file, not both")
    kwargs: dict[str, Any] = {"timeout": timeout}
    if security is not None:
        kwargs["security"] = security
    if scheduler_file is not None:
        path = str(scheduler_file)
        if not os.path.isfile(path):
            raise ClusterError(f"scheduler file {path!r} does not exist (is the scheduler up?)")
        try:
            return Client(scheduler_file=path, **kwargs), None, True
        except CONNECT_ERRORS as exc:
            raise _connect_error(f"the address in {path!r}", exc, security) from exc
    if scheduler is not None:
        address = str(scheduler)
        try:
            return Client(address, **kwargs), None, True
        except CONNECT_ERRORS as exc:
            raise _connect_error(address, exc, security) from exc
    if security is not None:
        raise ClusterError(
            "TLS credentials are for an existing TLS scheduler (tls://host:port); the "
            "LocalCluster that --workers starts listens on 127.0.0.1 only and needs none"
        )
    cluster = LocalCluster(
        n_workers=int(workers or 1),
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        # The dashboard stays on loopback; a user who wants it remote asks for it.
        dashboard_address=dashboard_address,
        memory_limit=memory_limit if memory_limit else "auto",
        # Large freed buffers go back to the OS at once: the nanny judges RSS, not use.
        env=dict(WORKER_MALLOC_ENV),
    )
    return Client(cluster), cluster, True


# -- the executor ---------------------------------------------------------------------


def _load(ref: BlockRef) -> Any:
    # Realigned once here, so a resident block is not copied again at every step.
    return realign(ref.load())


def _anchor_state(state: Any, store: StateStore, j: int, generation: str) -> bool:
    """Write one block state to the anchor store (a task on the worker that holds it)."""
    store.write(j, state, generation)
    return True


def _anchored_state(store: StateStore, j: int, generation: str) -> Any:
    """Read one block state back from the anchor store (a task, for a replay)."""
    return realign(store.read(j, generation))


def _worker_host(address: str) -> str:
    """``tcp://127.0.0.1:4000`` → ``127.0.0.1``; ``tcp://[::1]:4000`` → ``::1``."""
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


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
    scheduler_file : path, optional
        Connect through the file a scheduler wrote (``dask scheduler --scheduler-file``).
    security : distributed.security.Security, optional
        TLS credentials for a cluster that requires them.
    anchor_every : int, optional
        Steps between two anchors (copies of the block states); the replay after a lost
        worker is at most this long.
    anchor : {"auto", "storage", "client"}, optional
        Where the anchor is kept: a scratch Zarr store the workers write (``"storage"``),
        or the client's memory (``"client"``). ``"auto"``: storage when ``scratch`` is
        given or every worker runs on this host, else the client (default ``ANCHOR``).
    scratch : path or URL, optional
        Where the anchor store goes: a directory or URL every worker can reach (a shared
        file system, an object store); default ``$SCALENMF_SCRATCH`` or the system's
        temporary directory (this host's workers only).
    connect_timeout : str or float
        How long to try reaching the scheduler.
    """

    def __init__(
        self,
        source: MatrixSource,
        *,
        scheduler: Any = None,
        workers: int | None = None,
        memory_limit: int | None = None,
        resident: bool | None = None,
        scheduler_file: Any = None,
        security: Any = None,
        anchor_every: int | None = None,
        connect_timeout: str | float = "30s",
        anchor: str | None = None,
        scratch: Any = None,
    ):
        anchor = ANCHOR if anchor is None else anchor
        anchor_every = ANCHOR_EVERY if anchor_every is None else anchor_every
        if anchor not in ("auto", "storage", "client"):
            raise ValueError(f"anchor must be 'auto', 'storage' or 'client', not {anchor!r}")
        self.source = source
        # The workers' limit when this executor starts them (None: the cluster's own).
        self._memory_limit = memory_limit if scheduler is None and workers else None
        self.client, self._cluster, self._owns_client = connect(
            scheduler,
            workers,
            memory_limit,
            scheduler_file=scheduler_file,
            security=security,
            timeout=connect_timeout,
        )
        self._token = uuid.uuid4().hex[:8]
        self._step = 0
        self._states: list[Any] = [None] * source.n_blocks
        self._resident: list[Any] | None = None
        self._want_resident = resident
        self._decided = False
        self.anchor_every = max(1, int(anchor_every))
        # The lineage the executor keeps itself: the anchor, and the steps since. With a
        # storage anchor, ``_anchor[j]`` is True where block j's state is in generation
        # ``_generation`` of ``anchor_store`` (None: the block had no state).
        self._anchor: list[Any] = [None] * source.n_blocks
        self._log: list[tuple[BlockFn, Any, bool, Any]] = []
        self.recoveries = 0
        self._started = time.time()
        # Workers seen at the last check: a departure since then may have taken states.
        self._known_workers = self._workers_now()
        self.scratch = scratch
        if anchor == "auto":
            hosts = {_worker_host(a) for a in self._known_workers}
            local = bool(hosts) and hosts <= LOCAL_HOSTS
            anchor = "storage" if scratch is not None or local else "client"
        #: The anchor's scratch store (None: the anchor is on the client).
        self.anchor_store: StateStore | None = (
            StateStore(scratch_location(scratch)) if anchor == "storage" else None
        )
        self._generation = 0
        self._stream: bool | None = None
        # One partial's bytes per block function: unknown before its first step (a tree).
        self._partial_bytes: dict[Any, int] = {}

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

    # -- submitting and waiting -------------------------------------------------------
    def _submit(
        self,
        fn: BlockFn,
        broadcast: Any,
        read_x: bool,
        states: Sequence[Any],
        blocks: Sequence[int] | None = None,
    ) -> tuple[list[Any], list[Any]]:
        """Submit one step on ``states`` (of the blocks numbered in ``blocks``; the others
        keep theirs): ``(new state futures, futures of the partials)`` (one future of
        their tree sum, or every block's partial for ``_total`` to sum)."""
        idx = list(range(self.source.n_blocks)) if blocks is None else [int(j) for j in blocks]
        client = self.client
        self._step += 1
        tag = f"{self._token}-{self._step}"
        # Scattered (pure data, no lineage): that is what lets the scheduler forget the
        # previous steps, so the graph does not grow. To one worker, from which the others
        # fetch it (a broadcast scatter would wait on a worker that died but is still
        # listed); if that worker dies, the step's tasks are cancelled and replayed.
        [bc] = self._scatter([broadcast])
        n = len(idx)
        # One ``map`` per kind of task (a message each), not one ``submit`` per task: on a
        # step of 0.1 s the per-call cost of 3n submits was a tenth of the step.
        outs = client.map(
            apply_block,
            [fn] * n,
            [self._xref(j) if read_x else None for j in idx],
            [states[j] for j in idx],
            [bc] * n,
            key=[f"scalenmf-step-{tag}-{j}" for j in idx],
            pure=False,
        )
        new_states = list(states)
        # The small tasks that split a step's output run before the next block step on the
        # same worker (``priority``): a block's partial is ready as soon as its step is,
        # instead of queueing behind the worker's other steps.
        stepped = client.map(
            operator.getitem,
            outs,
            [0] * n,
            key=[f"scalenmf-h-{tag}-{j}" for j in idx],
            priority=1,
        )
        for j, state in zip(idx, stepped, strict=True):
            new_states[j] = state
        partials = client.map(
            operator.getitem,
            outs,
            [1] * n,
            key=[f"scalenmf-p-{tag}-{j}" for j in idx],
            priority=1,
        )
        size = self._partial_bytes.get(fn, CLIENT_REDUCE_BYTES + 1)
        if n > 1 and n * size <= CLIENT_REDUCE_BYTES:
            # Small partials are summed here, in the same pairing, after one gather: a
            # tree of tasks costs a scheduler round trip and a transfer per level.
            return new_states, partials
        counter = iter(range(10**9))

        def merge(a: Any, b: Any) -> Any:
            return client.submit(
                add_partials,
                a,
                b,
                key=f"scalenmf-sum-{tag}-{next(counter)}",
                pure=False,
                priority=1,
            )

        reducer: TreeReducer[Any] = TreeReducer(merge)
        for p in partials:
            reducer.push(p)
        return new_states, [reducer.result()]

    def _total(self, fn: BlockFn, parts: list[Any], watch: Sequence[Any]) -> Any:
        """The summed partials of a step: waits for ``parts`` (one sum, or every block's
        partial), fetches them in one gather and sums them in the tree's pairing."""
        if len(parts) == 1:
            total = realign(self._result(parts[0], watch))
        else:
            for part in parts[:-1]:
                self._result(part, watch, fetch=False)
            values = self._result(parts[-1], watch, also=parts[:-1])
            reducer: TreeReducer[Any] = TreeReducer(add_partials)
            for value in values:
                reducer.push(realign(value))
            total = reducer.result()
        # One partial's size (they share the total's structure), for the next steps of ``fn``.
        self._partial_bytes[fn] = max(1, state_nbytes(total))
        return total

    def _workers_now(self) -> set[str]:
        info = self.client.sync(self.client.scheduler.identity)
        return set(info.get("workers", {}))

    def _lost(self, watch: Sequence[Any], finished_before: set[str]) -> bool:
        """True if a block state the step needs may be gone.

        That is: a worker seen at the last check has left (a replay is cheap and exact, so
        any departure triggers one), or a watched future that had finished has
        fallen back (lost, cancelled, pending again, or held by no worker).
        """
        now = self._workers_now()
        gone, self._known_workers = self._known_workers - now, now
        if gone:
            log.info("worker(s) left the cluster: %s", sorted(gone))
            return True
        futures = [f for f in watch if _is_future(f)]
        if any(f.status in ("lost", "cancelled") for f in futures):
            return True
        if any(f.key in finished_before and f.status != "finished" for f in futures):
            return True
        finished = [f for f in futures if f.status == "finished"]
        finished_before.update(f.key for f in finished)
        if not finished:
            return False
        holders = self.client.who_has(finished)
        return any(not holders.get(f.key) for f in finished)

    def _result(
        self, future: Any, watch: Sequence[Any], *, fetch: bool = True, also: Sequence[Any] = ()
    ) -> Any:
        """``future.result()``, raising ``_StateLost`` if an input it needs was lost.

        Watches ``future.status`` (kept up to date by the client's own thread; reading it
        calls nothing in distributed) between checks for lost workers, and fetches the
        value only once the future is done. ``future.result(timeout=...)`` would go through
        ``sync(callback_timeout=...)``, which on a loaded machine can raise
        ``UnboundLocalError`` from inside distributed (dask/distributed#8514); a timeout
        raised at every poll also keeps the futures alive in its traceback's frames,
        delaying their release on the scheduler; a done-callback holds the future in
        another thread for a while after it fires.

        ``fetch=False``: wait only (returns None). ``also``: futures already finished whose
        values come back with this one's, in one gather (a list, ``future``'s last).
        """
        import asyncio

        from distributed.client import ClosedClientError
        from distributed.comm import CommClosedError

        finished_before: set[str] = set()
        while True:
            if self._settled(future, POLL_S):
                status = future.status
                if status in ("cancelled", "lost"):
                    self._check_scheduler(None)
                    raise _StateLost()
                if status in ("finished", "error"):
                    if not fetch and status == "finished":
                        return None
                    try:
                        # A task's own exception is raised here, as before.
                        if also:
                            return self._fetch_all([*also, future])
                        return self._fetch(future)
                    except (TimeoutError, asyncio.TimeoutError):
                        pass  # the value is being moved or recomputed: check for losses
                    except CancelledError as exc:
                        self._check_scheduler(exc)
                        raise _StateLost() from exc
                    except (CommClosedError, ClosedClientError) as exc:
                        raise self._scheduler_gone(exc) from exc
            if self.client.status in ("closing", "closed", "failed"):
                raise self._scheduler_gone(ConnectionError(f"client {self.client.status}"))
            try:
                lost = self._lost(watch, finished_before)
            except (OSError, CommClosedError, ClosedClientError) as exc:
                raise self._scheduler_gone(exc) from exc
            if lost:
                raise _StateLost()

    def _settled(self, future: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``future`` to finish, err or be cancelled.

        Waits on the future's own event in the client's loop, so the step's result is
        picked up as soon as it is there. (Polling ``future.status`` with a backed-off
        sleep added up to 20 ms to every step, a fifth of a 0.1 s iteration.) The timeout
        is raised and caught inside the loop: nothing of it reaches this thread.
        """
        import asyncio

        if future.status != "pending":
            return True

        async def settle() -> bool:
            try:
                await asyncio.wait_for(future._state.wait(), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                return future.status != "pending"
            return True

        return bool(self.client.sync(settle))

    def _fetch(self, future: Any) -> Any:
        """The value of a finished future, within ``FETCH_TIMEOUT_S`` (asyncio's timeout)."""
        [value] = self._fetch_all([future])
        return value

    def _fetch_all(self, futures: list[Any]) -> list[Any]:
        """The values of finished futures, in one gather within ``FETCH_TIMEOUT_S``."""
        import asyncio

        client = self.client

        async def gather() -> Any:
            return await asyncio.wait_for(client._gather(futures), FETCH_TIMEOUT_S)

        return list(client.sync(gather))

    def _check_scheduler(self, exc: BaseException | None) -> None:
        """Raise ``ClusterError`` if the client lost its scheduler (waiting out a reconnect)."""
        client = self.client
        deadline = time.monotonic() + RECONNECT_WAIT_S
        while client.status == "connecting" and time.monotonic() < deadline:
            time.sleep(POLL_S / 5)
        if client.status != "running" or client.scheduler is None:
            raise self._scheduler_gone(exc or ConnectionError(f"client {client.status}"))

    def _scheduler_gone(self, exc: BaseException) -> ClusterError:
        killed = self._memory_kill() if self.client.status == "running" else None
        if killed is not None:
            return killed
        return ClusterError(
            f"lost the Dask scheduler ({type(exc).__name__}: {_one_line(exc)}); continue the "
            "fit from its last checkpoint with --resume (resume=True) once a scheduler is up"
        )

    def _scatter(self, data: list[Any], broadcast: bool = False) -> list[Any]:
        """``client.scatter`` with a deadline, retried while a dead worker is still listed.

        A scatter to a worker that was just killed can wait on it for a long time; the
        scheduler removes such a worker within seconds, so a fresh attempt then succeeds.
        """
        import asyncio

        from distributed import Future
        from distributed.client import ClosedClientError
        from distributed.comm import CommClosedError

        client = self.client
        timeout = SCATTER_TIMEOUT_S
        for attempt in range(SCATTER_TRIES):
            if client.status in ("closing", "closed", "failed") or client.scheduler is None:
                raise self._scheduler_gone(ConnectionError(f"client {client.status}"))
            # Named keys, so that an attempt given up on can be cancelled, not leaked.
            self._step += 1
            keys = [f"scalenmf-data-{self._token}-{self._step}-{i}" for i in range(len(data))]

            async def scatter(limit: float = timeout, keys: list[str] = keys) -> Any:
                return await asyncio.wait_for(
                    client._scatter(dict(zip(keys, data, strict=True)), broadcast=broadcast),
                    limit,
                )

            try:
                futures = client.sync(scatter)
                return [futures[key] for key in keys]
            except ClosedClientError as exc:
                raise self._scheduler_gone(exc) from exc
            except (CommClosedError, OSError, TimeoutError, asyncio.TimeoutError, KeyError) as exc:
                client.cancel([Future(key, client) for key in keys])
                if attempt == SCATTER_TRIES - 1:
                    raise self._scheduler_gone(exc) from exc
                log.info("scatter failed (%s: %s); retrying", type(exc).__name__, exc)
                time.sleep(POLL_S)
                timeout *= 2
        raise AssertionError("unreachable")

    def _anchored(self) -> list[Any]:
        """The anchor's states as futures on the cluster (read from storage by tasks)."""
        if self.anchor_store is None:
            return self._scatter_states(self._anchor)
        stored = [j for j, held in enumerate(self._anchor) if held]
        out: list[Any] = [None] * self.source.n_blocks
        if stored:
            gen = self._generation_name()
            self._step += 1
            futures = self.client.map(
                _anchored_state,
                [self.anchor_store] * len(stored),
                stored,
                [gen] * len(stored),
                key=[f"scalenmf-anchor-{self._token}-{self._step}-{j}" for j in stored],
                pure=False,
            )
            for j, f in zip(stored, futures, strict=True):
                out[j] = f
        return out

    def _generation_name(self, generation: int | None = None) -> str:
        return f"a{self._generation if generation is None else generation}"

    def _write_anchor(self) -> None:
        """The workers write the states they hold to a new generation of the anchor store;
        the old generation is dropped once the new one is complete."""
        store = self.anchor_store
        assert store is not None
        while True:
            gen = self._generation + 1
            name = self._generation_name(gen)
            store.prepare(name)
            held = [(j, s) for j, s in enumerate(self._states) if s is not None]
            futures = [s for _, s in held if _is_future(s)]
            index = [j for j, s in held if _is_future(s)]
            # States already on the client (restored from a checkpoint) are written here.
            for j, s in held:
                if not _is_future(s):
                    store.write(j, s, name)
            self._step += 1
            written = self.client.map(
                _anchor_state,
                futures,
                [store] * len(futures),
                index,
                [name] * len(futures),
                key=[f"scalenmf-anchoring-{self._token}-{self._step}-{j}" for j in index],
                pure=False,
            )
            try:
                for w in written:
                    self._result(w, self._states)
                break
            except _StateLost:
                # The last logged step is replayed; its partials were already used.
                store.drop(name)
                self._states, _ = self._replay()
            finally:
                del written
        old = self._generation
        self._generation = gen
        self._anchor = [True if s is not None else None for s in self._states]
        self._log.clear()
        if old:
            store.drop(self._generation_name(old))

    def _scatter_states(self, states: Sequence[Any]) -> list[Any]:
        present = [(j, s) for j, s in enumerate(states) if s is not None]
        out: list[Any] = [None] * len(states)
        if present:
            futures = self._scatter([s for _, s in present])
            for (j, _), f in zip(present, futures, strict=True):
                out[j] = f
        return out

    def _memory_kill(self) -> ClusterError | None:
        """The error to raise if a nanny restarted a worker for memory since we started.

        Replaying would only fill the new worker the same way, so the fit stops at once.
        """
        import asyncio

        client = self.client

        async def fetch() -> Any:
            # Bounded: this runs on the way to an error, maybe with the scheduler gone.
            return await asyncio.wait_for(client.scheduler.events(topic=MEMORY_KILL_TOPIC), 5)

        try:
            found = client.sync(fetch)
        except Exception:  # an older scheduler, or one already gone: nothing to add
            return None
        kills = [msg for stamp, msg in (found or ()) if stamp >= self._started - 1]
        if not kills:
            return None
        last = kills[-1] if isinstance(kills[-1], dict) else {}
        limit = self._memory_limit or self._worker_limit(last.get("worker"))
        used = last.get("rss")
        size = f"; it reached {_mb(used)}" if used else ""
        of = f"its {_mb(limit)} memory limit" if limit else "its memory limit"
        return ClusterError(
            f"a Dask worker ({last.get('worker', '?')}) was restarted for exceeding 95% "
            f"of {of}{size} ({len(kills)} restart(s)): the blocks do not fit in the "
            "workers' memory; give each worker more (memory_limit) or use narrower blocks "
            "(block_cols)"
        )

    def _worker_limit(self, address: Any) -> int | None:
        try:
            workers = self.client.scheduler_info().get("workers", {})
        except Exception:
            return None
        limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
        if address in workers:
            limits = [int(workers[address].get("memory_limit") or 0)]
        return max(limits, default=0) or None

    def _replay(self) -> tuple[list[Any], Any]:
        """Recompute the logged steps from the anchor: ``(states, summed partials of the last)``."""
        for attempt in range(1, MAX_RECOVERIES + 1):
            killed = self._memory_kill()
            if killed is not None:
                raise killed
            self.recoveries += 1
            log.warning(
                "a worker was lost with block states; recomputing %d step(s) from the last "
                "anchor (attempt %d of %d)",
                len(self._log),
                attempt,
                MAX_RECOVERIES,
            )
            self._check_scheduler(None)
            try:
                self.client.wait_for_workers(1, timeout=120)
                self._known_workers = self._workers_now()
            except (OSError, TimeoutError, AttributeError) as exc:
                raise self._scheduler_gone(exc) from exc
            states = self._anchored()
            watch = list(states)
            parts: list[Any] = []
            last = None
            for fn, broadcast, read_x, blocks in self._log:
                states, parts = self._submit(fn, broadcast, read_x, states, blocks)
                watch.extend(states)
                last = fn
            assert last is not None  # the step being recovered is logged
            try:
                return states, self._total(last, parts, watch)
            except _StateLost:
                continue
        raise ClusterError(
            f"workers kept dying: {MAX_RECOVERIES} recoveries in a row failed; check the "
            "workers' logs (memory limits?) and continue with --resume"
        )

    # -- the step ---------------------------------------------------------------------
    def map_reduce(
        self, fn: BlockFn, broadcast: Any, *, read_x: bool = True, blocks: Any = None
    ) -> Any:
        if read_x:
            self._decide_resident()
        self._log.append((fn, broadcast, read_x, blocks))
        inputs = self._states
        new_states, parts = self._submit(fn, broadcast, read_x, inputs, blocks)
        try:
            result = self._total(fn, parts, inputs)
        except _StateLost:
            new_states, result = self._replay()
        # New states replace the old; dropping the references frees the old tasks.
        self._states = new_states
        del inputs, parts
        if len(self._log) >= self.anchor_every:
            if self.anchor_store is not None:
                self._write_anchor()
            else:
                self._gather_states()
        # Received arrays were realigned (see ``realign``) before any math, in ``_total``.
        return result

    def _gather_states(self) -> list[Any]:
        """Bring the states to the client (with a client anchor, they become the anchor)."""
        while True:
            try:
                values = [
                    self._result(s, self._states) if _is_future(s) else s for s in self._states
                ]
                break
            except _StateLost:
                # The last logged step is replayed; its partials were already used.
                self._states, _ = self._replay()
        values = [realign(v) for v in values]
        if self.anchor_store is None:
            self._anchor = values
            self._log.clear()
        return values

    @property
    def stream_states(self) -> bool:
        """Whether the states are brought to the client one at a time (and a result's H
        written to storage block by block): when all of them would take more than
        ``STATE_SHARE`` of the workers' memory limit (known when this executor started
        the cluster)."""
        if self._stream is None:
            self._stream = False
            held = [s for s in self._states if _is_future(s)]
            if self._memory_limit and held:
                sizes = self.client.gather(self.client.map(state_nbytes, held, pure=False))
                self._stream = sum(sizes) > local.STATE_SHARE * self._memory_limit
        return self._stream

    def states(self) -> Iterator[Any]:
        if not self.stream_states:
            yield from self._gather_states()
            return
        for j in range(self.source.n_blocks):
            while True:
                state = self._states[j]
                try:
                    value = self._result(state, self._states) if _is_future(state) else state
                    break
                except _StateLost:
                    self._states, _ = self._replay()
            yield realign(value)

    def set_states(self, states: Iterable[Any]) -> None:
        states = list(states)  # scattered together: the workers take them from the client
        if len(states) != self.source.n_blocks:
            raise ValueError(f"expected {self.source.n_blocks} block states, got {len(states)}")
        self._log.clear()
        if self.anchor_store is not None:
            self._states = list(states)
            self._write_anchor()
        else:
            self._anchor = list(states)
        self._states = self._scatter_states(states)

    def close(self) -> None:
        # The anchor store first: whatever fails below (a scheduler gone), it is this
        # process's to remove.
        if self.anchor_store is not None:
            self.anchor_store.remove()
        held = [f for f in [*self._states, *(self._resident or [])] if _is_future(f)]
        if held and self.client.status == "running":
            # Forget them now rather than when the garbage collector gets to the futures:
            # a shared client must not keep a finished fit's blocks on the cluster.
            self.client.cancel(held)
        del held
        self._states = [None] * self.source.n_blocks
        self._anchor = [None] * self.source.n_blocks
        self._log.clear()
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
            "recoveries": self.recoveries,
            "anchor": "client" if self.anchor_store is None else "storage",
        }


def _mb(nbytes: Any) -> str:
    return f"{int(nbytes) / 10**6:.0f} MB"


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (distributed's span several)."""
    return " ".join(str(exc).split())


def _is_future(obj: Any) -> bool:
    return hasattr(obj, "key") and hasattr(obj, "status") and hasattr(obj, "result")
