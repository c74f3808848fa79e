"""A real cluster: ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            stdout=open(logs / "scheduler.log", "w"),
            stderr=subprocess.STDOUT,
            env=env,
        )
    ]
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        f"w{i}",
                        "--memory-limit",
                        "2GB",
                    ],
                    stdout=open(logs / f"worker{i}.log", "w"),
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.cluster
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_cli_fit_against_scheduler_processes(
    tmp_path: Path, scheduler_address: str, kind: str
) -> None:
    rng = np.random.default_rng(11)
    X = rng.poisson(rng.gamma(1.0, 1.0, (40, 3)) @ rng.gamma(1.0, 1.0, (3, 150)) * 3).astype(float)
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, sp.csc_matrix(X) if kind == "sparse" else X, block_cols=40)
    out = tmp_path / "out.zarr"
    cmd = [
        str(BIN / "scalenmf"),
        "fit",
        str(store),
        "-k",
        "3",
        "-o",
        str(out),
        "--scheduler",
        scheduler_address,
        "--max-iter",
        "25",
        "--tol",
        "0",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "relative error" in proc.stdout
    remote = scalenmf.load(out)
    assert remote.info["executor"] == "dask" and remote.info["n_workers"] == 2
    local = scalenmf.nmf(store, 3, max_iter=25, tol=0)
    np.testing.assert_allclose(remote.W, local.W, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(remote.H, local.H, rtol=1e-8, atol=1e-10)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    X = np.ones((5, 6))
    np.save(tmp_path / "x.npy", X)
    port = _free_port()
    proc = subprocess.run(
        [
            str(BIN / "scalenmf"),
            "fit",
            str(tmp_path / "x.npy"),
            "-k",
            "2",
            "-o",
            str(tmp_path / "o.zarr"),
            "--scheduler",
            f"tcp://127.0.0.1:{port}",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode != 0
    assert "127.0.0.1" in proc.stderr
    assert not (tmp_path / "o.zarr").exists()
