"""Properties of ``scalenmf.nmf`` on tiny seeded data, checked against direct dense math."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

import scalenmf
from scalenmf import ConvergenceWarning, InputError
from tests.conftest import make_counts

#: (solver, loss, nnls): every solver × loss the engine offers.
METHODS = [
    ("als", "frobenius", "cd"),
    ("als", "frobenius", "bpp"),
    ("hals", "frobenius", "cd"),
    ("mu", "frobenius", "cd"),
    ("mu", "kl", "cd"),
]
PENALTIES = {
    "none": {},
    "l1": {"l1_w": 0.5, "l1_h": 0.3},
    "l2": {"l2_w": 0.8, "l2_h": 0.4},
    "all": {"l1_w": 0.2, "l1_h": 0.6, "l2_w": 1.0, "l2_h": 0.5},
}
ROUNDOFF = 1e-10


def method_id(method: tuple[str, str, str]) -> str:
    solver, loss, nnls = method
    return f"{solver}-{loss}" + ("-bpp" if nnls == "bpp" else "")


def fit(X, k, method=("hals", "frobenius", "cd"), **kwargs):
    solver, loss, nnls = method
    kwargs.setdefault("tol", 0.0)
    kwargs.setdefault("max_iter", 40)
    return scalenmf.nmf(X, k, solver=solver, loss=loss, nnls=nnls, **kwargs)


def direct_objective(X, W, H, loss, l1_w=0.0, l1_h=0.0, l2_w=0.0, l2_h=0.0) -> float:
    """The objective of the docstring of ``scalenmf.models.nmf``, computed densely."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    W, H = W.astype(np.float64), H.astype(np.float64)
    WH = W @ H
    if loss == "kl":
        with np.errstate(divide="ignore", invalid="ignore"):
            xlog = np.where(X > 0, X * np.log(X / WH), 0.0)
        data = float(xlog.sum() - X.sum() + WH.sum())
    else:
        data = 0.5 * float(np.sum((X - WH) ** 2))
    penalty = l1_w * W.sum() + l1_h * H.sum() + 0.5 * (l2_w * np.sum(W * W) + l2_h * np.sum(H * H))
    return data + float(penalty)


def direct_relative_error(X, W, H) -> float:
    X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    return float(
        np.linalg.norm(X - W.astype(np.float64) @ H.astype(np.float64)) / np.linalg.norm(X)
    )


def assert_close_factors(a, b, rtol):
    """Factors agree to ``rtol`` of their largest entry (entries near 0 are compared absolutely)."""
    for A, B in ((a.W, b.W), (a.H, b.H)):
        np.testing.assert_allclose(A, B, rtol=rtol, atol=rtol * float(np.abs(A).max()))


# -- the objective and the returned pair ----------------------------------------------------


@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("method", METHODS, ids=method_id)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_objective_never_rises_and_describes_the_returned_factors(
    counts_dense, counts_sparse, method, penalty, sparse
):
    X = counts_sparse if sparse else counts_dense
    pen = PENALTIES[penalty]
    res = fit(X, 4, method, max_iter=30, block_cols=[17, 25, 18], **pen)
    hist = np.asarray(res.loss_history)
    assert len(hist) == res.n_iter == 30
    rises = np.diff(hist) / np.abs(hist[:-1])
    assert rises.max() <= ROUNDOFF, f"objective rose by {rises.max():.3g} (relative)"
    assert hist[-1] < hist[0]
    assert (res.W >= 0).all() and (res.H >= 0).all()
    assert np.isfinite(res.W).all() and np.isfinite(res.H).all()
    # The pair returned is exactly the pair last scored (a design guarantee).
    f = direct_objective(X, res.W, res.H, method[1], **pen)
    assert res.loss_history[-1] == pytest.approx(f, rel=1e-10)
    assert res.loss == res.loss_history[-1]
    assert res.relative_error == pytest.approx(
        direct_relative_error(X, res.W, res.H), rel=1e-9, abs=1e-12
    )


