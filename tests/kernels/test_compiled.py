"""The compiled NNLS loops (kernels/_nnls.c) against the numpy code they stand in for."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import scalenmf
from scalenmf.kernels import nnls

needs_build = pytest.mark.skipif(
    nnls.COMPILED_SWEEPS is None and shutil.which("cc") is None,
    reason="no C compiler: the package runs its numpy sweeps",
)


def _problem(rng, R, k, n, dtype, dead=()):
    W = rng.gamma(1.0, 1.0, (R, 40, k))
    for i in dead:
        W[:, :, i] = 0  # a dead coordinate: zero Gram diagonal
    G = np.matmul(W.transpose(0, 2, 1), W).astype(dtype)
    B = np.matmul(W.transpose(0, 2, 1), rng.gamma(1.0, 1.0, (R, 40, n))).astype(dtype)
    X0 = rng.random((R, k, n)).astype(dtype)
    return G, B, X0


def _numpy_only(monkeypatch):
    monkeypatch.setattr(nnls, "COMPILED_SWEEPS", None)


@needs_build
def test_the_editable_install_built_the_compiled_sweeps():
    # CI installs with a compiler: the fast path must be the one the suite exercises
    assert nnls.COMPILED_SWEEPS is not None


@needs_build
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("R, k, n", [(1, 5, 560), (3, 7, 33), (2, 1, 9), (1, 12, 1)])
def test_fixed_sweeps_equal_the_numpy_sweeps(monkeypatch, dtype, rtol, R, k, n):
    G, B, X0 = _problem(np.random.default_rng(k * n), R, k, n, dtype, dead=(0,) if k > 2 else ())
    fast, info = nnls.nnls_cd(G, B, X0, max_sweeps=3, tol=0)
    _numpy_only(monkeypatch)
    slow, info_np = nnls.nnls_cd(G, B, X0, max_sweeps=3, tol=0)
    assert fast.dtype == slow.dtype == dtype
    assert info.iterations == info_np.iterations == 3
    np.testing.assert_allclose(fast, slow, rtol=rtol, atol=rtol * float(np.abs(slow).max()))
    assert (fast >= 0).all()
    if k > 2:
        assert not fast[:, 0].any()  # the dead coordinate is 0


@needs_build
@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (0.5, 0.1)])
def test_kkt_stopped_descent_equals_the_numpy_one_and_scipy(monkeypatch, l1, l2):
    from scipy.optimize import nnls as scipy_nnls

    G, B, X0 = _problem(np.random.default_rng(3), 1, 6, 50, np.float64)
    fast, info = nnls.nnls_cd(G[0], B[0], X0[0], l1=l1, l2=l2, tol=1e-10, max_sweeps=5000)
    _numpy_only(monkeypatch)
    slow, info_np = nnls.nnls_cd(G[0], B[0], X0[0], l1=l1, l2=l2, tol=1e-10, max_sweeps=5000)
    assert info.converged and info_np.converged
    np.testing.assert_allclose(fast, slow, rtol=1e-7, atol=1e-9)
    if l1 == l2 == 0:
        L = np.linalg.cholesky(G[0]).T  # ‖L x − L⁻ᵀ b‖² has the same minimiser
        for j in range(0, 50, 7):
            ref = scipy_nnls(L, np.linalg.solve(L.T, B[0][:, j]))[0]
            np.testing.assert_allclose(fast[:, j], ref, rtol=1e-6, atol=1e-8)


@needs_build
def test_a_hals_fit_is_the_numpy_fit_to_round_off(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.poisson(rng.gamma(0.5, 1.0, (30, 4)) @ rng.gamma(1.0, 4.0, (4, 80))).astype(float)
    kw = dict(solver="hals", max_iter=40, tol=0, seed=1, progress=False)
    fast = scalenmf.nmf(X, 4, **kw)
    _numpy_only(monkeypatch)
    slow = scalenmf.nmf(X, 4, **kw)
    np.testing.assert_allclose(fast.W, slow.W, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fast.H, slow.H, rtol=1e-8, atol=1e-10)
    assert fast.loss_history == pytest.approx(slow.loss_history, rel=1e-10)


@needs_build
def _ones(*shape, dtype=float):
    return np.ones(shape, dtype=dtype)


@pytest.mark.parametrize(
    "args, error",
    [
        ((_ones(1, 2, 3), _ones(1, 2, 3), _ones(1, 2, 3), 1), ValueError),
        ((_ones(1, 2, 2), _ones(1, 2, 3), _ones(1, 3, 3), 1), ValueError),
        ((_ones(1, 2, 2), _ones(1, 2, 3, dtype=np.float32), _ones(1, 2, 3), 1), TypeError),
        (
            (_ones(1, 2, 2, dtype=int), _ones(1, 2, 3, dtype=int), _ones(1, 2, 3, dtype=int), 1),
            TypeError,
        ),
        ((_ones(1, 2, 2), _ones(1, 2, 3), _ones(1, 2, 3), -1), ValueError),
        ((_ones(1, 2, 2), _ones(1, 2, 3), _ones(1, 2, 3), 2, _ones(1, 3)), ValueError),
        (
            (_ones(1, 2, 2), _ones(1, 2, 3), np.asfortranarray(_ones(1, 2, 3)), 1),
            (ValueError, BufferError),
        ),
    ],
)
def test_the_compiled_sweeps_refuse_mis_shaped_or_mistyped_arrays(args, error) -> None:
    with pytest.raises(error):
        nnls.COMPILED_SWEEPS(*args)


def test_disabling_the_compiled_sweeps_falls_back_to_numpy():
    code = "from scalenmf.kernels import nnls; print(nnls.COMPILED_SWEEPS is None)"
    env = {"SCALENMF_NO_COMPILED": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# -- the compiled pivoting ------------------------------------------------------------------


def _numpy_pivoting(monkeypatch):
    monkeypatch.setattr(nnls, "COMPILED_BPP", None)


def _scipy_columns(G, B):
    from scipy.optimize import nnls as scipy_nnls

    L = np.linalg.cholesky(G).T  # ½xᵀGx − bᵀx = ½‖Lx − L⁻ᵀb‖² + const
    return np.column_stack([scipy_nnls(L, np.linalg.solve(L.T, b))[0] for b in B.T])


@needs_build
@pytest.mark.parametrize("k, n", [(1, 7), (5, 560), (6, 30), (12, 200), (40, 50)])
@pytest.mark.parametrize("warm", [False, True])
def test_compiled_pivoting_equals_the_numpy_pivoting_and_scipy(monkeypatch, k, n, warm):
    rng = np.random.default_rng(k + n)
    W = rng.gamma(1.0, 1.0, (3 * k + 5, k))
    G = W.T @ W
    B = W.T @ rng.gamma(0.5, 1.0, (W.shape[0], n)) - 3 * rng.random((k, n))
    X0 = rng.random((k, n)) - 0.4 if warm else None
    fast, info = nnls.nnls_bpp(G, B, X0)
    assert info.converged
    np.testing.assert_allclose(fast, _scipy_columns(G, B), rtol=1e-6, atol=1e-9)
    _numpy_pivoting(monkeypatch)
    slow, _ = nnls.nnls_bpp(G, B, X0)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


@needs_build
def test_compiled_pivoting_meets_scipy_at_condition_number_ten_thousand():
    rng = np.random.default_rng(7)
    U, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    G = U @ np.diag(np.geomspace(1.0, 1e-4, 8)) @ U.T  # condition number 10⁴
    B = G @ rng.standard_normal((8, 64))
    fast, info = nnls.nnls_bpp(G, B)
    ref = _scipy_columns(G, B)
    assert info.converged
    assert np.abs(fast - ref).max() <= 1e-6 * np.abs(ref).max()


@needs_build
def test_compiled_pivoting_batches_fits_with_penalties_and_dead_coordinates(monkeypatch):
    G, B, X0 = _problem(np.random.default_rng(11), 3, 6, 40, np.float64, dead=(2,))
    fast, _ = nnls.nnls_bpp(G, B, X0, l1=0.3, l2=0.2)
    assert not fast[:, 2].any() and (fast >= 0).all()
    _numpy_pivoting(monkeypatch)
    slow, _ = nnls.nnls_bpp(G, B, X0, l1=0.3, l2=0.2)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


@needs_build
def test_columns_the_compiled_pivoting_flags_go_through_the_numpy_code(monkeypatch):
    # two identical basis vectors: G is singular, the passive system of a column that
    # wants both has no Cholesky factor; the numpy code's least-squares answer is kept
    rng = np.random.default_rng(5)
    W = rng.gamma(1.0, 1.0, (30, 4))
    W[:, 3] = W[:, 2]
    G = W.T @ W
    B = W.T @ rng.gamma(1.0, 1.0, (30, 25))
    ok = np.empty((1, 25), dtype=bool)
    out = np.empty((1, 4, 25))
    nnls.COMPILED_BPP(G[None], B[None], None, out, ok, 30, nnls.BPP_TOL)
    assert not ok.all()  # the case this test is about does arise
    fast, info = nnls.nnls_bpp(G, B)
    _numpy_pivoting(monkeypatch)
    slow, info_np = nnls.nnls_bpp(G, B)
    assert info.unconverged == info_np.unconverged

    def objective(X):
        return 0.5 * np.einsum("kn,kl,ln->n", X, G, X) - np.einsum("kn,kn->n", B, X)

    np.testing.assert_allclose(objective(fast), objective(slow), rtol=1e-9)


@needs_build
def test_compiled_pivoting_flags_a_column_that_exceeds_its_rounds():
    G, B, _ = _problem(np.random.default_rng(2), 1, 8, 20, np.float64)
    B -= 2 * np.abs(B).max() * np.random.default_rng(3).random(B.shape)
    ok = np.empty((1, 20), dtype=bool)
    out = np.empty((1, 8, 20))
    nnls.COMPILED_BPP(G, B, None, out, ok, 0, nnls.BPP_TOL)  # no exchange allowed
    assert not ok.all()
    assert not out[~np.broadcast_to(ok[:, None, :], out.shape)].any()  # flagged: zeros


@needs_build
def test_an_als_fit_is_the_numpy_fit_to_round_off(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.poisson(rng.gamma(0.5, 1.0, (30, 4)) @ rng.gamma(1.0, 4.0, (4, 80))).astype(float)
    kw = dict(solver="als", max_iter=30, tol=0, seed=1, progress=False)
    fast = scalenmf.nmf(X, 4, **kw)
    _numpy_pivoting(monkeypatch)
    slow = scalenmf.nmf(X, 4, **kw)
    np.testing.assert_allclose(fast.W, slow.W, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fast.H, slow.H, rtol=1e-7, atol=1e-9)


@needs_build
def test_arrays_whose_dtype_spells_out_the_byte_order_are_taken():
    # states read back from Zarr carry dtype '<f8': the same numbers, another buffer format
    G, B, X0 = _problem(np.random.default_rng(4), 1, 4, 12, np.float64)
    spelled = np.dtype("<f8") if np.little_endian else np.dtype(">f8")
    a, _ = nnls.nnls_cd(G, B, X0.astype(spelled), max_sweeps=2, tol=0)
    b, _ = nnls.nnls_cd(G, B, X0, max_sweeps=2, tol=0)
    np.testing.assert_array_equal(a, b)
    x, _ = nnls.nnls_bpp(G.astype(spelled), B.astype(spelled), X0.astype(spelled))
    y, _ = nnls.nnls_bpp(G, B, X0)
    np.testing.assert_array_equal(x, y)


# -- the compiled KL fixed-basis solve --------------------------------------------------------


def _kl_problem(seed, m=40, k=5, n=60, sparse=False):
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, (m, k))
    X = rng.poisson(W @ rng.gamma(0.7, 20.0, (k, n))).astype(float)
    return W, (sp_csc(X) if sparse else X)


def sp_csc(X):
    import scipy.sparse as sp

    return sp.csc_matrix(X)


def _kl_objective(W, X, H, l1=0.0, l2=0.0):
    Xd = X.toarray() if hasattr(X, "toarray") else X
    WH = W @ H
    logs = np.where(Xd > 0, Xd * np.log(np.where(Xd > 0, WH, 1.0)), 0.0)
    return (WH - logs).sum(axis=0) + l1 * H.sum(axis=0) + 0.5 * l2 * (H**2).sum(axis=0)


def _kl_projected_gradient(W, X, H, l1=0.0, l2=0.0):
    """Largest projected gradient of each column, relative to ΣW_t + l1 + l2 h_t."""
    Xd = X.toarray() if hasattr(X, "toarray") else X
    ratio = np.where(Xd > 0, Xd / np.where(Xd > 0, W @ H, 1.0), 0.0)
    scale = W.sum(axis=0)[:, None] + l1 + l2 * H
    g = scale - W.T @ ratio
    pg = np.where(H > 0, np.abs(g), np.maximum(-g, 0))
    return (pg / scale).max(axis=0)


@needs_build
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (0.5, 0.2)])
def test_kl_coordinate_descent_meets_kkt_and_beats_mu(monkeypatch, sparse, l1, l2):
    from scalenmf.kernels import fixed

    W, X = _kl_problem(1, sparse=sparse)
    H, info = fixed.solve_fixed_basis_kl(W, X, l1=l1, l2=l2, tol=1e-9, max_iter=5000)
    assert info.converged and (H >= 0).all()
    assert _kl_projected_gradient(W, X, H, l1, l2).max() <= 1e-6
    monkeypatch.setattr(fixed, "COMPILED_KL", None)
    Hm, _ = fixed.solve_fixed_basis_kl(W, X, l1=l1, l2=l2, tol=1e-12, max_iter=20000)
    ours, theirs = _kl_objective(W, X, H, l1, l2), _kl_objective(W, X, Hm, l1, l2)
    assert (ours <= theirs + 1e-9 * np.abs(theirs)).all()  # the optimum, to round-off
    np.testing.assert_allclose(H, Hm, rtol=1e-3, atol=1e-3 * float(Hm.max()))


@needs_build
def test_kl_coordinate_descent_handles_empty_columns_dead_factors_and_duplicates():
    import scipy.sparse as sp

    from scalenmf.kernels import fixed

    W, X = _kl_problem(2, n=12)
    W[:, 1] = 0  # a factor with no mass: its coefficient is 0
    X[:, 3] = 0  # an empty sample: all coefficients 0
    H, info = fixed.solve_fixed_basis_kl(W, X, tol=1e-9, max_iter=5000)
    assert info.converged
    assert not H[1].any() and not H[:, 3].any()
    rows, cols = np.nonzero(X)
    vals = X[rows, cols]
    doubled = sp.csc_matrix(  # every entry stored as two halves
        (np.concatenate([vals / 2, vals / 2]), (np.tile(rows, 2), np.tile(cols, 2))),
        shape=X.shape,
    )
    H2, _ = fixed.solve_fixed_basis_kl(W, doubled, tol=1e-9, max_iter=5000)
    np.testing.assert_allclose(H2, H, rtol=1e-9, atol=1e-12)


@needs_build
def test_kl_coordinate_descent_warm_start_from_the_optimum_stays_there():
    from scalenmf.kernels import fixed

    W, X = _kl_problem(3)
    H, _ = fixed.solve_fixed_basis_kl(W, X, tol=1e-10, max_iter=5000)
    again, info = fixed.solve_fixed_basis_kl(W, X, H, tol=1e-8, max_iter=5000)
    assert info.iterations <= 3
    np.testing.assert_allclose(again, H, rtol=1e-6, atol=1e-9 * float(H.max()))


@needs_build
def test_kl_coordinate_descent_refuses_bad_arguments():
    W = np.ones((3, 2))
    s = W.sum(axis=0)
    d, i, p = np.ones(2), np.array([0, 1], dtype=np.int64), np.array([0, 1, 2], dtype=np.int64)
    H, ok = np.ones((2, 2)), np.zeros(2, dtype=bool)
    kl = nnls.COMPILED_KL
    with pytest.raises(ValueError, match="shapes"):
        kl(W, s, d, i, p, np.ones((3, 2)), ok, 0.0, 0.0, 5, 1e-6)
    with pytest.raises(TypeError, match="int64"):
        kl(W, s, d, i.astype(np.int32), p, H, ok, 0.0, 0.0, 5, 1e-6)
    with pytest.raises(ValueError, match="indptr"):
        kl(W, s, d, i, np.array([0, 2, 1], dtype=np.int64), H, ok, 0.0, 0.0, 5, 1e-6)
    with pytest.raises(ValueError, match="row index"):
        kl(W, s, d, np.array([0, 3], dtype=np.int64), p, H, ok, 0.0, 0.0, 5, 1e-6)


@needs_build
def test_a_kl_projection_is_the_mu_projection_at_its_optimum(monkeypatch):
    from scalenmf.kernels import fixed

    rng = np.random.default_rng(4)
    W = rng.gamma(0.5, 1.0, (30, 4))
    X = rng.poisson(W @ rng.gamma(1.0, 10.0, (4, 50))).astype(float)
    fast = scalenmf.project(W, X, loss="kl", tol=1e-9, progress=False)
    monkeypatch.setattr(fixed, "COMPILED_KL", None)
    slow = scalenmf.project(W, X, loss="kl", tol=1e-12, max_iter=20000, progress=False)
    np.testing.assert_allclose(np.asarray(fast.H), np.asarray(slow.H), rtol=1e-3, atol=1e-3)


@needs_build
@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_kl_coordinate_descent_refuses_negative_or_non_finite_data(bad):
    from scalenmf.kernels import fixed

    W, X = _kl_problem(6, n=8)
    X[2, 3] = bad
    with pytest.raises(ValueError, match="finite, non-negative"):
        fixed.solve_fixed_basis_kl(W, X)
