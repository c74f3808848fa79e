"""scalenmf.NMF as a scikit-learn citizen: check_estimator, pipelines, pandas output."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf

sklearn = pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")

from sklearn.base import BaseEstimator, TransformerMixin, clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MaxAbsScaler  # noqa: E402
from sklearn.utils import get_tags  # noqa: E402
from sklearn.utils.estimator_checks import estimator_checks_generator  # noqa: E402

from scalenmf.estimators import NMF, MiniBatchNMF  # noqa: E402

#: Checks of sklearn.utils.estimator_checks that cannot apply to scalenmf.NMF, with the
#: reason. Empty: every check of scikit-learn 1.9 passes. (A new sklearn release may add
#: checks; list one here only with the reason it cannot apply.)
EXPECTED_FAILED_CHECKS: dict[str, str] = {}

#: Checks left out of the parametrization because scikit-learn itself skips them here.
SKIPPED_BY_SKLEARN = {
    "check_array_api_input": "runs only with SCIPY_ARRAY_API=1 set before scipy is first "
    "imported; scalenmf converts every input to numpy and claims no array API support",
}


def _check_name(check) -> str:
    func = getattr(check, "func", check)
    return getattr(func, "__name__", str(func))


CHECKS = [
    (est, check)
    for model in (NMF(), MiniBatchNMF(batch_size=8))
    for est, check in estimator_checks_generator(
        model, legacy=True, expected_failed_checks=EXPECTED_FAILED_CHECKS, mark="xfail"
    )
    if _check_name(check) not in SKIPPED_BY_SKLEARN
]


def counts(n: int = 40, m: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(2.0, 2.0, (n, 3)) @ rng.gamma(1.0, 1.0, (3, m))).astype(float)


@pytest.mark.parametrize(
    ("estimator", "check"),
    CHECKS,
    ids=[f"{type(est).__name__}-{_check_name(check)}" for est, check in CHECKS],
)
def test_check_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        check(estimator)


def test_derives_from_sklearn_and_tags_say_non_negative_sparse():
    est = NMF()
    assert isinstance(est, BaseEstimator) and isinstance(est, TransformerMixin)
    tags = get_tags(est)
    assert tags.input_tags.positive_only and tags.input_tags.sparse
    assert tags.transformer_tags.preserves_dtype == ["float64", "float32"]


def test_not_fitted_error_before_fit():
    est = NMF(3)
    with pytest.raises(NotFittedError):
        est.transform(counts())
    with pytest.raises(NotFittedError):
        est.get_feature_names_out()
    with pytest.raises(NotFittedError):
        est.inverse_transform(np.ones((2, 3)))


def test_pipeline_html_repr_pandas_output_and_feature_names():
    frame = pd.DataFrame(counts(), columns=[f"gene{i}" for i in range(12)])
    pipe = make_pipeline(MaxAbsScaler(), NMF(3, random_state=0))
    html = pipe._repr_html_()
    assert "NMF" in html and "MaxAbsScaler" in html
    pipe.set_output(transform="pandas")
    out = pipe.fit_transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["nmf0", "nmf1", "nmf2"]
    assert list(out.index) == list(frame.index)
    assert list(pipe.get_feature_names_out()) == ["nmf0", "nmf1", "nmf2"]
    est = pipe[-1]
    assert list(est.feature_names_in_) == list(frame.columns)
    assert isinstance(pipe.transform(frame.iloc[:5]), pd.DataFrame)


def test_config_context_pandas_output():
    with sklearn.config_context(transform_output="pandas"):
        out = NMF(2, random_state=0).fit(counts()).transform(counts())
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["nmf0", "nmf1"]


def test_object_dtype_frame_of_numbers():
    X = counts()
    frame = pd.DataFrame(X.astype(object), columns=[f"f{i}" for i in range(X.shape[1])])
    assert all(dtype == np.dtype(object) for dtype in frame.dtypes)
    a = NMF(3, random_state=1).fit_transform(frame)
    b = NMF(3, random_state=1).fit_transform(X)
    np.testing.assert_allclose(a, b)


def test_n_components_none_is_all_features():
    X = counts(m=6)
    est = NMF(None, random_state=0, max_iter=50, tol=0).fit(X)
    assert est.n_components_ == 6 and est.components_.shape == (6, 6)


def test_n_components_messages_speak_samples_and_features():
    with pytest.raises(ValueError, match=r"min\(n_samples, n_features\) = 5 .* 5 sample"):
        NMF(6).fit(counts(n=5, m=12))
    with pytest.raises(ValueError, match="positive int or None"):
        NMF(0).fit(counts())
    est = NMF(2, random_state=0).fit(counts())
    with pytest.raises(ValueError, match="X has 11 features, but NMF is expecting 12"):
        est.transform(counts(m=11))
    with pytest.raises(ValueError, match="Negative values in data passed to NMF"):
        est.transform(-counts())


@pytest.mark.parametrize(
    "state",
    [0, 7, np.int64(3), None, np.random.RandomState(0), np.random.default_rng(0)],
    ids=["0", "7", "np.int64", "None", "RandomState", "Generator"],
)
def test_random_state_forms(state):
    X = counts()
    est = NMF(3, init="random", random_state=state, max_iter=30, tol=0).fit(X)
    assert est.components_.shape == (3, 12) and np.all(est.components_ >= 0)


def test_random_state_reproducible_and_drawn_from_generators():
    X = counts()
    one = NMF(3, init="random", random_state=5, max_iter=20, tol=0).fit(X).components_
    two = NMF(3, init="random", random_state=5, max_iter=20, tol=0).fit(X).components_
    np.testing.assert_array_equal(one, two)
    a = NMF(3, init="random", random_state=np.random.RandomState(1), max_iter=20, tol=0)
    b = clone(a).set_params(random_state=np.random.RandomState(1))
    np.testing.assert_array_equal(a.fit(X).components_, b.fit(X).components_)
    with pytest.raises(ValueError, match="random_state must be"):
        NMF(2, random_state="seven").fit(X)


def test_convergence_warning_is_sklearns():
    assert issubclass(scalenmf.ConvergenceWarning, SkConvergenceWarning)
    from scalenmf.engine.loop import ConvergenceWarning

    assert ConvergenceWarning is scalenmf.ConvergenceWarning
    with pytest.warns(SkConvergenceWarning, match="max_iter=2"):
        NMF(2, max_iter=2, tol=1e-12).fit(counts())


def test_solver_cd_alias_sparse_and_pickle():
    X = counts()
    est = NMF(3, solver="cd", random_state=0, max_iter=40, tol=0).fit(sp.csr_matrix(X))
    assert est.result_.params["solver"] == "hals"
    dense = NMF(3, solver="cd", random_state=0, max_iter=40, tol=0).fit(X)
    np.testing.assert_allclose(est.components_, dense.components_, rtol=1e-8, atol=1e-10)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(back.transform(X), est.transform(X))


def test_transform_zeros_and_subset_independent():
    X = counts()
    est = NMF(3, random_state=0).fit(X)
    assert np.all(est.transform(np.zeros((2, 12))) == 0)
    np.testing.assert_allclose(est.transform(X[:7]), est.transform(X)[:7], rtol=1e-9, atol=1e-12)
    # W fixed, the exact per-sample solve can only lower the fit's error.
    residual = np.linalg.norm(X - est.inverse_transform(est.transform(X)))
    assert residual <= est.reconstruction_err_ * (1 + 1e-9)


def test_estimator_works_without_sklearn(tmp_path: Path):
    """The sklearn extra is optional: the stand-ins fit, transform and name features."""
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["sklearn"] = None  # makes every `import sklearn...` fail
        import numpy as np, pandas as pd
        import scalenmf
        from scalenmf import _sklearn
        assert not _sklearn.HAVE_SKLEARN
        from scalenmf.estimators import NMF
        X = np.random.default_rng(0).poisson(4.0, (30, 8)).astype(float)
        frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(8)])
        est = NMF(3, random_state=0, max_iter=50)
        try:
            est.transform(X)
        except _sklearn.NotFittedError as exc:
            assert isinstance(exc, ValueError)
        else:
            raise AssertionError("no NotFittedError")
        Ht = est.fit_transform(frame)
        assert Ht.shape == (30, 3) and est.transform(X).shape == (30, 3)
        assert list(est.feature_names_in_) == list(frame.columns)
        assert list(est.get_feature_names_out()) == ["nmf0", "nmf1", "nmf2"]
        assert est.get_params()["n_components"] == 3
        assert repr(est.set_params(max_iter=60)) == "NMF(max_iter=60, n_components=3)"
        assert issubclass(scalenmf.ConvergenceWarning, UserWarning)
        try:
            est.set_params(bogus=1)
        except ValueError as exc:
            assert "bogus" in str(exc)
        try:
            est.transform(-X)
        except ValueError as exc:
            assert "Negative values" in str(exc)
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_minibatch_nmf_is_the_online_solver_with_sklearn_defaults():
    model = scalenmf.MiniBatchNMF(n_components=3)
    assert isinstance(model, NMF)
    params = model.get_params()
    assert (params["solver"], params["batch_size"], params["forget_factor"]) == (
        "online",
        1024,
        0.7,
    )
    X = counts(n=400)
    online = scalenmf.MiniBatchNMF(n_components=3, batch_size=100, max_iter=50, random_state=0)
    H = online.fit_transform(X)
    full = NMF(n_components=3, max_iter=500, tol=1e-6, random_state=0).fit(X)
    assert H.shape == (400, 3) and (H >= 0).all() and (online.components_ >= 0).all()
    assert online.reconstruction_err_ <= 1.05 * full.reconstruction_err_
    assert clone(online).get_params() == online.get_params()
