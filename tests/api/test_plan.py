"""``scalenmf plan``: the dry run's estimates follow the data, the blocking and the budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main
from scalenmf.planner import WORKER_BASELINE_BYTES


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    X = np.random.default_rng(0).poisson(2.0, (60, 900)).astype(np.float32)
    scalenmf.write_matrix(tmp_path / "x.zarr", X, block_cols=100)
    return tmp_path / "x.zarr"


def test_plan_matches_the_fit_blocking_and_sizes(store: Path) -> None:
    p = scalenmf.plan(store, 5, workers=3)
    src = scalenmf.open_matrix(store)
    assert p.n_blocks == src.n_blocks and p.shape == (60, 900)
    assert p.x_bytes == 60 * 900 * 4 and p.h_bytes == 5 * 900 * 4
    assert p.memory_per_worker_bytes == sum(p.memory_breakdown.values())
    assert p.memory_breakdown["x_resident"] == -(-p.x_bytes // 3)
    assert p.seconds_per_iteration > 0 and p.probe["probed_columns"] > 0
    fit = scalenmf.nmf(store, 5, max_iter=2)
    assert fit.info["n_blocks"] == p.n_blocks


def test_memory_budget_decides_residency_and_worker_count(store: Path) -> None:
    roomy = scalenmf.plan(store, 5, memory_limit="4GB")
    assert roomy.resident and roomy.workers_for_resident == 1
    tight = scalenmf.plan(store, 5, memory_limit=WORKER_BASELINE_BYTES * 2 + 100_000, workers=1)
    assert tight.workers_for_resident is not None and tight.workers_for_resident > 1
    assert not tight.resident and tight.memory_breakdown["x_resident"] == 0
    more = scalenmf.plan(store, 5, memory_limit=WORKER_BASELINE_BYTES * 2 + 100_000)
    assert more.workers >= 1 and more.workers <= more.n_blocks


def test_plan_sparse_and_runs(tmp_path: Path) -> None:
    X = sp.random(50, 700, density=0.1, random_state=1, format="csc") * 10
    scalenmf.write_matrix(tmp_path / "s.zarr", X, block_cols=100)
    one = scalenmf.plan(tmp_path / "s.zarr", 4, workers=2)
    three = scalenmf.plan(tmp_path / "s.zarr", 4, workers=2, n_runs=3)
    assert one.sparse and three.h_bytes == 3 * one.h_bytes


def test_cli_plan_text_json_and_errors(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["plan", str(store), "-k", "5", "--workers", "2"])
    assert text.exit_code == 0, text.output
    assert "memory per worker" in text.output and "time per iteration" in text.output
    out = runner.invoke(main, ["plan", str(store), "-k", "5", "--json"])
    assert json.loads(out.output)["k"] == 5
    bad = runner.invoke(main, ["plan", str(store), "-k", "61"])
    assert bad.exit_code == 1 and "min(m, n)" in bad.output
    missing = runner.invoke(main, ["plan", str(tmp_path / "nope.zarr"), "-k", "2"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert not [p for p in tmp_path.iterdir() if p.name != "x.zarr"]
