"""Online (mini-batch) NMF: ``nmf(X, k, solver="online")`` on the one block step."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.engine import LocalExecutor
from scalenmf.io.matrix import as_source
from scalenmf.models.fits import objective
from scalenmf.models.nmf import NMFConfig, NMFModel
from scalenmf.models.online import block_batches, run_online
from scalenmf.models.step import fit_step


def _catalogue(sparse: bool = False, n: int = 400):
    rng = np.random.default_rng(0)
    W = rng.gamma(0.5, 1, (24, 4))
    H = rng.gamma(0.5, 1, (4, n)) * 20
    X = rng.poisson(W @ H).astype(float)
    return sp.csc_matrix(X) if sparse else X


def test_batches_cover_every_block_once_per_epoch():
    rng = np.random.default_rng(1)
    widths = [30] * 10 + [7]
    batches = block_batches(widths, 70, rng)
    flat = sorted(j for b in batches for j in b)
    assert flat == list(range(11))
    assert all(sum(widths[j] for j in b) >= 70 for b in batches[:-1])


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_every_epoch_lowers_the_objective(loss):
    X = _catalogue()
    finals = [
        scalenmf.nmf(X, 4, loss=loss, solver="online", batch_size=50, max_iter=e, tol=0)
        for e in (1, 2, 4)
    ]
    objs = [r.loss_history[-1] for r in finals]
    assert objs[0] > objs[1] > objs[2]
    for r in finals:
        assert (r.W >= 0).all() and (r.H >= 0).all()
        assert r.params["solver"] == "online" and r.params["batch_size"] == 50


def test_the_full_batch_optimum_is_a_fixed_point_of_the_exact_online_solver():
    X = _catalogue()
    full = scalenmf.nmf(X, 4, max_iter=2000, tol=1e-12, seed=3)
    source = as_source(X, block_cols=40)
    config = NMFConfig(k=4, solver="als")
    model = NMFModel(config, [full.W.copy()], [1.0], float((X * X).sum()))
    executor = LocalExecutor(source)
    trace = run_online(
        model, executor, max_epochs=2, tol=0, batch_cols=80, forget_factor=1.0, warm_start=True
    )
    np.testing.assert_allclose(model.Ws[0], full.W, rtol=1e-5, atol=1e-6 * full.W.max())
    np.testing.assert_allclose(trace.objectives[0][-1], full.loss_history[-1], rtol=1e-8)
    # The last pass measures the objective exactly: the one step gives the same figure.
    bc = model.broadcast([0], first=False)
    part, a = model.part(executor.map_reduce(fit_step, bc), 0)
    exact, _ = objective(config, model.xx, part, a, bc.groups[0].grams[0][a], model.Ws[0])
    np.testing.assert_allclose(trace.objectives[0][-1], exact, rtol=1e-10)


def test_online_comes_close_to_the_full_batch_objective():
    X = _catalogue(n=2000)
    full = scalenmf.nmf(X, 4, max_iter=1000, tol=1e-9, seed=0)
    online = scalenmf.nmf(X, 4, solver="online", batch_size=100, max_iter=30, tol=1e-6)
    assert online.loss_history[-1] <= 1.02 * full.loss_history[-1]


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_dense_and_sparse_online_fits_agree(loss):
    kw = dict(loss=loss, solver="online", batch_size=60, max_iter=3, tol=0, l1_h=0.1, l2_w=0.2)
    dense = scalenmf.nmf(_catalogue(), 4, **kw)
    sparse = scalenmf.nmf(_catalogue(sparse=True), 4, **kw)
    np.testing.assert_allclose(sparse.W, dense.W, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sparse.H, dense.H, rtol=1e-8, atol=1e-10)


@pytest.mark.cluster
def test_online_on_dask_workers_gives_the_laptop_fit():
    kw = dict(solver="online", batch_size=60, max_iter=2, tol=0)
    local = scalenmf.nmf(_catalogue(), 4, **kw)
    remote = scalenmf.nmf(_catalogue(), 4, workers=2, **kw)
    assert remote.info["executor"] == "dask"
    np.testing.assert_allclose(remote.W, local.W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(remote.H, local.H, rtol=1e-10, atol=1e-12)


def test_online_options_are_checked_by_name():
    X = _catalogue()
    with pytest.raises(ValueError, match="batch_size"):
        scalenmf.nmf(X, 3, solver="online", batch_size=0)
    with pytest.raises(ValueError, match="forget_factor"):
        scalenmf.nmf(X, 3, solver="online", forget_factor=1.5)
    with pytest.raises(ValueError, match="one run"):
        scalenmf.nmf(X, 3, solver="online", n_runs=3)
    with pytest.raises(ValueError, match="mask"):
        scalenmf.nmf(X, 3, solver="online", mask=np.zeros(X.shape, dtype=bool))
    with pytest.raises(ValueError, match="online"):
        scalenmf.rank_survey(X, "2-3", solver="online", progress=False)


def test_the_cli_fits_online(tmp_path):
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    path = tmp_path / "x.npy"
    np.save(path, _catalogue())
    out = tmp_path / "out.zarr"
    res = CliRunner().invoke(
        main,
        [
            "fit",
            str(path),
            "-k",
            "3",
            "-o",
            str(out),
            "--solver",
            "online",
            "--max-iter",
            "3",
            "--batch-size",
            "100",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    saved = scalenmf.load(out)
    assert saved.params["solver"] == "online" and saved.params["batch_size"] == 100
