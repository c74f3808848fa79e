"""``rank_survey`` and ``consensus`` within a memory limit: the plan of all fits together,
the same numbers as without a limit, and a traced peak that does not grow with n.

The tests shrink ``STATE_SHARE`` instead of the limit: the limit must stay above the test
process's own resident size (as in test_project_memory.py).
"""

from __future__ import annotations

import gc
import math
import tracemalloc
from pathlib import Path

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


def test_sample_consensus_of_stored_labels_read_by_chunks_equals_in_memory(
    monkeypatch, scratch
) -> None:
    from scalenmf.io.state_store import columns_array
    from scalenmf.models import consensus as cons
    from scalenmf.models.fits import StoredLabels

    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, 700)
    labels = np.where(rng.random((6, 700)) < 0.8, truth, rng.integers(0, 3, (6, 700)))
    held = cons.sample_consensus(labels.astype(np.int16), 3, max_samples=150, seed=1)
    store = columns_array(scratch, (8, 700), np.int16, 64, "labels")
    store[1:7] = labels  # rows 1..6 of a larger array, as a survey's are
    monkeypatch.setattr(cons, "LABEL_CHUNK", 97)  # chunks that cut members unevenly
    stored = StoredLabels(store, [1, 2, 3, 4, 5, 6])
    read = cons.sample_consensus(stored, 3, max_samples=150, seed=1)
    assert held.subsampled and read.subsampled
    for name in ("matrix", "samples", "clusters", "confidence", "linkage"):
        assert np.array_equal(getattr(held, name), getattr(read, name)), name
    for name in ("cophenetic", "dispersion", "silhouette"):
        assert getattr(held, name) == getattr(read, name), name
    assert cons.dispersion_from_labels(stored.take([0, 2, 4])) == cons.dispersion_from_labels(
        labels[[0, 2, 4]]
    )
    monkeypatch.setattr(cons, "TABLE_BYTES", 1)  # one run's tables at a time
    assert cons.dispersion_from_labels(stored) == held.dispersion


def test_info_says_what_was_subsampled_and_where_per_sample_output_went(
    monkeypatch, scratch
) -> None:
    X = data(400)
    free = scalenmf.rank_survey(X, "2-3", consensus_samples=100, **KW)
    assert free.info["memory"] == {
        "memory_limit": None,
        "consensus_samples": 100,
        "subsampled": True,
        "consensus_matrix_bytes": 40_000,
        "labels": "memory",
        "H": "memory",
    }
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    bounded = scalenmf.rank_survey(X, "2-3", memory_limit="4GB", **KW)
    memory = bounded.info["memory"]
    assert memory["memory_limit"] == 4 * 10**9 and memory["subsampled"] is False
    assert (memory["labels"], memory["H"]) == ("scratch", "scratch")
    res = scalenmf.consensus(
        X, 2, n_runs=2, max_iter=5, tol=0.0, memory_limit="4GB", progress=False
    )
    assert (res.info["memory"]["labels"], res.info["memory"]["H"]) == ("scratch", "scratch")


def traced_peak(store: str, **kw) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        res = scalenmf.rank_survey(store, "2-3", **PEAK_KW, **kw)
        res.table()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del res
    gc.collect()
    return peak


PEAK_KW = {
    "n_runs": 2,
    "cv_reps": 1,
    "max_iter": 3,
    "tol": 0.0,
    "consensus_samples": 200,
    "progress": False,
    "block_cols": 2500,
    "threads": 1,
}


@pytest.mark.filterwarnings("ignore::scalenmf.ConvergenceWarning")
def test_peak_memory_of_the_survey_does_not_grow_with_n(monkeypatch, scratch, tmp_path) -> None:
    """Traced peak of a survey from a store, at n and 4n: flat within a limit (X too
    large to hold, states, labels and best H in scratch, labels walked a chunk at a
    time), while the unbounded path (X cached, everything in memory) grows with n. What
    stays is the (n,) clusters and confidences of each rank and the sample names."""
    from scalenmf.models import consensus as cons
    from scalenmf.models import memory

    stores = {
        n: scalenmf.write_matrix(tmp_path / f"x{n}.zarr", data(n), block_cols=2500)
        for n in (10_000, 40_000)
    }
    traced_peak(stores[10_000])  # warm-up: first-call imports and caches are not n's
    free = {n: traced_peak(s) for n, s in stores.items()}
    monkeypatch.setattr(local, "STATE_SHARE", 1e-6)
    # The limit must stay above the test process's size, so X (6 MB here) would fit it:
    # the plan is told X does not, as it would be for X larger than the limit.
    monkeypatch.setattr(memory, "_keep_x", lambda source, held, room: source.in_memory)
    monkeypatch.setattr(cons, "LABEL_CHUNK", 2500)
    traced_peak(stores[10_000], memory_limit="4GB")
    bounded = {n: traced_peak(s, memory_limit="4GB") for n, s in stores.items()}
    assert free[40_000] > 2 * free[10_000], free
    assert bounded[40_000] < 1.25 * bounded[10_000], bounded
    assert bounded[40_000] < free[40_000] / 2, (bounded, free)


def test_masked_survey_within_a_limit_equals_the_unlimited_one(monkeypatch, scratch) -> None:
    X = data(500)
    X[np.random.default_rng(1).random(X.shape) < 0.05] = np.nan
    kw = {**KW, "cv_reps": 0, "mask": "nan", "null": False}
    free = scalenmf.rank_survey(X, "2-3", **kw)
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    bounded = scalenmf.rank_survey(X, "2-3", memory_limit="4GB", **kw)
    assert bounded.info["states_in_store"] is True
    same_rows(free.summary, bounded.summary)
    assert same_value(free.suggestion, bounded.suggestion)
    for k in free.ks:
        assert np.array_equal(np.asarray(free.best[k].H), np.asarray(bounded.best[k].H[...]))


def test_bounded_selection_results_save_as_the_unlimited_ones(monkeypatch, scratch, tmp_path):
    X = data(400)
    kw = {"n_runs": 3, "max_iter": 10, "tol": 0.0, "block_cols": 100, "progress": False}
    free = scalenmf.consensus(X, 2, **kw)
    survey_free = scalenmf.rank_survey(X, "2-3", **KW)
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    bounded = scalenmf.consensus(X, 2, memory_limit="4GB", **kw)
    survey_bounded = scalenmf.rank_survey(X, "2-3", memory_limit="4GB", **KW)
    a = Path(free.save(tmp_path / "a"))
    b = Path(bounded.save(tmp_path / "b"))
    assert (a / "clusters.csv").read_text() == (b / "clusters.csv").read_text()
    c = Path(survey_free.save(tmp_path / "c"))
    d = Path(survey_bounded.save(tmp_path / "d"))
    for name in ("summary.csv", "runs.csv", "suggestion.json"):
        assert (c / name).read_text() == (d / name).read_text(), name
