"""``project``: exactness against scipy's NNLS, label alignment, QC, bootstrap, transfer."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment, nnls

import scalenmf
from scalenmf.io.matrix import as_source
from scalenmf.models.transfer import resample_block
from scalenmf.signatures import cosine_matrix, cosmic_reference


def make(seed: int = 0, m: int = 30, k: int = 4, n: int = 60, scale: float = 5.0):
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (m, k)) * (rng.random((m, k)) < 0.5) + 0.02
    H = rng.gamma(0.7, scale, (k, n))
    return W, rng.poisson(W @ H).astype(np.float64), H


def scipy_nnls(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.column_stack([nnls(W, X[:, j])[0] for j in range(X.shape[1])])


@pytest.mark.parametrize(
    "kwargs,rtol",
    [
        ({}, 1e-9),
        ({"nnls": "cd"}, 1e-7),
        ({"solver": "hals"}, 1e-7),
        ({"solver": "mu", "max_iter": 20000, "tol": 1e-13}, 1e-3),
    ],
    ids=["als-bpp", "als-cd", "hals", "mu"],
)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_project_equals_scipy_nnls_column_by_column(kwargs, rtol, sparse):
    W, X, _ = make()
    X[:, 5] = 0.0  # an empty sample
    ref = scipy_nnls(W, X)
    res = scalenmf.project(W, sp.csc_matrix(X) if sparse else X, block_cols=16, **kwargs)
    assert res.H.shape == ref.shape
    scale = np.abs(ref).max()
    np.testing.assert_allclose(res.H, ref, rtol=rtol, atol=rtol * scale)
    assert np.all(res.H[:, 5] == 0) and np.isnan(res.cosine[5]) and not res.novel[5]


@pytest.mark.parametrize("kernel", ["bpp", "cd"])
def test_column_kernels_are_exact_even_for_a_singular_gram(kernel):
    from scalenmf.kernels import gram, nnls_bpp, nnls_cd, rhs, unconstrained_start

    def nnls_columns(G, B, l1=0.0, tol=1e-10):
        start = unconstrained_start(G, B, l1=l1)
        return nnls_cd(G, B, start, l1=l1, max_sweeps=1000, tol=tol, finish=True)[0]

    W, X, _ = make(seed=13, k=5)
    W = np.c_[W, W[:, 0]]  # a repeated column: G is singular, the solution not unique
    G, B = gram(W), rhs(W, X)
    H = nnls_bpp(G, B)[0] if kernel == "bpp" else nnls_columns(G, B, tol=1e-13)
    assert H.min() >= 0
    ref = scipy_nnls(W, X)
    # Not unique, so compare the fits and the optimality conditions, not H itself.
    np.testing.assert_allclose(
        np.linalg.norm(X - W @ H, axis=0), np.linalg.norm(X - W @ ref, axis=0), rtol=1e-6
    )
    grad = G @ H - B
    assert grad.min() > -1e-6 * np.abs(B).max()
    assert np.abs(H * grad).max() < 1e-6 * np.abs(B).max() * max(1.0, H.max())
    l1 = nnls_bpp(G[:5, :5], B[:5], l1=2.0)[0]
    aug = nnls_columns(G[:5, :5], B[:5], l1=2.0, tol=1e-13)
    np.testing.assert_allclose(l1, aug, rtol=1e-6, atol=1e-6 * l1.max())


def test_l2_penalty_equals_nnls_on_the_augmented_system():
    W, X, _ = make(seed=2)
    l2 = 3.0
    aug_W = np.vstack([W, np.sqrt(l2) * np.eye(W.shape[1])])
    aug_X = np.vstack([X, np.zeros((W.shape[1], X.shape[1]))])
    res = scalenmf.project(W, X, l2_h=l2, nnls="bpp")
    np.testing.assert_allclose(res.H, scipy_nnls(aug_W, aug_X), rtol=1e-8, atol=1e-8)


def test_kl_projection_meets_the_kkt_conditions():
    W, X, _ = make(seed=3)
    res = scalenmf.project(W, sp.csc_matrix(X), loss="kl", max_iter=5000, tol=1e-12)
    WH = W @ res.H
    grad = W.T @ (1.0 - X / np.maximum(WH, 1e-12))  # ∂D/∂H
    active = res.H > 1e-3 * res.H.max()
    assert np.abs(grad[active]).max() < 1e-3 * np.abs(W.sum(axis=0)).max()
    assert grad[~active].min() > -1e-2


def test_dense_equals_sparse_and_executor_inputs(tmp_path: Path):
    W, X, _ = make(seed=4, n=90)
    dense = scalenmf.project(W, X, block_cols=25)
    sparse = scalenmf.project(W, sp.csc_matrix(X), block_cols=25)
    np.testing.assert_allclose(dense.H, sparse.H, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dense.cosine, sparse.cosine, rtol=1e-12)
    store = scalenmf.write_matrix(tmp_path / "x.zarr", sp.csc_matrix(X), block_cols=25)
    np.testing.assert_allclose(scalenmf.project(W, store).H, dense.H, rtol=1e-10, atol=1e-12)
    f32 = scalenmf.project(W, X.astype(np.float32))
    assert f32.H.dtype == np.float32
    np.testing.assert_allclose(f32.H, dense.H, rtol=1e-3, atol=1e-3 * dense.H.max())


# -- rows aligned by label --------------------------------------------------------------------


def test_96_channels_in_another_order_are_aligned_by_label():
    ref = cosmic_reference()
    names = list(ref.names)
    W = ref.matrix[:, [names.index(s) for s in ("SBS1", "SBS5", "SBS13", "SBS40a")]]
    rng = np.random.default_rng(7)
    X = rng.poisson(W @ rng.gamma(1.0, 300.0, (4, 40))).astype(float)
    base = scalenmf.project(W, X, row_labels=ref.channels)
    perm = rng.permutation(96)
    shuffled = as_source(X[perm]).set_labels(ref.channels[perm])
    res = scalenmf.project(W, shuffled, row_labels=ref.channels)
    np.testing.assert_allclose(res.H, base.H, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(res.row_labels, ref.channels)
    # Without labels on the data the rows are taken as they come — and fit badly.
    blind = scalenmf.project(W, X[perm], row_labels=ref.channels)
    assert np.nanmedian(blind.cosine) < np.nanmedian(res.cosine) - 0.1


def test_label_mismatches_are_clear_errors():
    ref = cosmic_reference()
    W = ref.matrix[:, :3]
    X = np.ones((96, 5))
    missing = as_source(X[:95]).set_labels(ref.channels[:95])
    with pytest.raises(scalenmf.InputError, match=r"1 of 96 features are missing.*T\[T>G\]T"):
        scalenmf.project(W, missing, row_labels=ref.channels)
    extra = as_source(np.ones((97, 5))).set_labels([*ref.channels, "DBS1"])
    with pytest.raises(scalenmf.InputError, match=r"1 features the reference does not know.*DBS1"):
        scalenmf.project(W, extra, row_labels=ref.channels)
    kept = scalenmf.project(W, extra, row_labels=ref.channels, drop_extra_features=True)
    assert kept.H.shape == (3, 5)
    dup = as_source(X).set_labels([*ref.channels[:95], ref.channels[0]])
    with pytest.raises(scalenmf.InputError, match="not unique"):
        scalenmf.project(W, dup, row_labels=ref.channels)
    with pytest.raises(scalenmf.InputError, match="95 features but W has 96 rows"):
        scalenmf.project(W, X[:95])
    with pytest.raises(scalenmf.InputError, match="row_labels have length 3"):
        scalenmf.project(W, X, row_labels=["a", "b", "c"])


# -- quality control --------------------------------------------------------------------------


def test_per_sample_quality_and_novelty_flag():
    W_all, _, _ = make(seed=8, k=5)
    W = W_all[:, :4]
    rng = np.random.default_rng(8)
    H = rng.gamma(1.0, 20.0, (5, 50))
    H[4, :40] = 0.0  # the last 10 samples carry a process W does not know
    H[:4, 40:] *= 0.05
    X = rng.poisson(W_all @ H).astype(float)
    res = scalenmf.project(W, X, novelty_cosine=0.9, novelty_z=None)
    WH = W @ res.H
    cos = (X * WH).sum(0) / (np.linalg.norm(X, axis=0) * np.linalg.norm(WH, axis=0))
    rel = np.linalg.norm(X - WH, axis=0) / np.linalg.norm(X, axis=0)
    np.testing.assert_allclose(res.cosine, cos, rtol=1e-10)
    np.testing.assert_allclose(res.relative_error, rel, rtol=1e-8)
    assert res.novel[40:].all() and not res.novel[:40].any()
    assert res.novelty["n_low_cosine"] == 10
    assert res.overall_relative_error == pytest.approx(
        np.linalg.norm(X - WH) / np.linalg.norm(X), rel=1e-8
    )
    robust = scalenmf.project(W, X, novelty_cosine=None, novelty_z=3.5)
    assert robust.novel[40:].sum() >= 8 and robust.novel[:40].sum() <= 2
    none = scalenmf.project(W, X, novelty_cosine=None, novelty_z=None)
    assert not none.novel.any()


def test_bootstrap_intervals():
    W, X, _ = make(seed=9, n=12, scale=40.0)
    res = scalenmf.project(W, X, bootstrap=60, ci=0.9, seed=3)
    assert res.H_lower.shape == res.H.shape == res.H_upper.shape
    assert np.all(res.H_lower <= res.H_upper)
    inside = (res.H_lower <= res.H + 1e-9) & (res.H <= res.H_upper + 1e-9)
    assert inside.mean() > 0.8
    again = scalenmf.project(W, X, bootstrap=60, ci=0.9, seed=3, block_cols=5)
    # Draws are seeded per block: same blocking, same intervals.
    same = scalenmf.project(W, X, bootstrap=60, ci=0.9, seed=3)
    np.testing.assert_array_equal(same.H_lower, res.H_lower)
    assert again.H_lower.shape == res.H_lower.shape
    # Ten times fewer counts, wider intervals relative to the estimate.
    small = scalenmf.project(W, np.round(X / 10), bootstrap=60, ci=0.9, seed=3)
    assert np.median((small.H_upper - small.H_lower) / np.maximum(small.H, 1e-9)) > np.median(
        (res.H_upper - res.H_lower) / np.maximum(res.H, 1e-9)
    )
    multi = scalenmf.project(W, sp.csc_matrix(X), bootstrap=20, resample="multinomial")
    assert np.all(multi.H_lower <= multi.H_upper)


def test_resampling_keeps_totals_and_sparsity():
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, (20, 8)).astype(float)
    draw = resample_block(X, "multinomial", rng)
    np.testing.assert_array_equal(draw.sum(axis=0), X.sum(axis=0))
    assert np.all(draw[X == 0] == 0)
    sdraw = resample_block(sp.csc_matrix(X), "poisson", rng)
    assert sp.issparse(sdraw) and set(zip(*sdraw.nonzero(), strict=True)) <= set(
        zip(*np.nonzero(X), strict=True)
    )


# -- linked transfer learning -----------------------------------------------------------------


def test_transfer_learning_learns_the_missing_factor():
    W_all, _, _ = make(seed=10, k=4)
    rng = np.random.default_rng(10)
    H = rng.gamma(1.0, 20.0, (4, 200))
    H[3, :100] = 0.0  # half the samples use the factor W lacks
    X = rng.poisson(W_all @ H).astype(float)
    W = W_all[:, :3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        res = scalenmf.project(W, sp.csc_matrix(X), k_new=1, transfer_tol=1e-8)
    assert res.U.shape == (30, 1) and res.V.shape == (1, 200) and res.H.shape == (3, 200)
    np.testing.assert_array_equal(res.W, W)  # the given basis is held fixed
    assert cosine_matrix(W_all[:, 3:], res.U)[0, 0] >= 0.95
    e = res.explained
    assert e["total_r2"] > e["basis_r2"] + 0.05
    assert 0.05 < e["new_count_share"] < 0.6 and e["basis_count_share"] == pytest.approx(
        1 - e["new_count_share"]
    )
    assert res.new_share[100:].mean() > 5 * res.new_share[:100].mean()
    assert np.nanmedian(res.cosine) > np.nanmedian(res.basis_cosine)
    hist = res.loss_history
    assert all(b <= a * (1 + 1e-10) for a, b in itertools.pairwise(hist))
    # The whole model reconstructs X as reported.
    full = W @ res.H + res.U @ res.V
    assert res.overall_relative_error == pytest.approx(
        np.linalg.norm(X - full) / np.linalg.norm(X), rel=1e-8
    )


def test_transfer_learning_with_kl_and_matching():
    W_all, _, _ = make(seed=11, k=4)
    rng = np.random.default_rng(11)
    X = rng.poisson(W_all @ rng.gamma(1.0, 20.0, (4, 120))).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        res = scalenmf.project(W_all[:, :2], X, k_new=2, loss="kl", transfer_max_iter=300)
    C = cosine_matrix(W_all[:, 2:], res.U)
    rows, cols = linear_sum_assignment(-C)
    assert C[rows, cols].min() > 0.9
    assert res.params["loss"] == "kl" and res.params["solver"] == "mu"


# -- inputs, stores and errors ----------------------------------------------------------------


def test_basis_from_a_result_and_store_round_trip(tmp_path: Path):
    _W, X, _ = make(seed=12)
    rows = [f"g{i}" for i in range(30)]
    fit = scalenmf.nmf(as_source(X).set_labels(rows), 4, loss="kl", max_iter=30, tol=0)
    path = fit.save(tmp_path / "fit.zarr")
    new = as_source(X[::-1]).set_labels(rows[::-1], [f"s{i}" for i in range(60)])
    res = scalenmf.project(path, new, bootstrap=5)
    assert res.params["loss"] == "kl"  # taken from the fit
    direct = scalenmf.project(fit.W, X, loss="kl")
    np.testing.assert_allclose(res.H, direct.H, rtol=1e-8, atol=1e-10)
    out = res.save(tmp_path / "p.zarr")
    back = scalenmf.load_projection(out)
    np.testing.assert_array_equal(back.H, res.H)
    np.testing.assert_array_equal(back.novel, res.novel)
    np.testing.assert_array_equal(back.H_upper, res.H_upper)
    assert back.col_labels[0] == "s0" and back.row_labels[0] == "g0"
    assert back.explained == res.explained
    from scalenmf.io.info import describe

    assert describe(out)["model"] == "projection"
    with pytest.raises(scalenmf.InputError, match="not projection"):
        scalenmf.load_projection(path)


@pytest.mark.parametrize(
    "W,X,kwargs,error,match",
    [
        (-np.ones((4, 2)), np.ones((4, 3)), {}, scalenmf.InputError, "W contains negative"),
        (np.full((4, 2), np.nan), np.ones((4, 3)), {}, scalenmf.InputError, "NaN"),
        (
            np.c_[np.ones(4), np.zeros(4)],
            np.ones((4, 3)),
            {},
            scalenmf.InputError,
            "all-zero column",
        ),
        (np.ones(4), np.ones((4, 3)), {}, scalenmf.InputError, "W must be 2-D"),
        (np.ones((4, 2)), np.zeros((4, 3)), {}, scalenmf.InputError, "all zeros"),
        (np.ones((4, 2)), -np.ones((4, 3)), {}, scalenmf.InputError, "negative"),
        (np.ones((4, 2)), np.ones((4, 0)), {}, scalenmf.InputError, "empty"),
        (np.ones((4, 2)), np.ones((4, 3)), {"k_new": 3}, ValueError, "k must be between"),
        (np.ones((4, 2)), np.ones((4, 3)), {"resample": "jackknife"}, ValueError, "resample"),
        (np.ones((4, 2)), np.ones((4, 3)), {"ci": 1.5}, ValueError, "ci must be in"),
        (np.ones((4, 2)), np.ones((4, 3)), {"bootstrap": -1}, ValueError, "bootstrap"),
        (np.ones((4, 2)), np.ones((4, 3)), {"loss": "kl", "solver": "als"}, ValueError, "mu"),
    ],
)
def test_bad_input(W, X, kwargs, error, match):
    with pytest.raises(error, match=match):
        scalenmf.project(W, X, **kwargs)


def _conditioned_basis(seed: int, cond: float, m: int = 96, k: int = 8) -> np.ndarray:
    """A non-negative m×k basis of the given condition number (a shared offset on random
    columns makes them alike; the offset is solved for)."""
    from scipy.optimize import brentq

    A = np.random.default_rng(seed).random((m, k))
    c = brentq(lambda c: np.linalg.cond(A + c) - cond, 0.0, 1e6)
    return A + c


@pytest.mark.parametrize(
    "kwargs", [{"nnls": "cd"}, {"solver": "hals"}, {}], ids=["cd", "hals", "bpp"]
)
def test_projection_is_exact_on_an_ill_conditioned_basis(kwargs):
    """96×8, condition number 236: coordinate descent used to stop on a small last step
    (H off by more than half its size) while the fit reported converged."""
    W = _conditioned_basis(0, 236.0)
    X = np.random.default_rng(1).random((96, 40)) * 2
    ref = scipy_nnls(W, X)
    res = scalenmf.project(W, X, **kwargs)
    assert res.converged
    np.testing.assert_allclose(res.H, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
