"""End-to-end runs of the ``scalenmf`` command line (in-process through click's runner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main


@pytest.fixture()
def counts() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.poisson(rng.gamma(1.0, 1.0, (30, 3)) @ rng.gamma(1.0, 1.0, (3, 80)) * 4).astype(
        float
    )


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_fit_npy_writes_store_equal_to_api(tmp_path: Path, counts: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", counts)
    out = tmp_path / "out.zarr"
    res = run(
        "fit", tmp_path / "x.npy", "-k", 3, "-o", out, "--max-iter", 40, "--tol", 0, "--no-progress"
    )
    assert res.exit_code == 0, res.output
    assert "relative error" in res.output and "k=3" in res.output
    saved = scalenmf.load(out)
    direct = scalenmf.nmf(counts, 3, max_iter=40, tol=0)
    np.testing.assert_allclose(saved.W, direct.W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(saved.H, direct.H, rtol=1e-10, atol=1e-12)
    assert saved.n_iter == 40 and saved.params["solver"] == "als"
    assert len(saved.loss_history) == 40


@pytest.mark.parametrize(
    "solver,loss", [("als", "frobenius"), ("hals", "frobenius"), ("mu", "frobenius"), ("mu", "kl")]
)
def test_fit_zarr_dense_and_sparse(
    tmp_path: Path, counts: np.ndarray, solver: str, loss: str
) -> None:
    dense = tmp_path / "dense.zarr"
    sparse = tmp_path / "sparse.zarr"
    scalenmf.write_matrix(dense, counts, block_cols=17)
    scalenmf.write_matrix(sparse, sp.csc_matrix(counts), block_cols=17)
    outs = []
    for name, store in (("d", dense), ("s", sparse)):
        out = tmp_path / f"{name}.zarr"
        res = run(
            "fit",
            store,
            "-k",
            3,
            "-o",
            out,
            "--solver",
            solver,
            "--loss",
            loss,
            "--max-iter",
            15,
            "--tol",
            0,
            "--l1-h",
            0.1,
            "--no-progress",
        )
        assert res.exit_code == 0, res.output
        outs.append(scalenmf.load(out))
    assert outs[0].params["loss"] == loss
    np.testing.assert_allclose(outs[0].W, outs[1].W, rtol=1e-3, atol=1e-6)


def test_fit_transpose_reads_samples_by_features(tmp_path: Path, counts: np.ndarray) -> None:
    np.save(tmp_path / "xt.npy", counts.T)
    out = tmp_path / "t.zarr"
    res = run(
        "fit",
        tmp_path / "xt.npy",
        "-k",
        2,
        "-o",
        out,
        "--transpose",
        "--max-iter",
        10,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    saved = scalenmf.load(out)
    assert saved.W.shape == (30, 2) and saved.H.shape == (2, 80)


def test_fit_refuses_existing_output_and_overwrites_on_request(
    tmp_path: Path, counts: np.ndarray
) -> None:
    np.save(tmp_path / "x.npy", counts)
    out = tmp_path / "o.zarr"
    assert (
        run(
            "fit", tmp_path / "x.npy", "-k", 2, "-o", out, "--max-iter", 5, "--no-progress"
        ).exit_code
        == 0
    )
    again = run("fit", tmp_path / "x.npy", "-k", 2, "-o", out, "--max-iter", 5, "--no-progress")
    assert again.exit_code != 0 and "already exists" in again.output
    over = run(
        "fit",
        tmp_path / "x.npy",
        "-k",
        3,
        "-o",
        out,
        "--max-iter",
        5,
        "--overwrite",
        "--no-progress",
    )
    assert over.exit_code == 0, over.output
    assert scalenmf.load(out).k == 3


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda c: -c, "negative"),
        (lambda c: np.where(c > 5, np.nan, c), "NaN"),
        (lambda c: np.where(c > 5, np.inf, c), "infinite"),
        (lambda c: np.zeros_like(c), "all zeros"),
    ],
)
def test_bad_values_fail_cleanly(tmp_path: Path, counts: np.ndarray, make, message: str) -> None:
    np.save(tmp_path / "bad.npy", make(counts))
    out = tmp_path / "bad.zarr"
    res = run("fit", tmp_path / "bad.npy", "-k", 2, "-o", out, "--no-progress")
    assert res.exit_code == 1
    assert message in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.zarr")]


@pytest.mark.parametrize("k,message", [(0, "k must be"), (31, "min(m, n)"), (-2, "k must be")])
def test_rank_out_of_range(tmp_path: Path, counts: np.ndarray, k: int, message: str) -> None:
    np.save(tmp_path / "x.npy", counts)
    res = run("fit", tmp_path / "x.npy", "-k", k, "-o", tmp_path / "o.zarr", "--no-progress")
    assert res.exit_code != 0 and message in res.output
    assert not (tmp_path / "o.zarr").exists()


def test_missing_and_corrupt_inputs(tmp_path: Path) -> None:
    res = run("fit", tmp_path / "nope.zarr", "-k", 2, "-o", tmp_path / "o.zarr")
    assert res.exit_code != 0 and "does not exist" in res.output
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("{not json")
    res = run("fit", junk, "-k", 2, "-o", tmp_path / "o.zarr", "--no-progress")
    assert res.exit_code == 1 and "junk.zarr" in res.output
    (tmp_path / "x.weird").write_text("1,2\n")
    res = run("fit", tmp_path / "x.weird", "-k", 1, "-o", tmp_path / "o.zarr", "--no-progress")
    assert res.exit_code == 1 and "format" in res.output
    assert not (tmp_path / "o.zarr").exists()


def test_both_scheduler_and_workers_is_a_usage_error(tmp_path: Path, counts: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", counts)
    res = run(
        "fit",
        tmp_path / "x.npy",
        "-k",
        2,
        "-o",
        tmp_path / "o.zarr",
        "--workers",
        2,
        "--scheduler",
        "tcp://127.0.0.1:1",
    )
    assert res.exit_code == 2 and "not both" in res.output


def test_fit_with_local_cluster_workers(tmp_path: Path, counts: np.ndarray) -> None:
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, counts, block_cols=20)
    out = tmp_path / "o.zarr"
    res = run(
        "fit",
        store,
        "-k",
        3,
        "-o",
        out,
        "--workers",
        2,
        "--max-iter",
        12,
        "--tol",
        0,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    local = scalenmf.nmf(store, 3, max_iter=12, tol=0)
    np.testing.assert_allclose(scalenmf.load(out).W, local.W, rtol=1e-8, atol=1e-10)
    assert scalenmf.load(out).info["executor"] == "dask"


def test_demo_runs_and_names_signatures(tmp_path: Path) -> None:
    out = tmp_path / "demo.zarr"
    res = run("demo", "-o", out, "--samples", 200)
    assert res.exit_code == 0, res.output
    assert "COSMIC" in res.output and "cosine" in res.output
    saved = scalenmf.load(out)
    assert saved.W.shape == (96, 6)
    matches = saved.info["demo"]["matches"]
    planted = set(saved.info["demo"]["planted"])
    assert sum(m["match"] in planted and m["cosine"] > 0.85 for m in matches) >= 5
