"""Block states out of memory: the local executor's scratch store and the Dask anchor.

Past ``STATE_SHARE`` of the memory limit the local executor keeps every block's state in a
scratch Zarr store, read and written with its X block; the kept H is then written to
storage block by block. The numbers are those of states held in memory, bit for bit. On
Dask, the replay anchor is written by the workers to storage instead of copied to the
client, and a fit that loses a worker still ends exactly as an undisturbed one.
"""

from __future__ import annotations

import gc
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main
from scalenmf.engine import dask_exec, local
from scalenmf.engine.local import LocalExecutor
from scalenmf.io.matrix import as_source
from scalenmf.io.state_store import SCRATCH_PREFIX
from scalenmf.models.step import initial_states
from tests.conftest import make_counts
from tests.procs import ProcCluster


def counts(n: int = 600, sparse: bool = False):
    X = make_counts(20, n, k=3, seed=3, zeros=0.4)
    return sp.csc_matrix(X) if sparse else X


def fit(X, **kw):
    kw = {"max_iter": 6, "tol": 0.0, "block_cols": 100, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return scalenmf.nmf(X, 3, **kw)


def same(a, b) -> None:
    assert a.loss_history == b.loss_history
    assert np.array_equal(a.W, b.W)
    assert np.array_equal(np.asarray(a.H[...]), np.asarray(b.H[...]))


def stores_in(where: Path) -> list[Path]:
    return [p for p in where.iterdir() if p.name.startswith(SCRATCH_PREFIX)]


# -- the local executor ---------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True], ids=["in-line", "threads"])
@pytest.mark.parametrize("loss", ["frobenius", "kl"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_states_in_a_scratch_store_give_the_numbers_of_states_in_memory(
    monkeypatch, scratch: Path, sparse: bool, loss: str, parallel: bool
) -> None:
    if parallel:
        monkeypatch.setattr(local, "PARALLEL_MIN_VALUES", 0)
    X = counts(sparse=sparse)
    held = fit(X, loss=loss, threads=2)
    assert held.info["states_in_store"] is False and isinstance(held.H, np.ndarray)
    seen: list[int] = []
    monkeypatch.setattr(local, "STATE_SHARE", 0.0)  # any state is too much: all go out
    out = fit(
        X,
        loss=loss,
        threads=2,
        memory_limit="4GB",
        callback=lambda _: seen.append(len(stores_in(scratch))),
    )
    assert out.info["states_in_store"] is True and out.info["parallel_blocks"] is parallel
    assert seen and all(c >= 1 for c in seen), "no scratch store during the iterations"
    same(held, out)
    # The kept H was written block by block to storage and is read from there.
    assert not isinstance(out.H, np.ndarray) and out.H.shape == held.H.shape
    del out
    gc.collect()
    assert stores_in(scratch) == [], "a scratch store outlived its fit and its result"


def test_the_executor_moves_its_states_out_once_they_would_pass_their_share(
    monkeypatch, scratch: Path
) -> None:
    """Without a plan, the executor projects the states stored so far to all n columns."""
    source = as_source(counts(n=1000), block_cols=100)
    ex = LocalExecutor(source, threads=1, memory_limit=10**9)
    try:
        ex.set_states(initial_states([0] * source.n_blocks))
        assert ex.spill is None  # empty states: nothing to move
        big = {"H": np.ones((4, 100))}  # 3.2 kB a block: 32 kB for all ten
        monkeypatch.setattr(local, "STATE_SHARE", 40e3 / 1e9)
        ex.set_states([big] * source.n_blocks)
        assert ex.spill is None
        monkeypatch.setattr(local, "STATE_SHARE", 20e3 / 1e9)
        ex.set_states([big] * source.n_blocks)
        assert ex.spill is not None and len(stores_in(scratch)) == 1
        assert all(np.array_equal(s["H"], big["H"]) for s in ex.states())
        assert ex.describe()["states_in_store"] is True
    finally:
        ex.close()
    assert stores_in(scratch) == []


def test_memory_of_the_iterations_does_not_hold_the_states(monkeypatch, scratch: Path) -> None:
    """tracemalloc during the loop: with the states in storage, what is held between
    iterations is far below one copy of H (k × n float64), which it is not without."""
    X = make_counts(4, 60000, k=3, seed=1, zeros=0.3)
    h_bytes = 3 * X.shape[1] * 8

    def held_during_loop(**kw) -> int:
        marks: list[int] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
            tracemalloc.start()
            try:
                start = tracemalloc.get_traced_memory()[0]
                res = scalenmf.nmf(
                    X,
                    3,
                    init="random",
                    max_iter=4,
                    tol=0,
                    block_cols=5000,
                    threads=1,
                    callback=lambda _: marks.append(tracemalloc.get_traced_memory()[0] - start),
                    **kw,
                )
            finally:
                tracemalloc.stop()
        del res
        return max(marks[1:])

    in_memory = held_during_loop()
    monkeypatch.setattr(local, "STATE_SHARE", 0.0)
    in_store = held_during_loop(memory_limit="4GB")
    assert in_memory >= h_bytes, (in_memory, h_bytes)
    assert in_store < h_bytes / 3, (in_store, h_bytes)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_project_with_states_in_storage_equals_project_in_memory(
    monkeypatch, scratch: Path, sparse: bool
) -> None:
    X = counts(sparse=sparse)
    basis = fit(X)
    a = scalenmf.project(basis, X, block_cols=100, bootstrap=4)
    monkeypatch.setattr(local, "STATE_SHARE", 0.0)
    b = scalenmf.project(basis, X, block_cols=100, bootstrap=4, memory_limit="4GB")
    assert b.info["states_in_store"] is True and not isinstance(b.H, np.ndarray)
    for name in ("H", "H_lower", "H_upper"):
        assert np.array_equal(getattr(a, name), np.asarray(getattr(b, name)[...])), name
    assert np.array_equal(a.cosine, b.cosine) and np.array_equal(a.novel, b.novel)
    path = b.save(scratch.parent / "p.zarr")
    back = scalenmf.results.linked.load_projection(path)
    assert np.array_equal(back.H, a.H) and np.array_equal(back.H_upper, a.H_upper)


def test_cli_fit_with_states_in_storage_writes_the_same_result(
    monkeypatch, scratch: Path, tmp_path: Path
) -> None:
    store = scalenmf.write_matrix(tmp_path / "x.zarr", counts(), block_cols=100)

    def cli_fit(out: Path, *extra: str) -> scalenmf.NMFResult:
        args = ["fit", store, "-k", "3", "-o", str(out), "--max-iter", "5", "--tol", "0"]
        r = CliRunner().invoke(main, [*args, "--no-progress", *extra], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return scalenmf.load(out)

    held = cli_fit(tmp_path / "a.zarr")
    monkeypatch.setattr(local, "STATE_SHARE", 0.0)
    out = cli_fit(tmp_path / "b.zarr", "--memory-limit", "4GB")
    assert out.info["states_in_store"] is True
    same(held, out)
    gc.collect()
    assert stores_in(scratch) == []


def test_stored_states_are_read_one_at_a_time(monkeypatch, scratch) -> None:
    """``states()`` yields one state at a time from the store (no list of them all)."""
    source = as_source(counts(n=300), block_cols=100)
    ex = LocalExecutor(source, spill_states=True)
    try:
        ex.set_states(initial_states([0] * source.n_blocks))
        reads: list[int] = []
        original = ex.spill.read

        def counting(j, name="s"):
            reads.append(j)
            return original(j, name)

        monkeypatch.setattr(ex.spill, "read", counting)
        it = ex.states()
        next(it)
        assert reads == [0]
        next(it)
        assert reads == [0, 1]
    finally:
        ex.close()


# -- the Dask anchor ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = ProcCluster(tmp_path_factory.mktemp("procs"))
    try:
        yield c.start(2)
    finally:
        c.stop()


@pytest.mark.cluster
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_dask_anchor_in_storage_survives_a_lost_worker_bit_for_bit(
    cluster: ProcCluster, tmp_path: Path, scratch: Path, monkeypatch, sparse: bool
) -> None:
    import os
    import signal
    import threading

    store = scalenmf.write_matrix(tmp_path / "x.zarr", counts(n=400, sparse=sparse), block_cols=50)
    monkeypatch.setattr(dask_exec, "ANCHOR_EVERY", 3)
    kw = {"max_iter": 14, "block_cols": 100}
    cluster.add_worker()
    cluster.wait_workers(2)
    with cluster.client() as client:
        monkeypatch.setattr(dask_exec, "ANCHOR", "client")
        on_client = fit(store, scheduler=client, **kw)
        assert on_client.info["anchor"] == "client"
        monkeypatch.setattr(dask_exec, "ANCHOR", "auto")  # workers on 127.0.0.1: storage
        generations: list[list[str]] = []
        killed: list[int] = []

        def kill_after_an_anchor(info) -> None:
            [where] = stores_in(scratch)
            generations.append(sorted(p.name for p in where.iterdir() if p.name.startswith("a")))
            if info.iteration == 9:
                held = client.has_what()
                address = max(held, key=lambda a: len(held[a]))
                pid = int(client.run(os.getpid, workers=[address])[address])
                threading.Timer(0.003, os.kill, (pid, signal.SIGKILL)).start()
                killed.append(pid)

        res = fit(store, scheduler=client, callback=kill_after_an_anchor, **kw)
    assert killed and res.info["recoveries"] >= 1
    assert res.info["anchor"] == "storage"
    # One generation at a time between steps, and it moved on.
    assert all(len(g) == 1 for g in generations) and generations[0] != generations[-1]
    same(res, on_client)
    same(res, fit(store, **kw))  # and laptop mode
    assert stores_in(scratch) == [], "the anchor store outlived the fit"


@pytest.mark.cluster
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_a_local_cluster_streams_large_states_to_a_stored_result(
    monkeypatch, scratch: Path, tmp_path: Path, sparse: bool
) -> None:
    """With states past their share of the workers' limit, the client takes them one at
    a time and writes the result's H block by block: same numbers as laptop mode."""
    store = scalenmf.write_matrix(tmp_path / "x.zarr", counts(sparse=sparse), block_cols=100)
    laptop = fit(store)
    monkeypatch.setattr(local, "STATE_SHARE", 0.0)
    res = fit(store, workers=2, memory_limit="1GB")
    assert res.info["executor"] == "dask" and res.info["anchor"] == "storage"
    assert not isinstance(res.H, np.ndarray)
    same(res, laptop)
    back = scalenmf.load(res.save(tmp_path / "r.zarr"))
    assert np.array_equal(back.H, laptop.H)