def test_objective_never_rises_with_more_runs_than_blocks_and_restarts(counts_dense):
    """Several restarts share each read of X; each keeps its own monotone history."""
    res = fit(counts_dense, 3, ("mu", "kl", "cd"), n_runs=3, max_iter=25, l1_h=0.1)
    assert len(res.runs) == 3
    hist = np.asarray(res.loss_history)
    assert (np.diff(hist) / np.abs(hist[:-1])).max() <= ROUNDOFF


# -- dense == sparse, float32 ≈ float64 -------------------------------------------------------


@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_dense_equals_sparse(counts_dense, counts_sparse, method):
    a = fit(counts_dense, 4, method, max_iter=50, block_cols=[17, 25, 18], l1_h=0.1, l2_w=0.2)
    b = fit(counts_sparse, 4, method, max_iter=50, block_cols=[17, 25, 18], l1_h=0.1, l2_w=0.2)
    # HALS sweeps a fixed number of times and MU takes one step: dense and sparse differ
    # only by the summation order of WᵀX, so they agree to round-off. ALS with coordinate
    # descent stops sweeping when the largest change falls below a relative threshold; a
    # last-bit difference can move a block across that threshold, costing or saving a
    # sweep, so its results may differ by about that threshold (1e-4), not by round-off.
    rtol = 1e-3 if method == ("als", "frobenius", "cd") else 1e-8
    assert_close_factors(a, b, rtol)
    np.testing.assert_allclose(a.loss_history, b.loss_history, rtol=rtol)


@pytest.mark.parametrize("method", METHODS, ids=method_id)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_float32_close_to_float64(counts_dense, counts_sparse, method, sparse):
    X = counts_sparse if sparse else counts_dense
    a = fit(X, 3, method, max_iter=30)
    b = fit(X, 3, method, max_iter=30, dtype="float32")
    c = fit(X.astype(np.float32), 3, method, max_iter=30)
    assert a.W.dtype == np.float64 and a.H.dtype == np.float64
    for r in (b, c):
        assert r.W.dtype == np.float32 and r.H.dtype == np.float32
        assert_close_factors(a, r, 1e-3)
        np.testing.assert_allclose(r.loss_history, a.loss_history, rtol=1e-4)
        assert r.relative_error == pytest.approx(a.relative_error, rel=1e-4)


@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_float32_fits_keep_their_books_in_float64(method):
    # A near-exact factorization: the Gram trick subtracts numbers of the size of ‖X‖², so
    # float32 sums would report 0 or noise here; the figures must match a direct float64
    # computation from the returned factors.
    rng = np.random.default_rng(0)
    X = (rng.random((50, 3)) @ rng.random((3, 400))).astype(np.float32)
    res = fit(X, 3, method, max_iter=60, tol=0)
    W, H = res.W.astype(np.float64), res.H.astype(np.float64)
    X64 = X.astype(np.float64)
    truth = np.linalg.norm(X64 - W @ H) / np.linalg.norm(X64)
    assert res.W.dtype == np.float32
    assert truth < 0.05
    assert res.relative_error == pytest.approx(truth, rel=1e-4)
    if method[1] == "frobenius":
        assert res.loss_history[-1] == pytest.approx(0.5 * np.sum((X64 - W @ H) ** 2), rel=1e-4)


# -- seeds and restarts ---------------------------------------------------------------------


@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_same_seed_same_result(counts_dense, init):
    a = fit(counts_dense, 3, init=init, seed=7, n_runs=2)
    b = fit(counts_dense, 3, init=init, seed=7, n_runs=2)
    assert np.array_equal(a.W, b.W) and np.array_equal(a.H, b.H)
    assert a.loss_history == b.loss_history and a.runs == b.runs


