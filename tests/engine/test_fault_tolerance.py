"""Real processes on 127.0.0.1: lost workers, killed clients and schedulers, resume.

Every scenario ends with exactly the factors of an undisturbed run (bit for bit): the block
steps are pure and the reduction order fixed, so recomputing lost work repeats it.
The iteration at which something is killed is drawn at random (seeded; set
SCALENMF_TEST_SEED to explore other draws).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from tests.procs import BIN, ENV, ProcCluster

SEED = int(os.environ.get("SCALENMF_TEST_SEED", "7"))
pytestmark = pytest.mark.cluster


def counts(m: int = 40, n: int = 400, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(1.0, 1.0, (m, 3)) @ rng.gamma(1.0, 1.0, (3, n)) * 3).astype(float)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    c = ProcCluster(tmp_path_factory.mktemp("procs"))
    try:
        yield c.start(2)
    finally:
        c.stop()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    X = counts()
    out = {"dense": root / "dense.zarr", "sparse": root / "sparse.zarr"}
    scalenmf.write_matrix(out["dense"], X, block_cols=50)
    scalenmf.write_matrix(out["sparse"], sp.csc_matrix(X), block_cols=50)
    return out


FIT = {"k": 3, "max_iter": 16, "tol": 0.0, "block_cols": 100}


def busiest_worker_pid(client) -> int:
    """The pid of the worker holding the most keys (so killing it loses block states)."""
    held = client.has_what()
    address = max(held, key=lambda a: len(held[a]))
    return int(client.run(os.getpid, workers=[address])[address])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_worker_killed_mid_iteration_fit_equals_reference(
    cluster: ProcCluster, stores: dict[str, Path], kind: str
) -> None:
    cluster.add_worker()
    cluster.wait_workers(2)
    kill_at = random.Random(f"{SEED}-{kind}").randint(2, FIT["max_iter"] - 3)
    with cluster.client() as client:
        reference = scalenmf.nmf(stores[kind], scheduler=client, **FIT)
        killed: list[int] = []

        def kill_soon(info) -> None:
            if info.iteration == kill_at:
                pid = busiest_worker_pid(client)
                # A moment later: while the next iteration's tasks run.
                threading.Timer(0.003, os.kill, (pid, signal.SIGKILL)).start()
                killed.append(pid)

        res = scalenmf.nmf(stores[kind], scheduler=client, callback=kill_soon, **FIT)
    assert killed, "the worker was never killed"
    assert res.info["recoveries"] >= 1, f"killing at iteration {kill_at} cost nothing?"
    assert res.n_iter == FIT["max_iter"]
    np.testing.assert_array_equal(res.W, reference.W)
    np.testing.assert_array_equal(res.H, reference.H)
    assert res.loss_history == reference.loss_history
    laptop = scalenmf.nmf(stores[kind], **FIT)
    np.testing.assert_array_equal(res.W, laptop.W)


def fit_cmd(store: Path, out: Path, scheduler: list[str], *extra: str) -> list[str]:
    return [
        str(BIN / "scalenmf"),
        "fit",
        str(store),
        "-k",
        "3",
        "-o",
        str(out),
        *scheduler,
        "--block-cols",
        "100",
        "--tol",
        "0",
        "--no-progress",
        *extra,
    ]


@pytest.mark.timeout(120)
def test_fit_through_scheduler_file(
    cluster: ProcCluster, stores: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "o.zarr"
    cmd = fit_cmd(stores["dense"], out, ["--scheduler-file", str(cluster.scheduler_file)])
    proc = subprocess.run([*cmd, "--max-iter", "20"], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    res = scalenmf.load(out)
    assert res.info["executor"] == "dask" and res.n_iter == 20
    assert res.manifest["input"]["checksum"].startswith("blake2b:")


def wait_for_checkpoint(location: Path, proc: subprocess.Popen, at_least: int) -> int:
    """Poll until the checkpoint at ``location`` is past ``at_least``; its iteration."""
    deadline = time.time() + 60
    while time.time() < deadline:
        latest = location / "LATEST"
        if latest.exists():
            iteration = int(latest.read_text().strip().split("-")[1])
            if iteration >= at_least:
                return iteration
        assert proc.poll() is None, "the fit ended before it could be killed"
        time.sleep(0.01)
    raise TimeoutError("no checkpoint appeared")


MAX_ITER = 30


@pytest.mark.timeout(200)
def test_client_killed_then_resume_equals_reference(
    cluster: ProcCluster, stores: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "o.zarr"
    ckpt = tmp_path / "o.zarr.checkpoint"
    sched = ["--scheduler", cluster.address]
    cmd = fit_cmd(
        stores["dense"], out, sched, "--max-iter", str(MAX_ITER), "--checkpoint-every", "3"
    )
    stop_after = 3 * random.Random(SEED).randint(1, 6)
    # Output to files: a pipe nobody reads could fill up and stall the fit.
    log = open(tmp_path / "client.log", "w")
    # A killed client cannot remove its anchor store: it goes under tmp_path, not /tmp.
    env = {**ENV, "SCALENMF_SCRATCH": str(tmp_path)}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        at = wait_for_checkpoint(ckpt, proc, stop_after)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not out.exists() and at < MAX_ITER
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=150)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after" in resumed.stdout
    res = scalenmf.load(out)
    assert res.manifest["resumed_from_iteration"] >= at
    assert not ckpt.exists(), "the checkpoint outlived the published result"
    # Laptop mode: the executors are bit-identical, and it is the quicker reference.
    reference = scalenmf.nmf(stores["dense"], 3, max_iter=MAX_ITER, tol=0, block_cols=100)
    np.testing.assert_array_equal(res.W, reference.W)
    np.testing.assert_array_equal(res.H, reference.H)
    assert res.loss_history == reference.loss_history


@pytest.mark.timeout(240)
def test_scheduler_killed_then_resume_on_a_new_cluster(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "o.zarr"
    ckpt = tmp_path / "o.zarr.checkpoint"
    first = ProcCluster(tmp_path / "first").start(2)
    try:
        sched = ["--scheduler", first.address]
        extra = ["--max-iter", str(MAX_ITER), "--checkpoint-every", "3", "--connect-timeout", "3s"]
        cmd = fit_cmd(stores["sparse"], out, sched, *extra)
        err_file = tmp_path / "client.err"
        scratch = tmp_path / "scratch"  # where the client's anchor store goes
        scratch.mkdir()
        env = {**ENV, "SCALENMF_SCRATCH": str(scratch)}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(err_file, "w"), env=env)
        wait_for_checkpoint(ckpt, proc, 3 * random.Random(SEED + 1).randint(1, 4))
        first.kill_scheduler()
        proc.wait(timeout=120)
    finally:
        first.stop()
    err = err_file.read_text()
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: lost the Dask scheduler") and "--resume" in last, err
    assert "Traceback" not in err
    assert not out.exists() and ckpt.exists()
    assert list(scratch.iterdir()) == [], "the failed fit left its anchor store behind"
    second = ProcCluster(tmp_path / "second").start(2)
    try:
        cmd = fit_cmd(stores["sparse"], out, ["--scheduler", second.address], *extra)
        resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=150)
    finally:
        second.stop()
    assert resumed.returncode == 0, resumed.stderr
    reference = scalenmf.nmf(stores["sparse"], 3, max_iter=MAX_ITER, tol=0, block_cols=100)
    res = scalenmf.load(out)
    assert res.manifest["resumed_from_iteration"] >= 3
    np.testing.assert_array_equal(res.W, reference.W)
    np.testing.assert_array_equal(res.H, reference.H)
