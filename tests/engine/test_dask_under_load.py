"""Dask fits on a saturated machine: no ``UnboundLocalError`` from distributed's ``sync``.

``future.result(timeout=…)`` goes through ``sync(callback_timeout=…)``, which under load
can raise ``UnboundLocalError: cannot access local variable 'result'`` from inside
distributed (the dask/distributed#8514 pattern). The executor must wait another way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import scalenmf
from tests.conftest import make_counts

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
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


def fit(X: np.ndarray, **kw: object) -> scalenmf.NMFResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return scalenmf.nmf(X, 3, max_iter=12, tol=0.0, block_cols=40, **kw)


@pytest.mark.timeout(120)
def test_executor_never_waits_through_result_with_a_timeout(
    client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deterministic half: the racy path is not taken at all.
    from distributed import Future

    original = Future.result

    def guarded(self: Future, timeout: float | None = None) -> object:
        if timeout is not None:
            raise AssertionError("Future.result(timeout=...) is the racy sync path")
        return original(self)

    monkeypatch.setattr(Future, "result", guarded)
    X = make_counts(20, 200, seed=2)
    res = fit(X, scheduler=client)
    assert res.n_iter == 12


@pytest.mark.timeout(300)
def test_dask_fits_while_other_processes_saturate_the_cpus(client: object) -> None:
    X = make_counts(25, 240, seed=7, zeros=0.3)
    reference = fit(X)
    spin = "import time\nend = time.time() + 200\nwhile time.time() < end: pass\n"
    hogs = [
        subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2 * (os.cpu_count() or 1))
    ]
    try:
        for _ in range(3):
            res = fit(X, scheduler=client)
            np.testing.assert_allclose(res.W, reference.W, rtol=1e-10, atol=1e-12)
            assert res.loss_history == pytest.approx(reference.loss_history, rel=1e-10)
    finally:
        for p in hogs:
            p.kill()
        for p in hogs:
            p.wait()
