"""Fits with missing values: masked entries never influence the fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.io.errors import InputError
from tests.conftest import make_counts

SOLVERS = [("als", "frobenius"), ("hals", "frobenius"), ("mu", "frobenius"), ("mu", "kl")]


def _fit(X, mask, solver, loss, **kw):
    kw.setdefault("max_iter", 25)
    kw.setdefault("tol", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return scalenmf.nmf(
            X, 3, solver=solver, loss=loss, mask=mask, seed=4, n_runs=2, block_cols=17, **kw
        )


@pytest.fixture(scope="module")
def data():
    X = make_counts(25, 60, seed=3)
    rng = np.random.default_rng(9)
    M = rng.random(X.shape) < 0.2
    return X, M


@pytest.mark.parametrize(("solver", "loss"), SOLVERS)
def test_changing_masked_entries_does_not_change_the_fit(data, solver, loss):
    X, M = data
    a = _fit(X, M, solver, loss)
    X2 = X.copy()
    X2[M] = np.random.default_rng(1).random(M.sum()) * 1e3
    b = _fit(X2, M, solver, loss)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.H, b.H)
    assert a.loss_history == b.loss_history
    # NaN means missing: the same fit from NaN entries.
    X3 = X.copy()
    X3[M] = np.nan
    c = _fit(X3, "nan", solver, loss)
    np.testing.assert_allclose(c.W, a.W, rtol=1e-12, atol=1e-12)
    assert a.info["n_missing"] == int(M.sum())


@pytest.mark.parametrize(("solver", "loss"), SOLVERS)
def test_masked_loss_never_rises_and_factors_stay_nonnegative(data, solver, loss):
    X, M = data
    res = _fit(X, M, solver, loss, l1_h=0.1, l2_w=0.1)
    hist = np.array(res.loss_history)
    assert (np.diff(hist) <= 1e-10 * np.abs(hist[:-1])).all()
    assert (res.W >= 0).all() and (res.H >= 0).all()


@pytest.mark.parametrize(("solver", "loss"), SOLVERS)
def test_masked_dense_equals_sparse(data, solver, loss):
    X, M = data
    dense = _fit(X, M, solver, loss)
    sparse = _fit(sp.csc_matrix(X), sp.csc_matrix(M), solver, loss)
    np.testing.assert_allclose(sparse.W, dense.W, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(sparse.H, dense.H, rtol=1e-9, atol=1e-11)


def test_empty_mask_gives_an_unmasked_fit(data):
    X, _ = data
    masked = _fit(X, np.zeros(X.shape, bool), "hals", "frobenius")
    assert masked.info["n_missing"] == 0
    # The masked objective equals the plain one when nothing is missing.
    W, H = masked.W, masked.H
    assert masked.loss_history[-1] == pytest.approx(0.5 * np.sum((X - W @ H) ** 2), rel=1e-10)


def test_masked_objective_counts_only_observed_entries(data):
    X, M = data
    res = _fit(X, M, "als", "frobenius")
    R = (X - res.W @ res.H)[~M]
    assert res.loss_history[-1] == pytest.approx(0.5 * float(R @ R), rel=1e-9)
    assert res.relative_error == pytest.approx(np.linalg.norm(R) / np.linalg.norm(X[~M]))


def test_float32_close_to_float64(data):
    X, M = data
    a = _fit(X, M, "hals", "frobenius", max_iter=10)
    b = _fit(X.astype(np.float32), M, "hals", "frobenius", max_iter=10)
    assert b.W.dtype == np.float32
    assert b.loss_history[-1] == pytest.approx(a.loss_history[-1], rel=1e-3)


def test_bad_masks_are_clear_errors(data, tmp_path):
    X, M = data
    with pytest.raises(InputError, match="mask has shape"):
        scalenmf.nmf(X, 3, mask=M[:, :10])
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(InputError, match="mask='nan'"):
        scalenmf.nmf(Xn, 3)
    with pytest.raises(InputError, match="no such file"):
        scalenmf.nmf(X, 3, mask=str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="solver"):
        scalenmf.nmf(X, 3, mask=M, solver="hals", loss="kl")


def test_masked_als_reaches_the_same_fit_with_either_nnls(data):
    # Pivoting is exact; coordinate descent meets the KKT conditions to 1e-4 per column.
    X, M = data
    a = _fit(X, M, "als", "frobenius", nnls="bpp", max_iter=200, tol=1e-9)
    b = _fit(X, M, "als", "frobenius", nnls="cd", max_iter=200, tol=1e-9)
    assert b.loss_history[-1] == pytest.approx(a.loss_history[-1], rel=1e-4)


def test_a_mask_that_hides_nothing_gives_the_unmasked_fit_bit_for_bit():
    rng = np.random.default_rng(3)
    X = rng.poisson(4.0, size=(30, 90)).astype(float)
    nothing = np.zeros(X.shape, dtype=bool)
    for solver, loss, nnls in [
        ("als", "frobenius", "cd"),
        ("als", "frobenius", "bpp"),
        ("hals", "frobenius", "cd"),
        ("mu", "frobenius", "cd"),
        ("mu", "kl", "cd"),
    ]:
        opts = dict(solver=solver, loss=loss, nnls=nnls, n_runs=2, max_iter=15, seed=4)
        plain = scalenmf.nmf(X, 3, **opts)
        for mask in (nothing, sp.csc_matrix(nothing.astype(float))):
            masked = scalenmf.nmf(X, 3, mask=mask, **opts)
            np.testing.assert_array_equal(masked.W, plain.W)
            np.testing.assert_array_equal(masked.H, plain.H)
            assert masked.loss_history == plain.loss_history


def test_mask_from_a_file(data, tmp_path):
    X, M = data
    np.save(tmp_path / "mask.npy", M.astype(np.uint8))
    a = _fit(X, str(tmp_path / "mask.npy"), "hals", "frobenius")
    b = _fit(X, M, "hals", "frobenius")
    np.testing.assert_array_equal(a.W, b.W)
