"""Model selection on Dask: a LocalCluster with processes, and a real scheduler + workers."""

from __future__ import annotations

import json
import subprocess
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.io.tables import read_csv
from scalenmf.models.survey import SUMMARY_COLUMNS
from tests.engine.test_cluster import BIN, scheduler_address  # noqa: F401 - the real-cluster fixture
from tests.models.test_rank_survey import planted


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
    with Client(cluster) as c:
        yield c
    cluster.close()


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return fn(*args, progress=False, **kw)


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_laptop_equals_local_cluster(client):
    X = sp.csc_matrix(planted(3, n=60))
    kw = {"n_runs": 2, "cv_reps": 2, "max_iter": 8, "tol": 0.0, "block_cols": 20, "seed": 3}
    laptop = _quiet(scalenmf.rank_survey, X, "2-3", **kw)
    remote = _quiet(scalenmf.rank_survey, X, "2-3", scheduler=client, **kw)
    assert remote.info["executor"] == "dask" and remote.info["n_workers"] == 2
    for a, b in zip(
        laptop.summary + laptop.null_summary, remote.summary + remote.null_summary, strict=True
    ):
        for c in SUMMARY_COLUMNS:
            assert a[c] == pytest.approx(b[c], rel=1e-9, abs=1e-12, nan_ok=True), c
    np.testing.assert_allclose(remote.best[3].H, laptop.best[3].H, rtol=1e-9, atol=1e-12)

    cl = _quiet(scalenmf.consensus, X, 3, n_runs=4, max_iter=8, tol=0.0, block_cols=20)
    cr = _quiet(
        scalenmf.consensus, X, 3, n_runs=4, max_iter=8, tol=0.0, block_cols=20, scheduler=client
    )
    np.testing.assert_array_equal(cl.clusters, cr.clusters)
    np.testing.assert_allclose(cr.result.H, cl.result.H, rtol=1e-9, atol=1e-12)

    M = np.random.default_rng(0).random(X.shape) < 0.15
    ml = _quiet(scalenmf.nmf, X, 3, mask=M, solver="hals", max_iter=6, block_cols=20)
    mr = _quiet(
        scalenmf.nmf, X, 3, mask=M, solver="hals", max_iter=6, block_cols=20, scheduler=client
    )
    np.testing.assert_allclose(mr.W, ml.W, rtol=1e-10, atol=1e-12)


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_cli_rank_against_scheduler_and_worker_processes(tmp_path, scheduler_address):  # noqa: F811
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, planted(3, n=60), block_cols=20)
    out = tmp_path / "rank"
    cmd = [
        str(BIN / "scalenmf"),
        "rank",
        str(store),
        "--ks",
        "2-4",
        "--n-runs",
        "3",
        "--solver",
        "hals",
        "-o",
        str(out),
        "--scheduler",
        scheduler_address,
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "suggested k = 3" in proc.stdout
    info = json.loads((out / "survey.json").read_text())["info"]
    assert info["executor"] == "dask" and info["n_workers"] == 2
    assert [int(r["k"]) for r in read_csv(out / "summary.csv")] == [2, 3, 4]
