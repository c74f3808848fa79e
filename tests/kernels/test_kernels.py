"""Block kernels against slow, obvious references kept here (scipy's NNLS, explicit loops)."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

from scalenmf.kernels import (
    gram,
    kl_block,
    kl_divergence,
    mu_frobenius,
    mu_kl_h,
    rhs,
    sq_norm,
    x_ht,
)

PENALTIES = [(0.0, 0.0), (0.7, 0.0), (0.0, 1.5), (0.7, 1.5)]


# -- references ---------------------------------------------------------------------------


def nnls_reference(A: np.ndarray, Y: np.ndarray, l1: float = 0.0, l2: float = 0.0) -> np.ndarray:
    """argmin_x≥0 ½‖Ax − y‖² + l1·Σx + ½ l2‖x‖², column by column, with scipy's NNLS.

    L2 becomes extra rows √l2·I with zero targets. L1 is linear on x ≥ 0, so it is a shift
    of the target: with c = A(AᵀA)⁻¹·l1·1 (A of full column rank), cᵀAx = l1·Σx and
    ½‖Ax − (y − c)‖² = ½‖Ax − y‖² + l1·Σx + const.
    """
    k = A.shape[1]
    A_aug = np.vstack([A, np.sqrt(l2) * np.eye(k)])
    Y_aug = np.vstack([Y, np.zeros((k, Y.shape[1]))])
    c = A_aug @ np.linalg.solve(A_aug.T @ A_aug, np.full(k, l1))
    return np.column_stack(
        [nnls(A_aug, Y_aug[:, j] - c, maxiter=1000)[0] for j in range(Y.shape[1])]
    )


def qp_objective(G: np.ndarray, B: np.ndarray, X: np.ndarray, l1: float, l2: float) -> float:
    """Σ_columns ½ xᵀGx − bᵀx + l1·Σx + ½ l2‖x‖² with the unpenalised G and B."""
    X = X.astype(np.float64)
    return float(
        0.5 * np.sum(X * (G @ X)) - np.sum(B * X) + l1 * X.sum() + 0.5 * l2 * np.sum(X * X)
    )


def kl_reference(X: np.ndarray, W: np.ndarray, H: np.ndarray) -> float:
    """Σ_ij x log(x / wh) − x + wh with 0·log 0 = 0, one entry at a time."""
    total = 0.0
    m, n = X.shape
    for i in range(m):
        for j in range(n):
            x = float(X[i, j])
            wh = float(sum(float(W[i, r]) * float(H[r, j]) for r in range(W.shape[1])))
            total += (x * np.log(x / wh) if x > 0 else 0.0) - x + wh
    return total


def frob_cost(V, W, H, l1=0.0, l2=0.0) -> float:
    H = H.astype(np.float64)
    R = V - W.astype(np.float64) @ H
    return float(0.5 * np.sum(R * R) + l1 * H.sum() + 0.5 * l2 * np.sum(H * H))


def kl_cost(V, W, H, l1=0.0, l2=0.0) -> float:
    H = H.astype(np.float64)
    WH = W.astype(np.float64) @ H
    with np.errstate(divide="ignore", invalid="ignore"):
        xlog = np.where(V > 0, V * np.log(V / WH), 0.0)
    return float(xlog.sum() - V.sum() + WH.sum() + l1 * H.sum() + 0.5 * l2 * np.sum(H * H))


def nnls_problem(seed: int, m: int = 25, k: int = 6, n: int = 15):
    """Random A (full column rank) and Y with mixed signs, so some constraints are active."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, k))
    Y = rng.standard_normal((m, n)) + A @ rng.standard_normal((k, n))
    return A, Y, A.T @ A, A.T @ Y


def positive_problem(seed: int, m: int = 20, n: int = 30, k: int = 4):
    rng = np.random.default_rng(seed)
    V = rng.poisson(rng.gamma(1.0, 1.0, (m, k)) @ rng.gamma(1.0, 1.0, (k, n))).astype(float)
    W = rng.random((m, k)) + 0.1
    H = rng.random((k, n)) + 0.1
    return V, W, H


