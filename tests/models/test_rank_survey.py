"""Rank survey: the suggested rank on synthetic data, the output contract, parities."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.api.selection import parse_ks
from scalenmf.io.tables import read_csv
from scalenmf.models.survey import SUMMARY_COLUMNS


def planted(k: int, m: int = 40, n: int = 90, seed: int = 0) -> np.ndarray:
    """Poisson counts of a rank-k model with sparse-ish gamma factors."""
    rng = np.random.default_rng(seed + k)
    W = rng.gamma(0.5, 1.0, (m, k))
    H = rng.gamma(0.5, 1.0, (k, n)) * 20
    return rng.poisson(W @ H).astype(float)


def survey(X, ks, **kw):
    kw.setdefault("n_runs", 3)
    kw.setdefault("cv_reps", 3)
    kw.setdefault("progress", False)
    kw.setdefault("solver", "hals")
    kw.setdefault("seed", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return scalenmf.rank_survey(X, ks, **kw)


@pytest.mark.parametrize("k_true", [3, 5, 8])
def test_survey_suggests_the_true_rank(k_true):
    X = planted(k_true)
    res = survey(X, [k_true - 1, k_true, k_true + 1], null=False, max_iter=120)
    assert res.suggestion["k"] == k_true, res.suggestion["reason"]
    assert res.suggestion["criterion"] == "cross-validation"
    assert str(k_true) in res.suggestion["reason"]
    cv = {r["k"]: r["cv_error"] for r in res.summary}
    assert cv[k_true] < cv[k_true - 1]


def test_summary_columns_null_and_files(tmp_path):
    X = planted(3, n=60)
    res = survey(X, "2-4", max_iter=60)
    assert [r["k"] for r in res.summary] == [2, 3, 4]
    for row in res.summary + res.null_summary:
        assert set(SUMMARY_COLUMNS) <= set(row)
        assert 0 <= row["error_best"] <= row["error_mean"] + 1e-12
        assert row["cv_reps"] == 3 and math.isfinite(row["cv_error_sd"])
    data3 = res.summary[1]
    null3 = res.null_summary[1]
    # Permuting every column destroys the structure: worse fits, worse held-out error.
    assert null3["error_best"] > data3["error_best"] and null3["cv_error"] > data3["cv_error"]
    assert data3["cophenetic"] > 0.99 and data3["stability"] > 0.9
    out = tmp_path / "rank"
    res.save(out)
    summary = read_csv(out / "summary.csv")
    assert list(summary[0])[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)
    assert [int(r["k"]) for r in summary] == [2, 3, 4]
    assert float(summary[1]["cophenetic"]) == pytest.approx(data3["cophenetic"])
    null = read_csv(out / "null_summary.csv")
    assert float(null[1]["cv_error"]) == pytest.approx(null3["cv_error"])
    sug = json.loads((out / "suggestion.json").read_text())
    assert sug["k"] == 3 and isinstance(sug["reason"], str)
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 3 * 3
    assert {"k", "run", "objective", "relative_error", "n_iter"} <= set(runs[0])
    assert len(read_csv(out / "cv_runs.csv")) == 2 * 3 * 3
    best = scalenmf.load(out / "best" / "k3.zarr")
    assert best.W.shape == (40, 3) and best.H.shape == (3, 60)
    assert best.loss == pytest.approx(data3["objective_best"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_dense_equals_sparse():
    X = planted(3, n=50)
    a = survey(X, "2-3", max_iter=30, tol=0.0, block_cols=20)
    b = survey(sp.csc_matrix(X), "2-3", max_iter=30, tol=0.0, block_cols=20)
    for ra, rb in zip(a.summary + a.null_summary, b.summary + b.null_summary, strict=True):
        for c in SUMMARY_COLUMNS:
            assert ra[c] == pytest.approx(rb[c], rel=1e-9, abs=1e-12, nan_ok=True), c


def test_stacking_ranks_does_not_change_a_fit():
    """Fits stacked across ranks give what each fit gives alone."""
    X = planted(3, n=50)
    a = survey(X, [2, 3], max_iter=15, tol=0.0, null=False, cv_reps=0, n_runs=2)
    b = survey(X, [3], max_iter=15, tol=0.0, null=False, cv_reps=0, n_runs=2)
    ra = [r for r in a.runs if r["k"] == 3]
    assert [r["objective"] for r in ra] == pytest.approx([r["objective"] for r in b.runs])


def test_mask_in_a_survey_ignores_the_masked_entries():
    X = planted(3, n=50)
    M = np.random.default_rng(2).random(X.shape) < 0.1
    X2 = X.copy()
    X2[M] = 999.0
    a = survey(X, "2-3", mask=M, null=False, max_iter=20, tol=0.0)
    b = survey(X2, "2-3", mask=M, null=False, max_iter=20, tol=0.0)
    for ra, rb in zip(a.summary, b.summary, strict=True):
        assert ra["cv_error"] == pytest.approx(rb["cv_error"])
        assert ra["error_best"] == pytest.approx(rb["error_best"])


def test_parse_ks_and_bad_arguments():
    assert parse_ks("2-5") == [2, 3, 4, 5]
    assert parse_ks("2-4,8") == [2, 3, 4, 8]
    assert parse_ks([5, 3, 3]) == [3, 5]
    for bad in ("5-2", "two", "", [0, 2], "2-x"):
        with pytest.raises((ValueError, TypeError)):
            parse_ks(bad)
    X = planted(3, n=20)
    with pytest.raises(ValueError, match="k must be between"):
        scalenmf.rank_survey(X, [2, 50])
    with pytest.raises(ValueError, match="n_runs"):
        scalenmf.rank_survey(X, [2], n_runs=0)
    with pytest.raises(ValueError, match="cv_fraction"):
        scalenmf.rank_survey(X, [2], cv_fraction=0.9)
    with pytest.raises(ValueError, match="negative"):
        scalenmf.rank_survey(-X, [2], progress=False)
    with pytest.raises(ValueError, match="solver"):
        scalenmf.rank_survey(X, [2], solver="als", loss="kl")
