"""The torch backend: the same block step and kernels as numpy, on a torch device.

On the CPU in float64 the torch kernels run the numpy algorithms step for step, so a fit
agrees with the numpy fit to round-off; in float32 to float tolerance. GPU tests run only
where torch sees a CUDA device.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

import scalenmf  # noqa: E402
from scalenmf.kernels import backend as backend_mod  # noqa: E402
from scalenmf.kernels import mu, nnls  # noqa: E402
from scalenmf.kernels import torch_kernels as tk  # noqa: E402

CUDA = torch.cuda.is_available()


def _data(sparse: bool) -> np.ndarray | sp.csc_matrix:
    rng = np.random.default_rng(0)
    if sparse:
        return sp.random(
            30,
            90,
            density=0.25,
            random_state=1,
            format="csc",
            data_rvs=lambda n: rng.poisson(3, n) + 1.0,
        )
    return rng.poisson(2.0, size=(30, 90)).astype(float)


CASES = [
    ("als", "frobenius", "bpp"),
    ("als", "frobenius", "cd"),
    ("hals", "frobenius", "bpp"),
    ("mu", "frobenius", "bpp"),
    ("mu", "kl", "bpp"),
]


@pytest.mark.parametrize(
    ("case", "penalised", "sparse"), list(itertools.product(CASES, [False, True], [False, True]))
)
def test_torch_on_the_cpu_gives_the_numpy_fit(case, penalised, sparse):
    solver, loss, nnls_name = case
    pen = {"l1_h": 0.1, "l2_w": 0.2, "l1_w": 0.05, "l2_h": 0.1} if penalised else {}
    kw = dict(solver=solver, loss=loss, nnls=nnls_name, max_iter=12, tol=0, seed=3, block_cols=40)
    X = _data(sparse)
    ref = scalenmf.nmf(X, 4, **kw, **pen)
    got = scalenmf.nmf(X, 4, backend="torch", device="cpu", **kw, **pen)
    assert got.params["backend"] == "torch"
    np.testing.assert_allclose(got.W, ref.W, rtol=1e-10, atol=1e-10 * np.abs(ref.W).max())
    np.testing.assert_allclose(got.H, ref.H, rtol=1e-10, atol=1e-10 * np.abs(ref.H).max())
    np.testing.assert_allclose(got.loss_history, ref.loss_history, rtol=1e-10)
    assert (got.W >= 0).all() and (got.H >= 0).all()


@pytest.mark.parametrize("solver", ["als", "hals", "mu"])
def test_torch_float32_fits_agree_with_numpy_to_float_tolerance(solver):
    X = _data(False).astype(np.float32)
    kw = dict(solver=solver, max_iter=10, tol=0, seed=5, dtype="float32")
    ref = scalenmf.nmf(X, 3, **kw)
    got = scalenmf.nmf(X, 3, backend="torch", device="cpu", **kw)
    assert got.W.dtype == np.float32 and got.H.dtype == np.float32
    np.testing.assert_allclose(got.relative_error, ref.relative_error, rtol=1e-5)
    assert np.abs(got.W - ref.W).max() <= 1e-4 * np.abs(ref.W).max()


def test_the_torch_kernels_solve_ill_conditioned_nnls_exactly():
    from scipy.optimize import nnls as scipy_nnls

    rng = np.random.default_rng(2)
    U, _ = np.linalg.qr(rng.standard_normal((60, 8)))
    W = np.abs(U * np.logspace(0, -4, 8))  # condition number ~1e4
    X = np.abs(rng.standard_normal((60, 40)))
    G, B = W.T @ W, W.T @ X
    got, info = tk.nnls_bpp(torch.as_tensor(G), torch.as_tensor(B))
    assert info.converged
    for j in range(40):
        ref = scipy_nnls(W, X[:, j])[0]
        np.testing.assert_allclose(got.numpy()[:, j], ref, rtol=1e-6, atol=1e-6 * ref.max())
    cd, info = tk.nnls_cd(
        torch.as_tensor(G), torch.as_tensor(B), tol=1e-8, finish=True, max_sweeps=20
    )
    assert info.converged
    np.testing.assert_allclose(cd.numpy(), got.numpy(), rtol=1e-6, atol=1e-6 * got.numpy().max())


def test_batched_torch_kernels_match_numpy_per_fit():
    rng = np.random.default_rng(4)
    R, k, n = 3, 5, 30
    A = rng.random((R, 40, k))
    G = np.einsum("rmk,rml->rkl", A, A)
    B = rng.random((R, k, n)) * 5
    X0 = rng.random((R, k, n))
    for name in ("nnls_bpp", "nnls_cd"):
        kwargs = {"l1": 0.1, "l2": 0.3}
        if name == "nnls_cd":
            kwargs.update(tol=1e-5, max_sweeps=30, finish=True)
        ref, rinfo = getattr(nnls, name)(G, B, X0, **kwargs)
        got, ginfo = getattr(tk, name)(
            torch.as_tensor(G), torch.as_tensor(B), torch.as_tensor(X0), **kwargs
        )
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
        assert ginfo.unconverged == rinfo.unconverged
    ref = mu.mu_frobenius(G, B, X0, l1=0.1, l2=0.2)
    got = tk.mu_frobenius(
        torch.as_tensor(G), torch.as_tensor(B), torch.as_tensor(X0), l1=0.1, l2=0.2
    )
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("sparse", [False, True])
def test_kl_statistics_on_torch_match_numpy(sparse):
    rng = np.random.default_rng(6)
    X = _data(sparse)
    W, H = rng.random((30, 4)), rng.random((4, 90))
    Xb = tk.to_block(X, torch.device("cpu"), torch.float64)
    Wt, Ht = torch.as_tensor(W), torch.as_tensor(H)
    np.testing.assert_allclose(
        tk.mu_kl_h(Wt, Xb, Ht, l1=0.1, l2=0.2).numpy(),
        mu.mu_kl_h(W, X, H, l1=0.1, l2=0.2),
        rtol=1e-12,
    )
    for got, ref in zip(tk.kl_block(Wt, Xb, Ht), mu.kl_block(W, X, H), strict=True):
        got = got.numpy() if isinstance(got, torch.Tensor) else got
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(tk.rhs(Wt, Xb).numpy(), W.T @ X, rtol=1e-12)
    np.testing.assert_allclose(tk.x_ht(Xb, Ht).numpy(), X @ H.T, rtol=1e-12)


def test_a_masked_torch_fit_runs_its_corrections_on_numpy_and_matches():
    X = _data(False)
    mask = np.zeros(X.shape, dtype=bool)
    mask[::7, ::5] = True
    kw = dict(max_iter=8, tol=0, seed=1, mask=mask)
    ref = scalenmf.nmf(X, 3, **kw)
    got = scalenmf.nmf(X, 3, backend="torch", device="cpu", **kw)
    np.testing.assert_allclose(got.W, ref.W, rtol=1e-10, atol=1e-12)


def test_backend_and_device_are_checked_by_name():
    X = _data(False)
    with pytest.raises(ValueError, match="backend must be"):
        scalenmf.nmf(X, 2, backend="jax")
    with pytest.raises(ValueError, match="needs backend='torch'"):
        scalenmf.nmf(X, 2, backend="numpy", device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        scalenmf.nmf(X, 2, backend="torch", device="tpu")
    if not CUDA:
        with pytest.raises(ValueError, match="no CUDA device"):
            scalenmf.nmf(X, 2, device="cuda")
    assert backend_mod.backend_for("torch", "auto").device.type == ("cuda" if CUDA else "cpu")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("sparse", [False, True])
def test_a_gpu_fit_agrees_with_the_cpu_fit(sparse):
    X = _data(sparse)
    kw = dict(max_iter=20, tol=0, seed=2, dtype="float64")
    ref = scalenmf.nmf(X, 4, **kw)
    got = scalenmf.nmf(X, 4, device="cuda", **kw)
    np.testing.assert_allclose(got.relative_error, ref.relative_error, rtol=1e-8)
    got32 = scalenmf.nmf(X, 4, device="cuda", max_iter=20, tol=0, seed=2)
    assert got32.W.dtype == np.float32
    np.testing.assert_allclose(got32.relative_error, ref.relative_error, rtol=1e-4)


def test_every_fitting_entry_point_takes_the_torch_backend():
    X = _data(False)
    opts = dict(max_iter=6, tol=0, seed=4, progress=False)
    torch_cpu = dict(backend="torch", device="cpu")
    ref = scalenmf.rank_survey(X, "2-3", n_runs=2, cv_reps=1, **opts)
    got = scalenmf.rank_survey(X, "2-3", n_runs=2, cv_reps=1, **opts, **torch_cpu)
    for a, b in zip(got.summary, ref.summary, strict=True):
        np.testing.assert_allclose(a["error_best"], b["error_best"], rtol=1e-9)
        np.testing.assert_allclose(a["cv_error"], b["cv_error"], rtol=1e-9)
    assert got.suggestion["k"] == ref.suggestion["k"]
    ref_c = scalenmf.consensus(X, 3, n_runs=3, **opts)
    got_c = scalenmf.consensus(X, 3, n_runs=3, **opts, **torch_cpu)
    np.testing.assert_allclose(got_c.result.W, ref_c.result.W, rtol=1e-9, atol=1e-12)
    fit = scalenmf.nmf(X, 3, **opts)
    ref_p = scalenmf.project(fit.W, X, progress=False)
    got_p = scalenmf.project(fit.W, X, progress=False, **torch_cpu)
    np.testing.assert_allclose(got_p.H, ref_p.H, rtol=1e-9, atol=1e-12)
    halves = [X[:, :45], X[:, 45:]]
    ref_l = scalenmf.lnmf(halves, 2, 1, **opts)
    got_l = scalenmf.lnmf(halves, 2, 1, **opts, **torch_cpu)
    np.testing.assert_allclose(got_l.W, ref_l.W, rtol=1e-9, atol=1e-12)
    ref_i = scalenmf.inmf(halves, 2, **opts)
    got_i = scalenmf.inmf(halves, 2, **opts, **torch_cpu)
    np.testing.assert_allclose(got_i.W, ref_i.W, rtol=1e-9, atol=1e-12)
    est = scalenmf.NMF(3, max_iter=6, tol=0, backend="torch", device="cpu").fit(X.T)
    ref_e = scalenmf.NMF(3, max_iter=6, tol=0).fit(X.T)
    np.testing.assert_allclose(est.components_, ref_e.components_, rtol=1e-9, atol=1e-12)


def test_the_cli_fits_on_the_torch_backend(tmp_path):
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    path = tmp_path / "x.npy"
    np.save(path, _data(False))
    runner = CliRunner()
    out = tmp_path / "out.zarr"
    args = ["fit", str(path), "-k", "3", "-o", str(out), "--max-iter", "5", "--no-progress"]
    res = runner.invoke(main, [*args, "--backend", "torch", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert scalenmf.load(out).params["backend"] == "torch"
    bad = runner.invoke(main, [*args, "--overwrite", "--backend", "numpy", "--device", "cuda"])
    assert bad.exit_code != 0 and "needs backend='torch'" in bad.output


@pytest.mark.cluster
def test_torch_blocks_on_dask_workers_give_the_laptop_numpy_fit():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        with Client(cluster) as client:
            for (solver, loss, nnls_name), sparse in [
                (CASES[0], True),
                (CASES[1], False),
                (CASES[2], True),
                (CASES[4], False),
            ]:
                X = _data(sparse)
                kw = dict(solver=solver, loss=loss, nnls=nnls_name, max_iter=6, tol=0, seed=2)
                ref = scalenmf.nmf(X, 3, block_cols=30, l1_h=0.1, **kw)
                got = scalenmf.nmf(
                    X, 3, block_cols=30, l1_h=0.1, scheduler=client, device="auto", **kw
                )
                assert got.info["executor"] == "dask"
                np.testing.assert_allclose(got.W, ref.W, rtol=1e-10, atol=1e-12)
                np.testing.assert_allclose(got.H, ref.H, rtol=1e-10, atol=1e-12)