# -- NNLS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("l1,l2", PENALTIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cd_nnls_equals_scipy_nnls(seed, l1, l2):
    A, Y, G, B = nnls_problem(seed)
    ref = nnls_reference(A, Y, l1, l2)
    assert (ref == 0).any(), "the problem should have active constraints"
    X, info = nnls_cd(G, B, l1=l1, l2=l2, max_sweeps=20000, tol=1e-13)
    assert info.converged and info.iterations < 20000, "coordinate descent did not converge"
    np.testing.assert_allclose(X, ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("l1,l2", PENALTIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bpp_nnls_equals_scipy_nnls(seed, l1, l2):
    A, Y, G, B = nnls_problem(seed)
    ref = nnls_reference(A, Y, l1, l2)
    X = nnls_bpp(G, B, l1=l1, l2=l2)[0]
    np.testing.assert_allclose(X, ref, rtol=1e-9, atol=1e-11)


def test_nnls_warm_start_and_large_l1_zero_everything():
    A, Y, G, B = nnls_problem(5)
    ref = nnls_reference(A, Y)
    warm = np.abs(np.random.default_rng(0).standard_normal(ref.shape))
    X, _ = nnls_cd(G, B, warm, max_sweeps=20000, tol=1e-13)
    np.testing.assert_allclose(X, ref, rtol=1e-7, atol=1e-9)
    big = float(np.abs(B).max()) + 1.0  # l1 above every |b_i|: x = 0 is optimal
    assert not nnls_cd(G, B, warm, l1=big, max_sweeps=500, tol=1e-12)[0].any()
    assert not nnls_bpp(G, B, l1=big)[0].any()


def test_bpp_nnls_singular_gram_reaches_the_nnls_optimum():
    """A repeated column makes G singular: the solution is not unique, the optimum is."""
    A, Y, _, _ = nnls_problem(3)
    A = np.column_stack([A, A[:, 0]])
    G, B = A.T @ A, A.T @ Y
    ref = nnls_reference(A[:, :-1], Y)
    X = nnls_bpp(G, B)[0]
    assert (X >= 0).all()
    ref_full = np.vstack([ref, np.zeros((1, ref.shape[1]))])
    assert qp_objective(G, B, X, 0, 0) == pytest.approx(
        qp_objective(G, B, ref_full, 0, 0), rel=1e-9
    )


@pytest.mark.parametrize("l1,l2", PENALTIES)
def test_hals_sweep_never_raises_the_objective(l1, l2):
    A, Y, G, B = nnls_problem(7, k=8)
    Gp = G + l2 * np.eye(G.shape[0])
    Bp = B - l1
    X = np.abs(np.random.default_rng(1).standard_normal(B.shape)) * 3
    f = qp_objective(G, B, X, l1, l2)
    for _ in range(40):
        X, info = nnls_cd(Gp, Bp, X, max_sweeps=1, tol=0.0)  # one HALS sweep
        assert (X >= 0).all() and info.iterations == 1 and info.unconverged is None
        f_new = qp_objective(G, B, X, l1, l2)
        assert f_new <= f + 1e-12 * abs(f)
        f = f_new
    # The sweeps converge to the exact NNLS solution.
    np.testing.assert_allclose(X, nnls_reference(A, Y, l1, l2), rtol=1e-4, atol=1e-6)


def test_hals_sweep_zeroes_the_row_of_a_dead_basis_vector():
    A, Y, _, _ = nnls_problem(8)
    A[:, 2] = 0.0
    G, B = A.T @ A, A.T @ Y
    X = nnls_cd(G, B, np.ones(B.shape), max_sweeps=1, tol=0.0)[0]
    assert not X[2].any()
    assert np.isfinite(X).all()


# -- multiplicative updates -----------------------------------------------------------------


@pytest.mark.parametrize("l1,l2", PENALTIES)
def test_mu_frobenius_never_raises_its_cost(l1, l2):
    V, W, H = positive_problem(0)
    G, B = W.T @ W, W.T @ V
    f = frob_cost(V, W, H, l1, l2)
    for _ in range(60):
        H = mu_frobenius(G, B, H, l1=l1, l2=l2)
        assert (H >= 0).all()
        f_new = frob_cost(V, W, H, l1, l2)
        assert f_new <= f + 1e-12 * abs(f)
        f = f_new
    assert f < frob_cost(V, W, positive_problem(0)[2], l1, l2)


@pytest.mark.parametrize("l1,l2", PENALTIES)
@pytest.mark.parametrize("sparse", [False, True])
def test_mu_kl_h_never_raises_its_cost(l1, l2, sparse):
    V, W, H = positive_problem(1)
    V[np.random.default_rng(2).random(V.shape) < 0.4] = 0.0
    Xin = sp.csc_matrix(V) if sparse else V
    f = kl_cost(V, W, H, l1, l2)
    for _ in range(60):
        H = mu_kl_h(W, Xin, H, l1=l1, l2=l2)
        assert (H >= 0).all()
        f_new = kl_cost(V, W, H, l1, l2)
        assert f_new <= f + 1e-12 * abs(f)
        f = f_new
    assert f < kl_cost(V, W, positive_problem(1)[2], l1, l2)


def test_mu_kl_h_sparse_equals_dense():
    V, W, H = positive_problem(3)
    V[np.random.default_rng(4).random(V.shape) < 0.5] = 0.0
    np.testing.assert_allclose(
        mu_kl_h(W, sp.csc_matrix(V), H, l1=0.2, l2=0.3),
        mu_kl_h(W, V, H, l1=0.2, l2=0.3),
        rtol=1e-12,
    )


# -- KL divergence --------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_kl_divergence_equals_slow_reference(sparse):
    V, W, H = positive_problem(5, m=9, n=11, k=3)
    V[np.random.default_rng(6).random(V.shape) < 0.5] = 0.0  # exercise 0·log 0 = 0
    assert (V == 0).any() and (V > 0).any()
    Xin = sp.csc_matrix(V) if sparse else V
    assert kl_divergence(Xin, W, H) == pytest.approx(kl_reference(V, W, H), rel=1e-12)


def test_kl_block_sparse_equals_dense_including_stored_zeros():
    V, W, H = positive_problem(7)
    V[np.random.default_rng(8).random(V.shape) < 0.6] = 0.0
    # An explicitly stored zero must count as 0·log 0 = 0, as in the dense matrix.
    r, c = np.nonzero(V)
    r0, c0 = np.argwhere(V == 0)[0]
    S = sp.csc_matrix((np.append(V[r, c], 0.0), (np.append(r, r0), np.append(c, c0))), V.shape)
    assert S.nnz == np.count_nonzero(V) + 1
    dense = kl_block(W, V, H)
    sparse = kl_block(W, S, H)
    for a, b in zip(dense, sparse, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12)
    assert dense[2] == pytest.approx(kl_reference(V, W, H), rel=1e-12)
    assert dense[3] == pytest.approx(float(np.sum(V * (W @ H))), rel=1e-12)


def test_sparse_kl_touches_only_the_non_zeros():
    """A 200 × 50,000 matrix with 500 entries: a dense W·H would be 80 MB; stay far below."""
    rng = np.random.default_rng(9)
    m, n, k = 200, 50_000, 3
    S = sp.random(m, n, density=500 / (m * n), format="csc", random_state=rng) * 10
    W = rng.random((m, k)) + 0.1
    H = rng.random((k, n)) + 0.1
    dense_bytes = m * n * 8
    tracemalloc.start()
    try:
        numer, hsum, div, _ = kl_block(W, S, H)
        H2 = mu_kl_h(W, S, H)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < dense_bytes / 20, f"peak {peak} bytes: W·H was formed densely"
    # Same numbers as a direct computation at the non-zeros plus Σ WH in closed form.
    coo = S.tocoo()
    wh = np.einsum("ik,ki->i", W[coo.row], H[:, coo.col])
    expect = float(np.sum(coo.data * np.log(coo.data / wh)) - coo.data.sum())
    expect += float(W.sum(axis=0) @ H.sum(axis=1))
    assert div == pytest.approx(expect, rel=1e-12)
    assert H2.shape == H.shape and np.isfinite(H2).all()
    np.testing.assert_allclose(hsum, H.sum(axis=1), rtol=1e-13)
    ratio = sp.csc_matrix((coo.data / wh, (coo.row, coo.col)), shape=S.shape)
    np.testing.assert_allclose(numer, ratio @ H.T, rtol=1e-12)


# -- primitives and dtypes ------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_primitives_match_dense_math(sparse):
    V, W, H = positive_problem(10)
    Xin = sp.csc_matrix(V) if sparse else V
    np.testing.assert_allclose(gram(W), W.T @ W, rtol=1e-13)
    np.testing.assert_allclose(rhs(W, Xin), W.T @ V, rtol=1e-13)
    np.testing.assert_allclose(x_ht(Xin, H), V @ H.T, rtol=1e-13)
    assert sq_norm(Xin) == pytest.approx(float(np.sum(V * V)), rel=1e-13)


def test_rhs_of_one_column_does_not_depend_on_its_layout():
    """A 1-column view into a wider array and its contiguous copy give identical bits."""
    rng = np.random.default_rng(11)
    X = rng.poisson(3.0, (40, 9)).astype(float)
    W = rng.random((40, 3))
    view = X[:, 4:5]
    assert not view.flags.c_contiguous
    assert np.array_equal(rhs(W, view), rhs(W, np.ascontiguousarray(view)))


@pytest.mark.parametrize("sparse", [False, True])
def test_float32_in_float32_out(sparse):
    V, W, H = positive_problem(12)
    V32, W32, H32 = V.astype(np.float32), W.astype(np.float32), H.astype(np.float32)
    Xin = sp.csc_matrix(V32) if sparse else V32
    G32, B32 = W32.T @ W32, rhs(W32, Xin)
    assert B32.dtype == np.float32
    assert nnls_cd(G32, B32, H32, l1=0.1, l2=0.1)[0].dtype == np.float32
    assert nnls_bpp(G32, B32, l1=0.1, l2=0.1)[0].dtype == np.float32
    assert mu_frobenius(G32, B32, H32, l1=0.1, l2=0.1).dtype == np.float32
    assert mu_kl_h(W32, Xin, H32, l1=0.1, l2=0.1).dtype == np.float32
    assert nnls_cd(G32, B32, H32, max_sweeps=1, tol=0.0)[0].dtype == np.float32
    # Statistics accumulate in float64 by contract (loss bookkeeping keeps its precision).
    assert gram(W32).dtype == np.float64
    assert x_ht(Xin, H32).dtype == np.float64
    numer, hsum, div, _ = kl_block(W32, Xin, H32)
    assert numer.dtype == np.float64 and hsum.dtype == np.float64
    # And float32 agrees with float64 to float32 precision.
    np.testing.assert_allclose(
        nnls_bpp(G32, B32)[0], nnls_bpp(W.T @ W, W.T @ V)[0], rtol=1e-3, atol=1e-4
    )
    assert div == pytest.approx(kl_divergence(V, W, H), rel=1e-5)


# -- the canonical batched kernels ------------------------------------------------------------

from scalenmf.kernels import (  # noqa: E402
    NNLSInfo,
    nnls_bpp,
    nnls_cd,
    solve_fixed_basis,
    solve_fixed_basis_kl,
    unconstrained_start,
)


def nnls_columns(G, B, **kw):
    """The projection's exact CD: from the clipped unconstrained start, finished exactly."""
    start = unconstrained_start(G, B, l1=kw.get("l1", 0.0))
    kw.setdefault("max_sweeps", 1000)
    kw.setdefault("tol", 1e-10)
    return nnls_cd(G, B, start, finish=True, **kw)[0]


from scalenmf.kernels.penalty import fold_penalties  # noqa: E402


def conditioned(seed: int, cond: float, m: int = 40, k: int = 6) -> np.ndarray:
    """An m×k basis with singular values log-spaced from 1 to 1/cond (mixed signs)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return U @ np.diag(np.logspace(0, -np.log10(cond), k)) @ V.T


def batch_problem(shape: str, seed: int = 0, R: int = 3, k: int = 5, n: int = 12):
    """Bases A (R, m, k), targets Y (R, m, n), and (G, B) in the asked batch shape.

    ``single``: G (k, k), B (k, n); ``shared``: G (R, k, k); ``one-gram``: one (k, k) G
    for R fits; ``per-column``: G (R, n, k, k), every column with its own basis (rows of
    A dropped at random, as a mask does).
    """
    rng = np.random.default_rng(seed)
    R = 1 if shape == "single" else R
    m = 25
    A = rng.standard_normal((R, m, k))
    if shape == "one-gram":
        A[:] = A[0]
    Y = rng.standard_normal((R, m, n)) + np.einsum(
        "rmk,rkn->rmn", A, rng.standard_normal((R, k, n))
    )
    if shape == "per-column":
        keep = rng.random((R, n, m)) < 0.8
        Acols = A[:, None] * keep[..., None]  # (R, n, m, k)
        G = np.einsum("rnmk,rnml->rnkl", Acols, Acols)
        B = np.einsum("rnmk,rmn->rkn", Acols, Y)
        bases = [[Acols[r, j] for j in range(n)] for r in range(R)]
    else:
        G = np.einsum("rmk,rml->rkl", A, A)
        B = np.einsum("rmk,rmn->rkn", A, Y)
        bases = [[A[r]] * n for r in range(R)]
    if shape == "single":
        G, B = G[0], B[0]
    elif shape == "one-gram":
        G = G[0]
    return G, B, bases, Y


def batch_reference(bases, Y, l1, l2) -> np.ndarray:
    R, _, n = Y.shape
    return np.stack(
        [
            np.column_stack(
                [nnls_reference(bases[r][j], Y[r][:, j : j + 1], l1, l2)[:, 0] for j in range(n)]
            )
            for r in range(R)
        ]
    )


SHAPES = ["single", "shared", "one-gram", "per-column"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.7, 1.5)])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("solver", ["bpp", "cd"])
def test_batched_kernels_equal_scipy_nnls(solver, shape, l1, l2, dtype):
    G, B, bases, Y = batch_problem(shape)
    ref = batch_reference(bases, Y, l1, l2)
    ref = ref[0] if shape == "single" else ref
    assert (ref == 0).any() and (ref > 0).any()
    B_in = B.astype(dtype)
    if solver == "bpp":
        X, info = nnls_bpp(G, B_in, l1=l1, l2=l2)
    else:
        X, info = nnls_cd(G, B_in, l1=l1, l2=l2, max_sweeps=5000, tol=1e-12, finish=True)
    assert isinstance(info, NNLSInfo) and info.converged
    assert X.dtype == dtype and X.shape == B.shape
    # float32 only rounds B (and the result): the solve itself runs in float64.
    ref32 = batch_reference(bases, Y, l1, l2) if dtype == np.float64 else None
    if ref32 is None:
        Xr = nnls_bpp(G, B_in.astype(np.float64), l1=l1, l2=l2)[0]
        np.testing.assert_allclose(X, Xr, rtol=1e-6, atol=1e-6 * np.abs(Xr).max())
    else:
        np.testing.assert_allclose(X, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_warm_start_and_fixed_sweeps_in_every_shape(shape):
    G, B, _, _ = batch_problem(shape, seed=1)
    exact, _ = nnls_bpp(G, B)
    warm, info = nnls_bpp(G, B, exact + 0.3)  # a wrong passive set to pivot away from
    np.testing.assert_allclose(warm, exact, rtol=1e-10, atol=1e-12)
    assert nnls_bpp(G, B, exact)[1].iterations == 0  # the right passive set: no pivoting
    # tol = 0 is HALS: exactly max_sweeps sweeps, nothing tested, objective never rises.
    X = np.zeros_like(B)
    for _ in range(4):
        new, info = nnls_cd(G, B, X, max_sweeps=1, tol=0.0)
        assert info.iterations == 1 and info.unconverged is None and not info.converged
        f_old = _batch_objective(G, B, X)
        f_new = _batch_objective(G, B, new)
        assert np.all(f_new <= f_old + 1e-12 * np.abs(f_old))
        X = new


def _batch_objective(G, B, X) -> np.ndarray:
    """Per fit and column ½ xᵀGx − bᵀx (any batch shape), (R, n)."""
    Gb = G if G.ndim != 2 else np.broadcast_to(G, (1 if B.ndim == 2 else B.shape[0], *G.shape))
    Bb, Xb = (B[None], X[None]) if B.ndim == 2 else (B, X)
    if Gb.ndim == 3 and Gb.shape[0] != Bb.shape[0]:
        Gb = np.broadcast_to(Gb[0], (Bb.shape[0], *Gb.shape[1:]))
    GX = np.matmul(Gb, Xb) if Gb.ndim == 3 else np.einsum("rnkl,rln->rkn", Gb, Xb)
    return 0.5 * np.sum(Xb * GX, axis=1) - np.sum(Bb * Xb, axis=1)


@pytest.mark.parametrize("cond", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("solver", ["bpp", "cd"])
def test_exact_on_bases_of_condition_number_up_to_1e4(solver, cond):
    A = conditioned(3, cond)
    Y = np.random.default_rng(4).standard_normal((40, 30))
    ref = nnls_reference(A, Y)
    G, B = A.T @ A, A.T @ Y
    if solver == "bpp":
        X, info = nnls_bpp(G, B)
    else:
        X, info = nnls_cd(G, B, max_sweeps=200, tol=1e-10, finish=True)
    assert info.converged
    np.testing.assert_allclose(X, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_coordinate_descent_stops_on_kkt_not_on_a_small_step():
    """On a basis of condition number 236 the last step of coordinate descent is tiny long
    before the solution is reached: the old step rule stopped there, H off by half."""
    A = conditioned(5, 236.0, m=96, k=8) + 0.0
    Y = np.random.default_rng(6).standard_normal((96, 40))
    ref = nnls_reference(A, Y)
    G, B = A.T @ A, A.T @ Y
    X = nnls_columns(G, B)  # 1000 sweeps, tol 1e-10, finished exactly
    np.testing.assert_allclose(X, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    # Without finishing, the columns that miss the test are reported, not passed off.
    Xc, info = nnls_cd(G, B, np.zeros_like(B), max_sweeps=20, tol=1e-10)
    assert info.unconverged is not None and info.unconverged > 0 and not info.converged
    bad = np.abs(Xc - ref).max(axis=0) > 1e-6 * np.abs(ref).max()
    assert bad.sum() <= info.unconverged  # every column off the optimum is counted
    Xf, info_f = nnls_cd(G, B, np.zeros_like(B), max_sweeps=20, tol=1e-10, finish=True)
    assert info_f.converged and info_f.finished == info.unconverged
    np.testing.assert_allclose(Xf, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_unconverged_columns_are_counted_over_fits():
    G, B, _, _ = batch_problem("shared", seed=7, R=4, n=20)
    _, info = nnls_cd(G, B, max_sweeps=1, tol=1e-14)
    assert info.unconverged == 4 * 20 - _optimal_after_one_sweep(G, B)
    _, info = nnls_cd(G, B, max_sweeps=5000, tol=1e-12)
    assert info.converged and info.iterations < 5000


def _optimal_after_one_sweep(G, B) -> int:
    X, _ = nnls_cd(G, B, max_sweeps=1, tol=0.0)
    grad = np.matmul(G, X) - B
    pg = np.where(X > 0, np.abs(grad), np.maximum(-grad, 0)).max(axis=1)
    return int((pg <= 1e-14 * np.abs(B).max(axis=1)).sum())


@pytest.mark.parametrize("shape", ["single", "shared", "per-column"])
@pytest.mark.parametrize("solver", ["bpp", "cd", "hals"])
def test_zero_columns_of_the_gram_stay_zero(shape, solver):
    """A zero basis vector (padding of a smaller rank) keeps its coefficients at 0."""
    G, B, _, _ = batch_problem(shape, seed=8)
    G = G.copy()
    B = B.copy()
    G[..., 2, :] = 0.0
    G[..., :, 2] = 0.0
    B[..., 2, :] = 0.0
    X0 = np.ones(B.shape)
    for l1 in (0.0, 0.4):
        if solver == "bpp":
            X, _ = nnls_bpp(G, B, X0, l1=l1)
        elif solver == "cd":
            X, _ = nnls_cd(G, B, X0, l1=l1, tol=1e-10, max_sweeps=3000, finish=True)
        else:
            X, _ = nnls_cd(G, B, X0, l1=l1, tol=0.0, max_sweeps=3)
        assert np.all(X[..., 2, :] == 0) and np.isfinite(X).all() and (X >= 0).all()
    keep = [0, 1, 3, 4]
    sub_G = G[..., keep, :][..., :, keep]
    np.testing.assert_allclose(
        nnls_bpp(G, B)[0][..., keep, :], nnls_bpp(sub_G, B[..., keep, :])[0], atol=1e-10
    )


def test_penalty_folding_in_every_shape():
    rng = np.random.default_rng(9)
    for gshape in [(4, 4), (2, 4, 4), (2, 6, 4, 4)]:
        G = rng.random(gshape)
        B = rng.random((2, 4, 6))
        Gp, Bp = fold_penalties(G, B, 0.5, 2.0)
        np.testing.assert_allclose(Gp, G + 2.0 * np.eye(4))
        np.testing.assert_allclose(Bp, B - 0.5)
        assert Gp is not G
    Gp, Bp = fold_penalties(G, B.astype(np.float32), 0.0, 0.0)
    assert Gp.dtype == np.float32 and Bp.dtype == np.float32
    assert unconstrained_start(np.eye(2), -np.ones((2, 3))).max() == 0.0


# -- fixed basis --------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["bpp", "cd", "hals", "mu"])
def test_fixed_basis_solve_equals_scipy(solver):
    V, W, _ = positive_problem(13, m=30, n=25, k=4)
    ref = nnls_reference(W, V)
    kw = {"max_iter": 20000, "tol": 1e-13} if solver == "mu" else {}
    H, info = solve_fixed_basis(gram(W), rhs(W, V), solver=solver, **kw)
    rtol = 1e-3 if solver == "mu" else 1e-8
    np.testing.assert_allclose(H, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    if solver != "mu":
        assert info.converged
    with pytest.raises(ValueError, match="solver must be one of"):
        solve_fixed_basis(gram(W), rhs(W, V), solver="lbfgs")


@pytest.mark.parametrize("sparse", [False, True])
def test_fixed_basis_kl_meets_kkt_and_reports(sparse):
    V, W, _ = positive_problem(14, m=30, n=20, k=3)
    Xin = sp.csc_matrix(V) if sparse else V
    H, info = solve_fixed_basis_kl(W, Xin, max_iter=20000, tol=1e-10)
    assert info.converged and info.iterations < 20000
    grad = W.T @ (1.0 - V / (W @ H))
    assert np.abs(grad[H > 1e-3]).max() < 1e-4
    assert grad[H <= 1e-3].min() > -1e-3
    _, short = solve_fixed_basis_kl(W, Xin, max_iter=3, tol=1e-10)
    assert short.unconverged == 20 and not short.converged


# -- masked KL and float64 bookkeeping ----------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_masked_kl_h_step_equals_the_observed_entries_problem(sparse):
    """With entries missing, the step is that of the KL problem on the observed entries:
    column by column it equals the unmasked step on the observed rows only."""
    V, W, H = positive_problem(15)
    rng = np.random.default_rng(16)
    miss = rng.random(V.shape) < 0.3
    Vobs = np.where(miss, 0.0, V)
    M = sp.csc_matrix(miss)
    Xin = sp.csc_matrix(Vobs) if sparse else Vobs
    new = mu_kl_h(W, Xin, H, l1=0.1, l2=0.2, missing=M)
    for j in range(V.shape[1]):
        o = ~miss[:, j]
        ref = mu_kl_h(W[o], V[o, j : j + 1], H[:, j : j + 1], l1=0.1, l2=0.2)
        np.testing.assert_allclose(new[:, j : j + 1], ref, rtol=1e-12)
    # A pattern that hides nothing gives the unmasked step bit for bit.
    empty = sp.csc_matrix(V.shape)
    assert np.array_equal(mu_kl_h(W, Xin, H, missing=empty), mu_kl_h(W, Xin, H))

    # And the observed-entries cost never rises.
    def observed_cost(Hc):
        x, y = V[~miss], (W @ Hc)[~miss]
        pos = x > 0
        return float(np.sum(x[pos] * np.log(x[pos] / y[pos])) - x.sum() + y.sum())

    cost = [observed_cost(H)]
    Hc = H
    for _ in range(30):
        Hc = mu_kl_h(W, Xin, Hc, missing=M)
        cost.append(observed_cost(Hc))
    assert all(b <= a + 1e-12 * abs(a) for a, b in itertools.pairwise(cost))


@pytest.mark.parametrize("sparse", [False, True])
def test_float32_statistics_accumulate_in_float64(sparse):
    """float32 inputs are exact in float64: the reduced statistics must be the float64
    results of those inputs, not float32 sums (which are off by ~1e-6 relative)."""
    rng = np.random.default_rng(17)
    m, n, k = 50, 20_000, 4
    V = rng.poisson(rng.gamma(1.0, 1.0, (m, n)) * 3).astype(np.float32)
    W = (rng.random((m, k)) + 0.1).astype(np.float32)
    H = (rng.random((k, n)) + 0.1).astype(np.float32)
    Xin = sp.csc_matrix(V) if sparse else V
    X64 = sp.csc_matrix(V.astype(np.float64)) if sparse else V.astype(np.float64)
    W64, H64 = W.astype(np.float64), H.astype(np.float64)
    np.testing.assert_allclose(x_ht(Xin, H), x_ht(X64, H64), rtol=1e-12)
    n32, s32, d32, c32 = kl_block(W, Xin, H)
    n64, s64, d64, c64 = kl_block(W64, X64, H64)
    assert n32.dtype == s32.dtype == np.float64
    np.testing.assert_allclose(s32, s64, rtol=1e-12)
    np.testing.assert_allclose(n32, n64, rtol=1e-6)  # the ratio itself is float32
    assert d32 == pytest.approx(d64, rel=1e-5) and c32 == pytest.approx(c64, rel=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4, 6])
@pytest.mark.parametrize("route", ["subsets", "pivoting"])
def test_small_rank_exact_routes_both_equal_scipy_nnls(monkeypatch, k, route):
    """Up to ENUMERATE_MAX_K the shared-Gram solve tries every passive set; pivoting must
    stay exact too (it serves larger k, per-column Grams and the columns the subsets fail)."""
    import scalenmf.kernels.nnls as nnls_module

    if route == "pivoting":
        monkeypatch.setattr(nnls_module, "ENUMERATE_MAX_K", 0)
    rng = np.random.default_rng(10 + k)
    A = rng.standard_normal((30, k)) + 0.3
    Y = rng.standard_normal((30, 50))
    X, info = nnls_bpp(A.T @ A, A.T @ Y)
    assert info.converged
    np.testing.assert_allclose(X, nnls_reference(A, Y), rtol=1e-9, atol=1e-10)


def test_subsets_route_hands_a_singular_gram_to_pivoting():
    """Two equal basis columns make some subset systems singular: the answer must still
    reach the NNLS optimum (its objective; x itself is not unique)."""
    rng = np.random.default_rng(3)
    A = rng.random((20, 4))
    A[:, 3] = A[:, 0]
    Y = rng.random((20, 25))
    G, B = A.T @ A, A.T @ Y
    X, _ = nnls_bpp(G, B)
    ref = nnls_reference(A[:, :3], Y)
    assert (X >= 0).all()
    got = 0.5 * np.sum((A @ X - Y) ** 2, axis=0)
    want = 0.5 * np.sum((A[:, :3] @ ref - Y) ** 2, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_subsets_route_batches_fits_and_penalties():
    rng = np.random.default_rng(8)
    bases = [rng.random((25, 3)) for _ in range(3)]
    Y = rng.random((25, 40))
    G = np.stack([A.T @ A for A in bases])
    B = np.stack([A.T @ Y for A in bases])
    X, info = nnls_bpp(G, B, l1=0.05, l2=0.1)
    assert info.converged
    for r, A in enumerate(bases):
        ref = nnls_reference(A, Y, l1=0.05, l2=0.1)
        np.testing.assert_allclose(X[r], ref, rtol=1e-8, atol=1e-9)


def test_subsets_route_keeps_padding_coordinates_at_zero():
    """Rank surveys pad smaller ranks with zero basis columns: those coordinates stay 0 and
    the others are the NNLS answer of the live basis alone."""
    rng = np.random.default_rng(12)
    A = rng.random((30, 5))
    A[:, [1, 4]] = 0.0  # two padding columns
    Y = rng.random((30, 40))
    X, info = nnls_bpp(np.stack([A.T @ A, A.T @ A]), np.stack([A.T @ Y, A.T @ Y]))
    assert info.converged
    assert (X[:, [1, 4]] == 0).all()
    live = nnls_reference(A[:, [0, 2, 3]], Y)
    for r in range(2):
        np.testing.assert_allclose(X[r][[0, 2, 3]], live, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("n", [6, 200])
def test_subsets_route_with_warm_starts_equals_scipy_nnls(n):
    """Warm-started solves invert only the warm sets that occur when the columns are few
    (n < 2^k·2) and every set otherwise; a warm start that is wrong for some columns (here
    a perturbed answer, some of its zeros flipped) must still give the exact answer, with
    padding coordinates held at 0."""
    rng = np.random.default_rng(40 + n)
    k = 6
    bases = [rng.random((30, k)) for _ in range(3)]
    bases[2][:, 5] = 0.0  # a padded rank
    Y = rng.random((30, n))
    G = np.stack([A.T @ A for A in bases])
    B = np.stack([A.T @ Y for A in bases])
    exact, _ = nnls_bpp(G, B)
    warm = exact * rng.uniform(0.5, 1.5, exact.shape)
    flip = rng.random(exact.shape) < 0.2
    warm[flip] = np.where(warm[flip] > 0, 0.0, 1.0)
    X, info = nnls_bpp(G, B, warm)
    assert info.converged
    assert (X[2, 5] == 0).all()
    for r, A in enumerate(bases):
        live = [0, 1, 2, 3, 4] if r == 2 else list(range(k))
        ref = nnls_reference(A[:, live], Y)
        np.testing.assert_allclose(X[r][live], ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sparse", [False, True])
def test_kl_row_hessians_equal_the_rows_second_derivatives(sparse):
    """Row i's Hessian of D(X ‖ WH) in w_i is Σ_j x_ij / (w_iᵀh_j)² h_j h_jᵀ: checked
    against a central difference of the row's gradient, dense and sparse alike."""
    from scalenmf.kernels.mu import kl_row_hessians

    rng = np.random.default_rng(4)
    W, H = rng.gamma(1.0, 1.0, (7, 3)), rng.gamma(1.0, 1.0, (3, 25))
    X = rng.poisson(W @ H).astype(float)
    Q = kl_row_hessians(W, sp.csc_matrix(X) if sparse else X, H)
    assert Q.shape == (7, 3, 3)
    np.testing.assert_allclose(Q, Q.transpose(0, 2, 1), rtol=1e-12)

    def grad(w: np.ndarray, i: int) -> np.ndarray:
        return H.sum(axis=1) - H @ (X[i] / (w @ H))

    step = 1e-6
    for i in range(7):
        numeric = np.stack(
            [(grad(W[i] + step * e, i) - grad(W[i] - step * e, i)) / (2 * step) for e in np.eye(3)]
        )
        np.testing.assert_allclose(Q[i], numeric, rtol=1e-5, atol=1e-8)
    if sparse:
        np.testing.assert_allclose(Q, kl_row_hessians(W, X, H), rtol=1e-12)
