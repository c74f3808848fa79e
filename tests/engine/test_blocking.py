"""Default blocking: X is spread over threads only when each block is worth a thread."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import scalenmf
from scalenmf.io.matrix import as_source
from scalenmf.io.planning import MIN_SPREAD_VALUES, plan_block_cols


def test_small_dense_problem_is_one_block_whatever_the_cores() -> None:
    # 96 × 560 = 53,760 values: in two blocks each step costs more in dispatch than it saves.
    assert plan_block_cols(96, 560, 8, min_blocks=16) == 560
    assert plan_block_cols(200, 300, 8, min_blocks=2) == 300


def test_large_dense_problem_still_spreads_over_threads() -> None:
    cols = plan_block_cols(2000, 4000, 8, min_blocks=4)
    assert cols == 1000
    assert 2000 * cols >= MIN_SPREAD_VALUES


def test_spread_stops_where_a_block_would_fall_below_the_threshold() -> None:
    m = 256
    n = 2 * MIN_SPREAD_VALUES // m  # exactly two blocks of MIN_SPREAD_VALUES each
    assert plan_block_cols(m, n, 8, min_blocks=2) == n // 2
    assert plan_block_cols(m, n - 2, 8, min_blocks=2) == n - 2


def test_small_inputs_fit_in_one_block_dense_and_sparse() -> None:
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, (96, 560)).astype(float)
    assert as_source(X).n_blocks == 1
    S = sp.random(500, 800, density=0.05, random_state=1, format="csc")
    assert as_source(S).n_blocks == 1
    res = scalenmf.nmf(X, 3, max_iter=5, tol=0, threads=2, progress=False)
    assert res.info["n_blocks"] == 1
    # An explicit blocking is kept as asked.
    assert (
        scalenmf.nmf(X, 3, max_iter=5, tol=0, block_cols=100, progress=False).info["n_blocks"] == 6
    )
