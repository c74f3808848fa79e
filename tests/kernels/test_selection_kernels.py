"""Batched NNLS / MU kernels against the single-fit kernels, and counter-based randomness."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scalenmf.kernels import mu_frobenius, nnls_bpp, nnls_cd, wh_at
from scalenmf.kernels.batched import outer_rows, quad_form, removed_grams
from scalenmf.kernels.hashing import (
    column_permutation,
    heldout_pattern,
    permute_columns_dense,
    permute_columns_sparse,
)


def _problem(R: int, k: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = rng.random((R, 20, k))
    G = np.einsum("rmk,rml->rkl", A, A)
    B = np.einsum("rmk,rmn->rkn", A, rng.random((R, 20, n)))
    return G, B


def _objective(G, B, X):
    return 0.5 * np.einsum("kn,kl,ln->", X, G, X) - np.sum(B * X)


def test_batched_cd_equals_single_fit_cd_at_convergence():
    G, B = _problem(3, 4, 50)
    X = nnls_cd(G, B, max_sweeps=500, tol=1e-12)[0]
    for r in range(3):
        ref, _ = nnls_cd(G[r], B[r], max_sweeps=500, tol=1e-12)
        np.testing.assert_allclose(X[r], ref, atol=1e-8)
        assert (X[r] >= 0).all()


def test_per_column_grams_equal_to_shared_ones_give_the_same_answer():
    G, B = _problem(2, 3, 30, seed=1)
    shared = nnls_cd(G, B, max_sweeps=3, tol=0.0)[0]
    per_col = np.broadcast_to(G[:, None], (2, 30, 3, 3)).copy()
    np.testing.assert_allclose(nnls_cd(per_col, B, max_sweeps=3, tol=0.0)[0], shared)
    X0 = np.ones((2, 3, 30))
    mu = mu_frobenius(G, B, X0)
    np.testing.assert_allclose(mu_frobenius(per_col, B, X0), mu)
    for r in range(2):
        np.testing.assert_allclose(mu[r], mu_frobenius(G[r], B[r], X0[r]))


def test_every_sweep_and_mu_step_lowers_every_objective():
    G, B = _problem(4, 5, 40, seed=2)
    X = np.full((4, 5, 40), 0.5)
    for _ in range(5):
        for step in (
            lambda X: nnls_cd(G, B, X, max_sweeps=1, tol=0.0, l1=0.1, l2=0.2)[0],
            lambda X: mu_frobenius(G, B, X, l1=0.1, l2=0.2),
        ):
            new = step(X)
            for r in range(4):
                assert _objective(G[r], B[r], new[r]) <= _objective(G[r], B[r], X[r]) + 1e-9
            X = new


def test_removed_grams_remove_exactly_the_missing_rows():
    rng = np.random.default_rng(3)
    W = rng.random((12, 3))
    miss = sp.csc_matrix(rng.random((12, 7)) < 0.3)
    G = W.T @ W - removed_grams(miss, W)
    for j in range(7):
        keep = ~miss[:, j].toarray().ravel()
        np.testing.assert_allclose(G[j], W[keep].T @ W[keep])
    assert outer_rows(W).shape == (12, 9)
    H = rng.random((3, 7))
    ref = sum(H[:, j] @ G[j] @ H[:, j] for j in range(7))
    np.testing.assert_allclose(quad_form(G[None], H[None])[0], ref)
    rows, cols = miss.indices, np.repeat(np.arange(7), np.diff(miss.indptr))
    np.testing.assert_allclose(wh_at(W, H, miss), (W @ H)[rows, cols])


@pytest.mark.parametrize("m", [1, 2, 7, 96, 1000])
def test_column_permutations_are_permutations(m):
    for col in (0, 5, 123456):
        p = column_permutation(9, m, np.arange(m), np.full(m, col))
        assert sorted(p.tolist()) == list(range(m))


def test_permuting_is_blocking_independent_and_dense_equals_sparse():
    rng = np.random.default_rng(4)
    X = rng.random((30, 50)) * (rng.random((30, 50)) < 0.4)
    whole = permute_columns_dense(X, 3, 0)
    parts = np.hstack(
        [permute_columns_dense(X[:, :17], 3, 0), permute_columns_dense(X[:, 17:], 3, 17)]
    )
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(permute_columns_sparse(sp.csc_matrix(X), 3, 0).toarray(), whole)
    np.testing.assert_allclose(np.sort(whole, axis=0), np.sort(X, axis=0))
    assert not np.array_equal(whole, X)


def test_heldout_pattern_is_blocking_independent_with_the_asked_density():
    whole = heldout_pattern(5, 0.1, 40, 0, 3000)
    parts = sp.hstack(
        [heldout_pattern(5, 0.1, 40, 0, 1234), heldout_pattern(5, 0.1, 40, 1234, 3000)]
    )
    assert (whole.astype(int) - parts.astype(int)).nnz == 0
    assert abs(whole.nnz / (40 * 3000) - 0.1) < 0.01
    assert (heldout_pattern(6, 0.1, 40, 0, 3000).astype(int) - whole.astype(int)).nnz > 0


def test_batched_bpp_is_exact_warm_or_cold_shared_or_per_column():

    rng = np.random.default_rng(5)
    A = rng.random((3, 30, 5))
    G = np.einsum("rmk,rml->rkl", A, A)
    B = np.einsum("rmk,rmn->rkn", A, rng.random((3, 30, 80)) - 0.3)
    X = nnls_bpp(G, B, l1=0.05, l2=0.1)[0]
    for r in range(3):
        np.testing.assert_allclose(X[r], nnls_bpp(G[r], B[r], l1=0.05, l2=0.1)[0], atol=1e-10)
    np.testing.assert_allclose(nnls_bpp(G, B, X + 0.5, l1=0.05, l2=0.1)[0], X, atol=1e-10)
    per_col = np.broadcast_to(G[:, None], (3, 80, 5, 5)).copy()
    np.testing.assert_allclose(nnls_bpp(per_col, B, l1=0.05, l2=0.1)[0], X, atol=1e-10)
    # A zero column of W (padding) keeps its coefficient at 0.
    A[:, :, -1] = 0
    G0 = np.einsum("rmk,rml->rkl", A, A)
    B0 = np.einsum("rmk,rmn->rkn", A, rng.random((3, 30, 80)))
    X0 = nnls_bpp(G0, B0)[0]
    assert np.all(X0[:, -1] == 0) and np.all(X0 >= 0)
    ref = nnls_cd(G0, B0, max_sweeps=5000, tol=1e-15)[0]
    np.testing.assert_allclose(X0, ref, atol=1e-8)


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.5)])
def test_masked_h_step_solves_the_observed_rows_exactly(l1, l2):
    """Per-column Grams from the missing pattern, through both solvers: every column is
    the NNLS of its observed rows alone (scipy), with padding (a zero factor) kept 0."""
    from scipy.optimize import nnls

    from scalenmf.kernels import nnls_bpp, nnls_cd

    rng = np.random.default_rng(6)
    m, k, n = 30, 4, 25
    W = rng.random((m, k))
    W[:, 3] = 0.0  # padding
    X = rng.random((m, n)) * 3
    miss = sp.csc_matrix(rng.random((m, n)) < 0.3)
    Xobs = np.where(miss.toarray(), 0.0, X)
    G = (W.T @ W - removed_grams(miss, W))[None]  # (1, n, k, k)
    B = (W.T @ Xobs)[None]
    exact, info = nnls_bpp(G, B, l1=l1, l2=l2)
    cd, info_cd = nnls_cd(G, B, l1=l1, l2=l2, max_sweeps=3000, tol=1e-12, finish=True)
    assert info.converged and info_cd.converged
    for j in range(n):
        o = ~miss[:, j].toarray().ravel()
        A = np.vstack([W[o][:, :3], np.sqrt(l2) * np.eye(3)])
        y = np.concatenate([X[o, j], np.zeros(3)])
        shift = A @ np.linalg.solve(A.T @ A, np.full(3, l1))
        ref = nnls(A, y - shift)[0]
        np.testing.assert_allclose(exact[0, :3, j], ref, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(cd[0, :3, j], ref, rtol=1e-8, atol=1e-10)
    assert np.all(exact[0, 3] == 0) and np.all(cd[0, 3] == 0)
