"""Cluster operations: TLS, bounded graph and client memory, loopback-only dashboard."""

from __future__ import annotations

import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import scalenmf
from tests.procs import BIN, ProcCluster, make_tls_files

pytestmark = pytest.mark.cluster


def small_store(tmp_path: Path, m: int = 30, n: int = 200) -> Path:
    rng = np.random.default_rng(2)
    X = rng.poisson(rng.gamma(1.0, 1.0, (m, 3)) @ rng.gamma(1.0, 1.0, (3, n)) * 3).astype(float)
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, X, block_cols=50)
    return store


@pytest.mark.timeout(180)
def test_tls_cluster_needs_the_tls_options(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "certs")
    cluster = ProcCluster(tmp_path / "procs", tls=tls).start(1)
    try:
        store = small_store(tmp_path)
        base = [str(BIN / "scalenmf"), "fit", str(store), "-k", "3", "--max-iter", "5"]
        base += ["--scheduler", cluster.address, "--no-progress", "--connect-timeout", "3s"]
        ok = subprocess.run(
            [
                *(*base, "-o", str(tmp_path / "ok.zarr"), "--tls-ca-file", tls["ca"]),
                *("--tls-cert", tls["cert"], "--tls-key", tls["key"]),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ok.returncode == 0, ok.stderr
        assert scalenmf.load(tmp_path / "ok.zarr").info["scheduler"].startswith("tls://")
        bad = subprocess.run(
            [*base, "-o", str(tmp_path / "bad.zarr")], capture_output=True, text=True, timeout=120
        )
    finally:
        cluster.stop()
    assert bad.returncode == 1
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot connect to the Dask scheduler at tls://127.0.0.1")
    assert "--tls-ca-file" in last and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.zarr").exists()


def test_tls_options_are_checked_before_connecting(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    store = small_store(tmp_path)
    res = CliRunner().invoke(
        main,
        [
            *("fit", str(store), "-k", "2", "-o", str(tmp_path / "o.zarr")),
            *("--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", str(tmp_path / "none.pem")),
            *("--tls-cert", str(tmp_path / "none.pem")),
        ],
    )
    assert res.exit_code == 1 and "--tls-ca-file: no such file" in res.output


def scheduler_tasks(client) -> int:
    """Tasks the scheduler holds once the releases in flight have landed."""
    last, stable = -1, 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        n = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        stable = stable + 1 if n == last else 0
        if stable >= 2:
            return n
        last = n
        time.sleep(0.05)
    return last


@pytest.mark.timeout(180)
def test_graph_and_client_memory_do_not_grow(tmp_path: Path) -> None:
    # m large enough that keeping one broadcast (W, 20 KB) per iteration would show (about
    # 1 MB by iteration 50) far above the noise of messages in flight and of the bounded
    # replay log (at most ten broadcasts, a different number at iterations 2 and 50).
    store = small_store(tmp_path, m=640, n=200)
    seen: dict[int, tuple[int, int, int]] = {}
    import dask

    # The scheduler in its own process: tracemalloc then sees the client alone. Without
    # distributed's log of the last 1000 messages, which fills up over the first iterations.
    cluster = ProcCluster(tmp_path / "procs").start(2)
    try:
        with dask.config.set({"distributed.admin.low-level-log-length": 0}):
            client = cluster.client()

        def record(info) -> None:
            if info.iteration in (2, 50):
                tasks = scheduler_tasks(client)
                seen[info.iteration] = (
                    tasks,
                    len(client.futures),
                    tracemalloc.get_traced_memory()[0],
                )

        tracemalloc.start()
        try:
            res = scalenmf.nmf(
                store, 4, max_iter=50, tol=0, block_cols=100, scheduler=client, callback=record
            )
        finally:
            tracemalloc.stop()
            client.close()
    finally:
        cluster.stop()
    assert res.n_iter == 50
    (tasks2, futures2, mem2), (tasks50, futures50, mem50) = seen[2], seen[50]
    assert tasks50 == tasks2 and futures50 == futures2, seen
    assert abs(mem50 - mem2) < 384 * 1024, f"client memory grew by {mem50 - mem2} bytes"


def test_local_cluster_dashboard_stays_on_loopback() -> None:
    from scalenmf.engine.dask_exec import connect

    client, cluster, owns = connect(workers=1)
    try:
        assert owns and cluster is not None
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:"), link
    finally:
        client.close()
        cluster.close()
