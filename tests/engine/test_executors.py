"""Laptop executor vs a Dask LocalCluster, Zarr-store input and the memory-budget path.

The executors merge block partials in the same fixed pairing, so for the same seed and
blocking they must give the same numbers — bit for bit, not merely close ones.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.engine import dask_exec
from scalenmf.io.source import MatrixSource
from scalenmf.models import memory
from tests.conftest import make_counts

#: Half start from NNDSVDA (three passes over X on the executor), half at random (one).
SOLVERS = {
    "als": {"solver": "als"},
    "hals": {"solver": "hals", "init": "random"},
    "mu-frobenius": {"solver": "mu", "init": "random"},
    "mu-kl": {"solver": "mu", "loss": "kl"},
}
#: name -> (n columns, block_cols, number of blocks)
LAYOUTS = {
    "single-block": (300, 300, 1),
    "regular": (300, 100, 3),
    "irregular": (300, [50, 100, 7, 143], 4),
    "one-column": (6, 1, 6),
}


def data(n: int, sparse: bool):
    X = make_counts(25, n, k=3, seed=n, zeros=0.5)
    return sp.csc_matrix(X) if sparse else X


def fit(X, **kwargs):
    kwargs.setdefault("max_iter", 3)
    kwargs.setdefault("tol", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return scalenmf.nmf(X, 3, **kwargs)


def assert_identical(a, b):
    assert a.loss_history == b.loss_history
    assert a.relative_error == b.relative_error
    assert np.array_equal(a.W, b.W), f"W differs by {np.abs(a.W - b.W).max():.3g}"
    assert np.array_equal(a.H, b.H), f"H differs by {np.abs(a.H - b.H).max():.3g}"
    assert a.n_iter == b.n_iter and a.converged == b.converged


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
    c = Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def count_reads(monkeypatch, cls) -> list[int]:
    """Count block reads of a source class (patched on the class: clones share it)."""
    calls = [0]
    original = cls._read

    def counting(self, start, stop):
        calls[0] += 1
        return original(self, start, stop)

    monkeypatch.setattr(cls, "_read", counting)
    return calls


# -- laptop == Dask -------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("method", list(SOLVERS))
def test_laptop_equals_dask(client, method, sparse, layout):
    n, blocks, n_blocks = LAYOUTS[layout]
    X = data(n, sparse)
    kwargs = {**SOLVERS[method], "block_cols": blocks, "seed": 4}
    local = fit(X, **kwargs)
    remote = fit(X, scheduler=client, **kwargs)
    assert local.info["executor"] == "local" and remote.info["executor"] == "dask"
    assert local.info["n_blocks"] == remote.info["n_blocks"] == n_blocks
    assert_identical(local, remote)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_laptop_equals_dask_with_restarts_and_penalties(client):
    X = data(300, False)
    kwargs = {"solver": "hals", "block_cols": 64, "n_runs": 3, "l1_h": 0.2, "l2_w": 0.5}
    assert_identical(fit(X, **kwargs), fit(X, scheduler=client, **kwargs))


# -- Zarr-store input -----------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("method", ["als", "mu-kl"])
def test_zarr_store_equals_in_memory(tmp_path, method, sparse):
    X = data(300, sparse)
    path = scalenmf.write_matrix(tmp_path / "x.zarr", X, block_cols=64)
    stored = scalenmf.open_matrix(path)
    assert stored.is_sparse == sparse
    bounds = stored.block_bounds
    in_memory = fit(X, block_cols=bounds, **SOLVERS[method])
    from_store = fit(path, block_cols=bounds, **SOLVERS[method])
    assert_identical(in_memory, from_store)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_memory_budget_rereads_blocks_with_the_same_result(tmp_path, monkeypatch, sparse):
    X = data(300, sparse)
    path = scalenmf.write_matrix(tmp_path / "x.zarr", X, block_cols=50)
    cls = type(scalenmf.open_matrix(path))
    assert issubclass(cls, MatrixSource) and not scalenmf.open_matrix(path).in_memory
    n_blocks, max_iter = 6, 5
    reads = count_reads(monkeypatch, cls)
    cached = fit(path, solver="hals", max_iter=max_iter, threads=2, block_cols=50)
    cached_reads = reads[0]
    reads[0] = 0
    # X (25 × 300 float64 = 60 kB) is not to be held: the memory plan says so (how it
    # decides is tested in test_memory_limit.py), and every step re-reads its block.
    monkeypatch.setattr(memory, "_keep_x", lambda *args: False)
    streamed = fit(
        path, solver="hals", max_iter=max_iter, threads=2, block_cols=50, memory_limit="4GB"
    )
    assert cached.info["cached"] is True and streamed.info["cached"] is False
    assert cached_reads == n_blocks  # read once, then held in memory
    assert reads[0] >= n_blocks * max_iter  # every iteration reads every block again
    assert_identical(cached, streamed)


@pytest.mark.cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_dask_reads_the_store_on_workers(client, tmp_path, monkeypatch, sparse):
    X = data(300, sparse)
    path = scalenmf.write_matrix(tmp_path / "x.zarr", X, block_cols=64)
    local = fit(path, solver="mu", loss="kl")
    resident = fit(path, solver="mu", loss="kl", scheduler=client)
    # No room on the cluster: X blocks are re-read from the store at every step.
    monkeypatch.setattr(dask_exec, "RESIDENT_SHARE", 0.0)
    streamed = fit(path, solver="mu", loss="kl", scheduler=client)
    assert resident.info["resident"] is True and streamed.info["resident"] is False
    assert_identical(local, resident)
    assert_identical(local, streamed)


# -- the task graph does not grow -----------------------------------------------------------


def scheduler_tasks(client) -> int:
    """Tasks the scheduler holds, once releases in flight have landed (stable 3 reads)."""
    last, stable = -1, 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        n = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        stable = stable + 1 if n == last else 0
        if stable >= 2:
            return n
        last = n
        time.sleep(0.03)
    return last


def client_held(client) -> dict[str, int]:
    """Keys this client holds futures for, by kind (``x``, ``h``, ``sum``, ``step``, …).

    Counted on the client, where a future the executor drops is released at once; the
    scheduler hears of it later, by message, so its own count races the releases in flight
    (and lags under load)."""
    kinds: dict[str, int] = {}
    for key in list(client.refcount):
        kind = str(key).split("-")[1] if str(key).startswith("scalenmf-") else "other"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def scheduler_tasks_settle(client, expected: int, timeout: float = 60.0) -> int:
    """The scheduler's task count once it reached ``expected`` (or the last seen count
    after ``timeout``): waits for releases in flight rather than sampling them."""
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        if n == expected:
            return n
        time.sleep(0.05)
    return n


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_task_graph_does_not_grow(client):
    X = data(300, False)
    n_blocks = 6
    counts: list[dict[str, int]] = []
    fit(
        X,
        solver="als",
        block_cols=300 // n_blocks,
        max_iter=8,
        scheduler=client,
        callback=lambda info: counts.append(client_held(client)),
    )
    assert len(counts) == 8
    # Held between iterations: the resident X blocks; the H blocks of this step and at most
    # those of the step before (the replay anchor, dropped as the next step lands: how
    # many are left at a given moment is timing); at most the step's sum; nothing else.
    # An old step's H block left behind would stay counted and pass 2 × n_blocks. Dropped
    # at once but still counted a moment (a release reaches the client's count through its
    # event loop): the step's sum, or its blocks' partials when the client sums them; after
    # an anchor, the tasks that wrote it to storage (one per block).
    for held in counts:
        assert held.get("x") == n_blocks, counts
        assert n_blocks <= held.get("h", 0) <= 2 * n_blocks, counts
        assert held.get("sum", 0) <= 1, counts
        assert held.get("p", 0) <= n_blocks, counts
        assert held.get("anchoring", 0) <= n_blocks, counts
        assert set(held) <= {"x", "h", "sum", "p", "anchoring"}, counts
    # and the fit released what it held (cancelled at close: the scheduler forgets it,
    # whenever the garbage collector drops the client's Future objects)
    assert scheduler_tasks_settle(client, 0) == 0


def test_realign_copies_only_unaligned_arrays():
    from scalenmf.engine.executor import realign

    buf = np.zeros(8 * 12 + 1, dtype=np.uint8)
    unaligned = np.ndarray((3, 4), dtype=np.float64, buffer=buf[1:].data)
    unaligned[:] = np.arange(12.0).reshape(3, 4)
    assert not unaligned.flags.aligned
    aligned = np.arange(4.0)
    out = realign({"a": [unaligned, aligned], "b": (aligned, 1)})
    assert out["a"][0].flags.aligned and np.array_equal(out["a"][0], unaligned)
    assert out["a"][1] is aligned
    same = {"b": (aligned, 1)}
    assert realign(same) is same