def test_different_seed_different_random_start(counts_dense):
    a = fit(counts_dense, 3, init="random", seed=1, max_iter=5)
    b = fit(counts_dense, 3, init="random", seed=2, max_iter=5)
    assert not np.allclose(a.W, b.W)


@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_best_of_n_runs_is_kept(counts_dense, method):
    # tol > 0: the runs stop at different iterations, and the kept pair must still be the
    # one its last objective describes.
    res = fit(counts_dense, 4, method, n_runs=4, seed=3, init="random", tol=1e-3, max_iter=400)
    objectives = [r["objective"] for r in res.runs]
    assert len(set(objectives)) > 1, "restarts should end at different objectives"
    assert res.loss_history[-1] == min(objectives)
    best = res.runs[int(np.argmin(objectives))]
    assert res.n_iter == best["n_iter"] and res.relative_error == best["relative_error"]
    assert res.loss_history[-1] == pytest.approx(
        direct_objective(counts_dense, res.W, res.H, method[1]), rel=1e-10
    )
    single = fit(counts_dense, 4, method, n_runs=1, seed=3, init="random", tol=1e-3, max_iter=400)
    assert res.loss_history[-1] <= single.loss_history[-1]


# -- convergence and callbacks --------------------------------------------------------------


def test_converges_with_a_loose_tol(counts_dense):
    tol = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = fit(counts_dense, 3, tol=tol, max_iter=500)
    assert res.converged and res.n_iter < 500
    hist = res.loss_history
    assert (hist[-2] - hist[-1]) <= tol * abs(hist[-2])
    assert all((hist[i - 1] - hist[i]) > tol * abs(hist[i - 1]) for i in range(1, len(hist) - 1))


def test_warns_when_max_iter_comes_first(counts_dense):
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        res = fit(counts_dense, 3, tol=1e-12, max_iter=3)
    assert not res.converged and res.n_iter == 3 and len(res.loss_history) == 3


def test_tol_zero_runs_max_iter_without_warning(counts_dense):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = fit(counts_dense, 3, tol=0.0, max_iter=7)
    assert res.n_iter == 7 and not res.converged


def test_callback_called_every_iteration(counts_dense):
    infos = []
    res = fit(counts_dense, 3, max_iter=12, callback=infos.append)
    assert [i.iteration for i in infos] == list(range(1, 13))
    assert [i.objectives[0] for i in infos] == res.loss_history
    assert infos[-1].relative_errors[0] == res.relative_error
    assert all(isinstance(i, scalenmf.IterationInfo) for i in infos)
    elapsed = [i.elapsed_s for i in infos]
    assert elapsed == sorted(elapsed)


# -- recovery -------------------------------------------------------------------------------


def planted(m=40, n=120, k=3, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (m, k))
    W[rng.random((m, k)) < 0.4] = 0.0  # distinct supports: an essentially unique NMF
    H = rng.gamma(1.0, 1.0, (k, n))
    H[rng.random((k, n)) < 0.3] = 0.0
    return W, H


