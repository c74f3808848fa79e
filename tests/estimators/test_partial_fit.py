"""``scalenmf.NMF.partial_fit``: online NMF one mini-batch at a time, scikit-learn style."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.estimators import NMF

sklearn = pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import (  # noqa: E402
    check_estimators_partial_fit_n_features,
    check_n_features_in_after_fitting,
)


def low_rank(n: int = 1500, m: int = 30, k: int = 4, seed: int = 0) -> np.ndarray:
    """Samples × features Poisson counts of a seeded rank-k model."""
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(0.5, 20.0, (n, k)) @ rng.gamma(0.5, 1.0, (k, m))).astype(float)


def objective(est: NMF, X: np.ndarray, loss: str) -> float:
    """The data term of ``X ≈ transform(X) @ components_`` (H solved exactly)."""
    R = est.transform(X) @ est.components_
    if loss == "kl":
        pos = X > 0
        return float(np.sum(X[pos] * np.log(X[pos] / R[pos])) - X.sum() + R.sum())
    return 0.5 * float(((X - R) ** 2).sum())


def epochs(est: NMF, X, n_epochs: int, n_batches: int, record=None) -> NMF:
    for epoch in range(n_epochs):
        order = np.random.default_rng(epoch).permutation(X.shape[0])
        for rows in np.array_split(order, n_batches):
            est.partial_fit(X[rows])
        if record is not None:
            record.append(est.components_.copy())
    return est


@pytest.mark.parametrize(("loss", "gap"), [("frobenius", 0.03), ("kl", 0.35)])
def test_mini_batches_approach_the_full_fit_objective(loss, gap):
    X = low_rank()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = NMF(4, loss=loss, max_iter=1000, tol=1e-8).fit(X)
    target = objective(full, X, loss)
    seen: list[np.ndarray] = []
    est = epochs(NMF(4, loss=loss, random_state=0), X, 3, 30, seen)
    gaps = []
    for C in seen:
        probe = NMF(4, loss=loss)
        probe.partial_fit(X[:10])  # any fitted estimator; its basis is replaced below
        probe.components_ = C
        gaps.append(objective(probe, X, loss) / target - 1)
    assert gaps[-1] < gap, gaps
    assert gaps[0] > gaps[-1]  # more passes come closer
    assert est.n_steps_ == 90 and est.components_.shape == (4, 30)
    assert (est.components_ >= 0).all() and (est.transform(X) >= 0).all()
    assert not hasattr(est, "result_")


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_dense_and_sparse_batches_give_the_same_components(loss):
    X = low_rank(n=300)
    dense = epochs(NMF(3, loss=loss, l1_w=0.1, l2_h=0.2), X, 1, 5)
    sparse = epochs(NMF(3, loss=loss, l1_w=0.1, l2_h=0.2), sp.csr_matrix(X), 1, 5)
    np.testing.assert_allclose(sparse.components_, dense.components_, rtol=1e-7, atol=1e-9)


def test_float32_batches_stay_float32():
    X = low_rank(n=200).astype(np.float32)
    est = epochs(NMF(3), X, 1, 4)
    assert est.components_.dtype == np.float32
    assert est.transform(X).dtype == np.float32
    assert NMF(3, dtype="float32").partial_fit(X.astype(float)).components_.dtype == np.float32


def test_feature_mismatch_and_first_batch_errors():
    X = low_rank(n=100)
    est = NMF(4).partial_fit(X[:50])
    assert est.n_features_in_ == 30
    with pytest.raises(ValueError, match="X has 29 features, but NMF is expecting 30"):
        est.partial_fit(X[50:, :29])
    with pytest.raises(ValueError, match="Negative values in data passed to NMF"):
        est.partial_fit(-X[50:])
    with pytest.raises(ValueError, match=r"n_components=4 must be at most .* = 3"):
        NMF(4).partial_fit(X[:3])
    with pytest.raises(ValueError, match="first batch of partial_fit is all zeros"):
        NMF(2).partial_fit(np.zeros((10, 30)))
    with pytest.raises(ValueError, match=r"forget_factor must be in \(0, 1\]"):
        NMF(2, forget_factor=1.5).partial_fit(X)
    # A later batch may be smaller than the rank, even a single sample.
    est.partial_fit(X[60:61])
    assert est.n_steps_ == 2


def test_sklearn_partial_fit_checks():
    check_estimators_partial_fit_n_features("NMF", NMF())
    check_n_features_in_after_fitting("NMF", NMF())


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_partial_fit_after_fit_continues_from_the_fitted_statistics(loss):
    X = low_rank(n=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = NMF(4, loss=loss, max_iter=500, tol=1e-9).fit(X)
    before = est.components_.copy()
    est.partial_fit(X[:50])  # a few samples of the same data hardly move a fitted basis
    cos = np.sum(before * est.components_, 1) / (
        np.linalg.norm(before, axis=1) * np.linalg.norm(est.components_, axis=1)
    )
    assert cos.min() > 0.995, cos
    assert est.n_steps_ == 1 and not hasattr(est, "result_")
    # Whereas a fresh estimator started on those 50 samples alone lands elsewhere.
    fresh = NMF(4, loss=loss).partial_fit(X[:50])
    assert objective(est, X, loss) < objective(fresh, X, loss)


def test_fit_with_the_online_solver_takes_batch_size_and_forget_factor():
    X = low_rank(n=400)
    est = NMF(4, solver="online", batch_size=100, forget_factor=0.9, max_iter=3, tol=0).fit(X)
    assert est.result_.params["solver"] == "online"
    assert est.result_.params["batch_size"] == 100
    assert est.result_.params["forget_factor"] == 0.9
    kw = {"solver": "online", "batch_size": 100, "forget_factor": 0.9, "max_iter": 3, "tol": 0}
    ref = scalenmf.nmf(X.T, 4, **kw)
    np.testing.assert_allclose(est.components_, ref.W.T)
