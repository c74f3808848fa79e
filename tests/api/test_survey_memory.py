"""``rank_survey`` and ``consensus`` within a memory limit: the plan of all fits together,
the same numbers as without a limit, and a traced peak that does not grow with n.

The tests shrink ``STATE_SHARE`` instead of the limit: the limit must stay above the test
process's own resident size (as in test_project_memory.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.engine import local
from scalenmf.models.fits import FitSpec, multifit_shape
from scalenmf.models.survey import survey_fits
from tests.conftest import make_counts

KW = {"n_runs": 3, "cv_reps": 2, "max_iter": 15, "tol": 0.0, "block_cols": 150, "progress": False}


def data(n: int, sparse: bool = False):
    X = make_counts(20, n, k=3, seed=5, zeros=0.4)
    return sp.csc_matrix(X) if sparse else X


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[key], b[key]) for key in a)
    return bool(a == b)


def same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert same_value(x, y), (x, y)


def test_the_plan_sees_every_fit_of_the_survey() -> None:
    fits = survey_fits([2, 3, 8], n_runs=4, cv_reps=1, null=True)
    shape = multifit_shape(fits, "frobenius", 8)
    # ranks 2 and 3 share the padded rank 3; each (variant, k) has 4 runs and 1 replicate
    total = 2 * (5 * 3 + 5 * 3 + 5 * 8)
    assert shape.k == 8 and shape.k * shape.n_runs >= total > shape.k * (shape.n_runs - 1)
    assert shape.masked and shape.init == "random"
    plain = multifit_shape([FitSpec(4, run=r) for r in range(3)], "kl", 4)
    assert (plain.k, plain.n_runs, plain.masked, plain.loss) == (4, 3, False, "kl")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_survey_within_a_limit_equals_the_unlimited_one(monkeypatch, scratch, sparse) -> None:
    X = data(600, sparse)
    free = scalenmf.rank_survey(X, "2-4", **KW)
    assert free.info["states_in_store"] is False
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    bounded = scalenmf.rank_survey(X, "2-4", memory_limit="4GB", **KW)
    assert bounded.info["states_in_store"] is True
    same_rows(free.summary, bounded.summary)
    same_rows(free.null_summary, bounded.null_summary)
    same_rows(free.runs, bounded.runs)
    assert same_value(free.suggestion, bounded.suggestion)
    for k in free.ks:
        assert np.array_equal(free.best[k].W, bounded.best[k].W)
        assert np.array_equal(np.asarray(free.best[k].H), np.asarray(bounded.best[k].H[...]))
        assert np.array_equal(free.consensus[k].clusters, np.asarray(bounded.consensus[k].clusters))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_consensus_within_a_limit_equals_the_unlimited_one(monkeypatch, scratch, sparse) -> None:
    X = data(500, sparse)
    kw = {"n_runs": 4, "max_iter": 15, "tol": 0.0, "block_cols": 120, "progress": False}
    free = scalenmf.consensus(X, 3, max_samples=200, **kw)
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    bounded = scalenmf.consensus(X, 3, max_samples=200, memory_limit="4GB", **kw)
    assert bounded.info["states_in_store"] is True and free.info["states_in_store"] is False
    assert free.samples.subsampled and bounded.samples.subsampled
    for name in ("cophenetic", "dispersion", "silhouette"):
        assert same_value(getattr(free.samples, name), getattr(bounded.samples, name)), name
    for name in ("clusters", "confidence", "samples"):
        a, b = getattr(free.samples, name), getattr(bounded.samples, name)
        assert np.array_equal(np.asarray(a[...]), np.asarray(b[...])), name
    assert np.array_equal(free.factors.W, bounded.factors.W)
    assert np.array_equal(free.result.W, bounded.result.W)
    assert np.array_equal(np.asarray(free.result.H[...]), np.asarray(bounded.result.H[...]))
    same_rows(free.runs, bounded.runs)


def test_survey_refuses_a_limit_below_its_plan() -> None:
    from scalenmf.models.memory import MemoryLimitError

    with pytest.raises(MemoryLimitError, match="memory_limit is too small"):
        scalenmf.rank_survey(data(300), "2-3", memory_limit="1MB", **KW)
    with pytest.raises(MemoryLimitError, match="memory_limit is too small"):
        scalenmf.consensus(data(300), 2, n_runs=2, memory_limit="1MB", progress=False)
