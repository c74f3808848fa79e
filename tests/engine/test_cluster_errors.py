"""Cluster trouble in one line: a non-Dask server at the address, a lost scheduler,
relative input paths read by workers that run elsewhere."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import pytest

import scalenmf
from tests.procs import BIN, ProcCluster

pytestmark = pytest.mark.cluster


@pytest.fixture
def junk_server() -> Iterator[int]:
    """Something that is not a Dask scheduler: answers every connection with HTTP."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 50)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        srv.close()


@pytest.mark.timeout(120)
def test_non_dask_server_at_the_address_is_one_line(tmp_path: Path, junk_server: int) -> None:
    np.save(tmp_path / "x.npy", np.ones((6, 10)))
    address = f"tcp://127.0.0.1:{junk_server}"
    proc = subprocess.run(
        [
            *(str(BIN / "scalenmf"), "fit", str(tmp_path / "x.npy"), "-k", "2", "-o"),
            *(str(tmp_path / "o.zarr"), "--scheduler", address, "--connect-timeout", "10"),
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert address in lines[0] and "EiB" not in lines[0], lines[0]


def test_closed_client_is_reported_as_a_lost_scheduler() -> None:
    from distributed.client import ClosedClientError

    from scalenmf.cli.main import user_errors

    @user_errors
    def command() -> None:
        raise ClosedClientError("Trying to run a task on a closed client")

    with pytest.raises(click.ClickException, match=r"lost the Dask scheduler.*--resume"):
        command()


@pytest.mark.timeout(240)
def test_relative_input_path_with_a_scheduler(tmp_path: Path) -> None:
    cluster = ProcCluster(tmp_path / "procs").start(1)
    try:
        work = tmp_path / "elsewhere"
        work.mkdir()
        X = np.random.default_rng(0).poisson(2.0, (10, 40)).astype(float) + 1
        scalenmf.write_matrix(work / "x.zarr", X, block_cols=10)
        proc = subprocess.run(
            [
                *(str(BIN / "scalenmf"), "fit", "x.zarr", "-k", "2", "-o", "o.zarr"),
                *("--scheduler", cluster.address, "--max-iter", "5", "--no-progress"),
            ],
            capture_output=True,
            text=True,
            timeout=200,
            cwd=work,
        )
        assert proc.returncode == 0, proc.stderr
        assert scalenmf.load(work / "o.zarr").H.shape == (2, 40)
    finally:
        cluster.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_refused_pickle_does_not_advise_unsafe_loading() -> None:
    import pickle

    from scalenmf.cli.main import user_errors

    @user_errors
    def command() -> None:
        raise pickle.UnpicklingError(
            "Weights only load failed. ... re-running `torch.load` with `weights_only` set "
            "to `False` will likely succeed, but it can result in arbitrary code execution."
        )

    with pytest.raises(click.ClickException) as info:
        command()
    assert "weights_only" not in info.value.message and "refused" in info.value.message
