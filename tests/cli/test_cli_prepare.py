"""``scalenmf prepare``: the preparation steps from the command line, streamed into a store
that ``scalenmf fit`` reads; the same values as the Python functions (and scanpy's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scalenmf
from scalenmf import pp
from scalenmf.cli.main import main

pytest.importorskip("skmisc")


def run(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def genes_by_cells(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(-0.5, 1.2, (300, 1))
    depth = rng.gamma(4.0, 0.25, (1, 250))
    shape = np.where(rng.random((300, 1)) < 0.2, 0.5, 20.0)
    return rng.poisson(rng.gamma(shape, mu * depth / shape)).astype(np.float64)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "counts.zarr"
    X = genes_by_cells()
    scalenmf.write_matrix(
        str(path),
        sp.csc_matrix(X),
        block_cols=60,
        row_labels=np.array([f"g{i}" for i in range(X.shape[0])]),
        col_labels=np.array([f"c{j}" for j in range(X.shape[1])]),
    )
    return path


def test_prepare_writes_the_steps_result_and_the_gene_table(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared.zarr"
    res = run(
        "prepare", store, "-o", out, "--normalize", "total", "--top-genes", 50, "--scale-features"
    )
    assert res.exit_code == 0, res.output
    assert "top 50 genes (seurat_v3)" in res.output and "50×250" in res.output
    table = pd.read_csv(f"{out}.genes.csv", index_col="gene")
    assert int(table["highly_variable"].sum()) == 50
    expected_table = pp.highly_variable_genes(str(store), 50)
    np.testing.assert_array_equal(
        table["highly_variable"].to_numpy(), expected_table["highly_variable"].to_numpy()
    )
    expected = pp.scale_features(pp.subset_genes(pp.normalize_total(str(store)), expected_table))
    got = scalenmf.open_matrix(str(out))
    assert got.shape == expected.shape == (50, 250)
    assert list(got.row_labels) == list(expected.row_labels)

    def dense(src: object) -> np.ndarray:
        parts = [src.read_block(j) for j in range(src.n_blocks)]
        return np.hstack([p.toarray() if sp.issparse(p) else np.asarray(p) for p in parts])

    np.testing.assert_allclose(dense(got), dense(expected), rtol=1e-6)
    fitted = run(
        "fit",
        out,
        "-k",
        3,
        "-o",
        tmp_path / "fit.zarr",
        "--max-iter",
        5,
        "--no-progress",
        "--no-checkpoint",
    )
    assert fitted.exit_code == 0, fitted.output


def test_prepare_cnmf_flavor_and_errors(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.zarr"
    res = run("prepare", store, "-o", out, "--top-genes", 40, "--flavor", "cnmf")
    assert res.exit_code == 0, res.output
    assert scalenmf.open_matrix(str(out)).shape == (40, 250)
    again = run("prepare", store, "-o", out, "--top-genes", 40)
    assert again.exit_code != 0 and "already exists" in again.output
    nothing = run("prepare", store, "-o", tmp_path / "q.zarr")
    assert nothing.exit_code != 0 and "nothing to do" in nothing.output
    assert not (tmp_path / "q.zarr").exists()
    clip = run("prepare", store, "-o", tmp_path / "r.zarr", "--max-value", 3)
    assert clip.exit_code != 0 and "needs --scale-features" in clip.output
    missing = run("prepare", tmp_path / "nope.zarr", "-o", tmp_path / "s.zarr", "--top-genes", 5)
    assert missing.exit_code != 0 and "does not exist" in missing.output
