"""Shared tiny seeded data for the engine tests (kernels, NMF properties, executors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp


def make_counts(m: int, n: int, k: int = 3, *, seed: int = 0, zeros: float = 0.0) -> np.ndarray:
    """Poisson counts of a rank-``k`` gamma model; ``zeros`` of the entries dropped to 0."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, size=(m, k))
    H = rng.gamma(1.0, 2.0, size=(k, n))
    X = rng.poisson(W @ H).astype(np.float64)
    if zeros:
        X[rng.random(X.shape) < zeros] = 0.0
    return X


@pytest.fixture(scope="session")
def counts_dense() -> np.ndarray:
    """30 × 60 dense counts with about 40% zeros (so the sparse twin is really sparse)."""
    X = make_counts(30, 60, seed=11, zeros=0.4)
    X.setflags(write=False)
    return X


@pytest.fixture(scope="session")
def counts_sparse(counts_dense: np.ndarray) -> sp.csc_matrix:
    """The same matrix as ``counts_dense``, as CSC."""
    return sp.csc_matrix(counts_dense)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch) -> Path:
    """Scratch stores go here (so that a test sees them come and go)."""
    where = tmp_path / "scratch"
    where.mkdir()
    monkeypatch.setenv("SCALENMF_SCRATCH", str(where))
    return where
