"""Linked NMF, iNMF and projection: laptop executor == Dask (LocalCluster and real processes)."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from tests.engine.test_cluster import BIN, scheduler_address  # noqa: F401 - the process-cluster fixture
from tests.models.test_linked import M, make_linked


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


@pytest.fixture(scope="module")
def data():
    (A, B), S, _ = make_linked(seed=2, ns=(90, 110))
    return A, B, S


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return fn(*args, **kwargs)


def same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y, equal_nan=True), np.nanmax(np.abs(x - y))


@pytest.mark.cluster
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "sparse,kwargs",
    [
        (False, {"init_iter": 3}),
        (True, {"loss": "kl", "init": "random"}),
        (True, {"solver": "hals", "n_runs": 2, "init": "random"}),
    ],
    ids=["dense-als-jnmf-start", "sparse-kl", "sparse-hals-restarts"],
)
def test_lnmf_laptop_equals_dask(client, data, sparse, kwargs):
    A, B, _ = data
    sets = [sp.csc_matrix(A), sp.csc_matrix(B)] if sparse else [A, B]
    opts = {"max_iter": 5, "tol": 0, "block_cols": 40, **kwargs}
    local = quiet(scalenmf.lnmf, sets, 2, [1, 2], **opts)
    remote = quiet(scalenmf.lnmf, sets, 2, [1, 2], scheduler=client, **opts)
    assert local.info["executor"] == "local" and remote.info["executor"] == "dask"
    assert local.loss_history == remote.loss_history
    same(local.H + local.U + local.V + [local.W], remote.H + remote.U + remote.V + [remote.W])


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_inmf_and_project_laptop_equal_dask(client, data):
    A, B, S = data
    opts = {"max_iter": 4, "tol": 0, "block_cols": 40}
    local = quiet(scalenmf.inmf, [A, sp.csc_matrix(B)], 3, 2.0, **opts)
    remote = quiet(scalenmf.inmf, [A, sp.csc_matrix(B)], 3, 2.0, scheduler=client, **opts)
    assert local.loss_history == remote.loss_history
    same(local.H + local.V + [local.W], remote.H + remote.V + [remote.W])
    for kwargs in ({"bootstrap": 4}, {"k_new": 2, "transfer_max_iter": 4, "loss": "kl"}):
        a = quiet(scalenmf.project, S, sp.csc_matrix(B), block_cols=40, **kwargs)
        b = quiet(scalenmf.project, S, sp.csc_matrix(B), block_cols=40, scheduler=client, **kwargs)
        same([a.H, a.cosine, a.relative_error], [b.H, b.cosine, b.relative_error])
        if a.H_lower is not None:
            same([a.H_lower, a.H_upper], [b.H_lower, b.H_upper])
        if a.U is not None:
            same([a.U, a.V], [b.U, b.V])


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_cli_lnmf_and_project_against_scheduler_processes(
    tmp_path: Path,
    scheduler_address: str,  # noqa: F811 - the fixture imported above
    data,
) -> None:
    A, B, _ = data
    rows = [f"g{i}" for i in range(M)]
    a = scalenmf.write_matrix(tmp_path / "A.zarr", A, row_labels=rows, block_cols=40)
    b = scalenmf.write_matrix(tmp_path / "B.zarr", sp.csc_matrix(B), row_labels=rows, block_cols=40)
    out = tmp_path / "l.zarr"
    common = ["--scheduler", scheduler_address, "--no-progress"]
    cmd = [str(BIN / "scalenmf"), "lnmf", a, b, "--k-shared", "2", "--k-unique", "1,2"]
    proc = subprocess.run(
        [*cmd, "-o", str(out), "--max-iter", "5", "--tol", "0", "--init-iter", "3", *common],
        capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    remote = scalenmf.load_linked(out)
    assert remote.info["executor"] == "dask" and remote.info["n_workers"] == 2
    local = quiet(scalenmf.lnmf, [a, b], 2, [1, 2], max_iter=5, tol=0, init_iter=3)
    np.testing.assert_allclose(remote.W, local.W, rtol=1e-8, atol=1e-10)
    for x, y in zip(remote.V + remote.U, local.V + local.U, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10)
    proj = tmp_path / "p.zarr"
    proc = subprocess.run(
        [str(BIN / "scalenmf"), "project", str(out), b, "-o", str(proj), "--bootstrap", "3",
         *common],
        capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    res = scalenmf.load_projection(proj)
    assert res.info["executor"] == "dask"
    direct = scalenmf.project(scalenmf.load(out), b, bootstrap=3)
    np.testing.assert_allclose(res.H, direct.H, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.H_upper, direct.H_upper, rtol=1e-8, atol=1e-10)
