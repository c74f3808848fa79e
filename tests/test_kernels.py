"""Block kernels against slow, obvious references kept here (scipy's NNLS, explicit loops)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

from scalenmf.kernels import (
    bpp_nnls,
    cd_nnls,
    gram,
    hals_sweep,
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
    X, sweeps = cd_nnls(G, B, l1=l1, l2=l2, max_sweeps=20000, tol=1e-13)
    assert sweeps < 20000, "coordinate descent did not reach its tolerance"
    np.testing.assert_allclose(X, ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("l1,l2", PENALTIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bpp_nnls_equals_scipy_nnls(seed, l1, l2):
    A, Y, G, B = nnls_problem(seed)
    ref = nnls_reference(A, Y, l1, l2)
    X = bpp_nnls(G, B, l1=l1, l2=l2)
    np.testing.assert_allclose(X, ref, rtol=1e-9, atol=1e-11)


def test_nnls_warm_start_and_large_l1_zero_everything():
    A, Y, G, B = nnls_problem(5)
    ref = nnls_reference(A, Y)
    warm = np.abs(np.random.default_rng(0).standard_normal(ref.shape))
    X, _ = cd_nnls(G, B, warm, max_sweeps=20000, tol=1e-13)
    np.testing.assert_allclose(X, ref, rtol=1e-7, atol=1e-9)
    big = float(np.abs(B).max()) + 1.0  # l1 above every |b_i|: x = 0 is optimal
    assert not cd_nnls(G, B, warm, l1=big, max_sweeps=500, tol=1e-12)[0].any()
    assert not bpp_nnls(G, B, l1=big).any()


def test_bpp_nnls_singular_gram_reaches_the_nnls_optimum():
    """A repeated column makes G singular: the solution is not unique, the optimum is."""
    A, Y, _, _ = nnls_problem(3)
    A = np.column_stack([A, A[:, 0]])
    G, B = A.T @ A, A.T @ Y
    ref = nnls_reference(A[:, :-1], Y)
    X = bpp_nnls(G, B)
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
        before = X.copy()
        change = hals_sweep(Gp, Bp, X)
        assert (X >= 0).all()
        assert change == pytest.approx(float(np.abs(X - before).max()))
        f_new = qp_objective(G, B, X, l1, l2)
        assert f_new <= f + 1e-12 * abs(f)
        f = f_new
    # The sweeps converge to the exact NNLS solution.
    np.testing.assert_allclose(X, nnls_reference(A, Y, l1, l2), rtol=1e-4, atol=1e-6)


def test_hals_sweep_zeroes_the_row_of_a_dead_basis_vector():
    A, Y, _, _ = nnls_problem(8)
    A[:, 2] = 0.0
    G, B = A.T @ A, A.T @ Y
    X = np.ones(B.shape)
    hals_sweep(G, B, X)
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
    assert cd_nnls(G32, B32, H32, l1=0.1, l2=0.1)[0].dtype == np.float32
    assert bpp_nnls(G32, B32, l1=0.1, l2=0.1).dtype == np.float32
    assert mu_frobenius(G32, B32, H32, l1=0.1, l2=0.1).dtype == np.float32
    assert mu_kl_h(W32, Xin, H32, l1=0.1, l2=0.1).dtype == np.float32
    Hs = H32.copy()
    hals_sweep(G32, B32, Hs)
    assert Hs.dtype == np.float32
    # Statistics accumulate in float64 by contract (loss bookkeeping keeps its precision).
    assert gram(W32).dtype == np.float64
    assert x_ht(Xin, H32).dtype == np.float64
    numer, hsum, div, _ = kl_block(W32, Xin, H32)
    assert numer.dtype == np.float64 and hsum.dtype == np.float64
    # And float32 agrees with float64 to float32 precision.
    np.testing.assert_allclose(bpp_nnls(G32, B32), bpp_nnls(W.T @ W, W.T @ V), rtol=1e-3, atol=1e-4)
    assert div == pytest.approx(kl_divergence(V, W, H), rel=1e-5)