def matched_cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosines of the columns of A and B under the best one-to-one matching."""
    An = A / np.linalg.norm(A, axis=0)
    Bn = B / np.linalg.norm(B, axis=0)
    cos = An.T @ Bn
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols]


@pytest.mark.parametrize(
    "method", [("als", "frobenius", "cd"), ("hals", "frobenius", "cd")], ids=method_id
)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_recovers_planted_factors(method, sparse):
    W0, H0 = planted()
    X = W0 @ H0
    res = fit(sp.csc_matrix(X) if sparse else X, 3, method, max_iter=1000, tol=1e-10)
    assert res.relative_error < 1e-3
    assert matched_cosines(res.W, W0).min() > 0.95
    assert matched_cosines(res.H.T, H0.T).min() > 0.95


def test_recovers_planted_factors_under_kl():
    W0, H0 = planted(seed=1)
    res = fit(W0 @ H0, 3, ("mu", "kl", "cd"), max_iter=1500, tol=1e-10)
    assert res.relative_error < 0.02
    assert matched_cosines(res.W, W0).min() > 0.95
    assert matched_cosines(res.H.T, H0.T).min() > 0.95


def test_noisy_low_rank_fits_well():
    X = make_counts(40, 100, k=3, seed=4)
    res = fit(X, 3, max_iter=200)
    # Poisson noise on means of about 6: the rank-3 fit cannot do much better than the noise.
    noise = np.sqrt(X.mean()) / np.sqrt((X**2).mean())
    assert res.relative_error < 1.5 * noise


# -- initialisations ------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["nndsvd", "nndsvda", "random"])
@pytest.mark.parametrize("k", [1, 5, 8], ids=["k=1", "k=5", "k=min"])
@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_inits_and_extreme_ranks(method, init, k):
    X = make_counts(8, 15, k=3, seed=5, zeros=0.2)  # min(m, n) = 8
    res = fit(X, k, method, init=init, max_iter=15)
    assert res.W.shape == (8, k) and res.H.shape == (k, 15)
    assert np.isfinite(res.W).all() and np.isfinite(res.H).all()
    assert (res.W >= 0).all() and (res.H >= 0).all()
    hist = np.asarray(res.loss_history)
    assert (np.diff(hist) / np.abs(hist[:-1])).max() <= ROUNDOFF
    assert res.loss_history[-1] == pytest.approx(
        direct_objective(X, res.W, res.H, method[1]), rel=1e-10
    )
    if method[1] == "frobenius":
        assert res.relative_error < 1.0  # better than W·H = 0


def test_full_rank_fits_almost_exactly():
    X = make_counts(8, 15, k=3, seed=6) + 1.0
    res = fit(X, 8, ("hals", "frobenius", "cd"), max_iter=2000, tol=1e-12)
    assert res.relative_error < 0.05


def test_nndsvd_start_is_better_than_random(counts_dense):
    a = fit(counts_dense, 4, init="nndsvda", max_iter=1)
    b = fit(counts_dense, 4, init="random", max_iter=1)
    assert a.loss_history[0] < b.loss_history[0]


# -- bad input ------------------------------------------------------------------------------

GOOD = make_counts(6, 9, seed=8)


def with_value(value):
    X = GOOD.copy()
    X[2, 3] = value
    return X


BAD_INPUTS = [
    ("negative", lambda: with_value(-1.0), 2, {}, InputError, "negative"),
    ("negative-sparse", lambda: sp.csc_matrix(with_value(-1.0)), 2, {}, InputError, "negative"),
    ("nan", lambda: with_value(np.nan), 2, {}, InputError, "NaN"),
    ("nan-sparse", lambda: sp.csc_matrix(with_value(np.nan)), 2, {}, InputError, "NaN"),
    ("inf", lambda: with_value(np.inf), 2, {}, InputError, "infinite"),
    ("inf-random-init", lambda: with_value(np.inf), 2, {"init": "random"}, InputError, "infinite"),
    ("all-zero", lambda: np.zeros((6, 9)), 2, {}, InputError, "all zeros"),
    ("all-zero-random", lambda: np.zeros((6, 9)), 2, {"init": "random"}, InputError, "all zeros"),
    ("all-zero-sparse", lambda: sp.csc_matrix((6, 9)), 2, {}, InputError, "all zeros"),
    ("empty-rows", lambda: np.zeros((0, 9)), 1, {}, InputError, "empty"),
    ("empty-cols", lambda: np.zeros((6, 0)), 1, {}, InputError, "empty"),
    ("1-d", lambda: np.ones(9), 1, {}, InputError, "2-D"),
    ("3-d", lambda: np.ones((2, 3, 4)), 1, {}, InputError, "2-D"),
    ("strings", lambda: np.array([["a", "b"], ["c", "d"]]), 1, {}, InputError, "numbers"),
    ("dict", lambda: {"X": GOOD}, 2, {}, TypeError, "X must be a path"),
    ("k=0", lambda: GOOD, 0, {}, ValueError, "k must be in"),
    ("k<0", lambda: GOOD, -2, {}, ValueError, "k must be in"),
    ("k>min", lambda: GOOD, 7, {}, ValueError, r"k must be between 1 and min\(m, n\) = 6"),
    ("k-float", lambda: GOOD, 2.0, {}, TypeError, "k must be an integer"),
    ("k-str", lambda: GOOD, "2", {}, TypeError, "k must be an integer"),
    ("solver", lambda: GOOD, 2, {"solver": "sgd"}, ValueError, "solver must be one of .*'sgd'"),
    ("loss", lambda: GOOD, 2, {"loss": "l1"}, ValueError, "loss must be one of .*'l1'"),
    ("init", lambda: GOOD, 2, {"init": "svd"}, ValueError, "init must be one of .*'svd'"),
    ("nnls", lambda: GOOD, 2, {"nnls": "lbfgs"}, ValueError, "nnls must be one of"),
    ("kl-als", lambda: GOOD, 2, {"loss": "kl", "solver": "als"}, ValueError, "solver='mu'"),
    ("kl-hals", lambda: GOOD, 2, {"loss": "kl", "solver": "hals"}, ValueError, "solver='mu'"),
    ("max_iter=0", lambda: GOOD, 2, {"max_iter": 0}, ValueError, "max_iter must be in"),
    ("max_iter-float", lambda: GOOD, 2, {"max_iter": 1.5}, TypeError, "max_iter must be an"),
    ("tol<0", lambda: GOOD, 2, {"tol": -1e-3}, ValueError, "tol must be in"),
    ("l1_w<0", lambda: GOOD, 2, {"l1_w": -1.0}, ValueError, "l1_w must be in"),
    ("l2_h-nan", lambda: GOOD, 2, {"l2_h": float("nan")}, ValueError, "l2_h must be finite"),
    ("l1_h-str", lambda: GOOD, 2, {"l1_h": "0.1"}, TypeError, "l1_h must be a number"),
    ("n_runs=0", lambda: GOOD, 2, {"n_runs": 0}, ValueError, "n_runs must be in"),
    ("seed-str", lambda: GOOD, 2, {"seed": "a"}, TypeError, "seed must be an integer"),
    ("dtype", lambda: GOOD, 2, {"dtype": "int32"}, ValueError, "dtype must be float32"),
    ("memory", lambda: GOOD, 2, {"memory_limit": "lots"}, ValueError, "memory_limit"),
    ("blocks", lambda: GOOD, 2, {"block_cols": [4, 4]}, ValueError, "X has 9 columns"),
]


@pytest.mark.parametrize(
    "make,k,kwargs,error,message",
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_errors_name_the_problem(make, k, kwargs, error, message):
    with pytest.raises(error, match=message):
        scalenmf.nmf(make(), k, **{"max_iter": 3, **kwargs})


def test_integer_counts_are_accepted_as_float64():
    res = scalenmf.nmf(GOOD.astype(np.int64), 2, max_iter=5, tol=0)
    ref = scalenmf.nmf(GOOD, 2, max_iter=5, tol=0)
    assert res.W.dtype == np.float64
    assert np.array_equal(res.W, ref.W) and np.array_equal(res.H, ref.H)


def test_convergence_warning_points_at_the_callers_line():
    """The warning names the user's file and line, not a line inside scalenmf."""
    X = make_counts(30, 20, 3, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scalenmf.nmf(X, 3, max_iter=2, tol=1e-12, progress=False)
        line = sys._getframe().f_lineno - 1
    [w] = [w for w in caught if issubclass(w.category, scalenmf.ConvergenceWarning)]
    assert (w.filename, w.lineno) == (__file__, line)
