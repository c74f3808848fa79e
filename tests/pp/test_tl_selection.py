"""Rank survey and consensus of an AnnData object: tables under uns, clusters as obs
categoricals, everything writable to .h5ad and .zarr; and ``fit --anndata-out``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf

ad = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")

OPTS = {"max_iter": 60, "tol": 1e-5, "seed": 1}


def clustered_adata() -> ad.AnnData:
    """90 cells in 3 groups, each expressing its own block of 12 genes (cells × genes)."""
    rng = np.random.default_rng(0)
    H = np.zeros((3, 90))
    for c in range(3):
        H[c, 30 * c : 30 * (c + 1)] = rng.gamma(4.0, 1.0, 30)
    W = np.full((36, 3), 0.05)
    for c in range(3):
        W[12 * c : 12 * (c + 1), c] = rng.gamma(4.0, 1.0, 12)
    counts = rng.poisson(4.0 * W @ H).T.astype(np.float32)
    return ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(90)]),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(36)]),
    )


def test_tl_rank_survey_stores_tables_and_clusters(tmp_path: Path) -> None:
    adata = clustered_adata()
    assert scalenmf.tl.rank_survey(adata, "2-4", 4, **OPTS) is None
    uns = adata.uns["nmf_survey"]
    summary = uns["summary"]
    assert isinstance(summary, pd.DataFrame)
    assert list(summary["k"]) == [2, 3, 4] and "cophenetic" in summary.columns
    assert list(uns["ks"]) == [2, 3, 4] and int(uns["suggestion"]["k"]) in (2, 3, 4)
    assert len(uns["runs"]) >= 3 * 4
    for k in (2, 3, 4):
        col = adata.obs[f"nmf_survey_k{k}"]
        assert isinstance(col.dtype, pd.CategoricalDtype)
        assert list(col.cat.categories) == [str(c) for c in range(1, k + 1)]
    k3 = adata.obs["nmf_survey_k3"].astype(str).to_numpy()
    # The three groups of cells are the three clusters at k = 3.
    assert all(len(set(k3[30 * c : 30 * (c + 1)])) == 1 for c in range(3))
    assert len(set(k3)) == 3
    for path in (tmp_path / "s.h5ad", tmp_path / "s.zarr"):
        (adata.write_h5ad if path.suffix == ".h5ad" else adata.write_zarr)(path)
        back = ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)
        pd.testing.assert_frame_equal(
            back.uns["nmf_survey"]["summary"], summary, check_dtype=False, check_index_type=False
        )
        assert list(back.obs["nmf_survey_k3"].astype(str)) == list(k3)


def test_tl_consensus_stores_clusters_factors_and_summary(tmp_path: Path) -> None:
    adata = clustered_adata()
    other = scalenmf.tl.consensus(adata, 3, 6, copy=True, **OPTS)
    assert "nmf_consensus_cluster" not in adata.obs
    clusters = other.obs["nmf_consensus_cluster"]
    assert isinstance(clusters.dtype, pd.CategoricalDtype)
    labels = clusters.astype(str).to_numpy()
    assert all(len(set(labels[30 * c : 30 * (c + 1)])) == 1 for c in range(3))
    assert other.obsm["X_nmf_consensus"].shape == (90, 3)
    assert other.varm["nmf_consensus_W"].shape == (36, 3)
    uns = other.uns["nmf_consensus"]
    assert uns["k"] == 3 and uns["n_runs"] == 6 and uns["cophenetic"] > 0.9
    assert len(uns["runs"]) == 6 and isinstance(uns["runs"], pd.DataFrame)
    assert np.all(
        (other.obs["nmf_consensus_confidence"] >= 0) & (other.obs["nmf_consensus_confidence"] <= 1)
    )
    path = tmp_path / "c.h5ad"
    other.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert list(back.obs["nmf_consensus_cluster"].astype(str)) == list(labels)


def test_result_round_trips_through_anndata_zarr(tmp_path: Path) -> None:
    adata = clustered_adata()
    res = scalenmf.nmf(adata, 3, **OPTS)
    out = res.to_anndata()
    out.write_zarr(tmp_path / "r.zarr")
    back = ad.read_zarr(tmp_path / "r.zarr")
    np.testing.assert_allclose(back.obsm["X_nmf"], res.H.T)
    np.testing.assert_allclose(back.varm["nmf_W"], res.W)
    assert list(back.var_names) == list(adata.var_names)
    W, H = res.to_pandas()
    np.testing.assert_allclose(W.to_numpy() @ H.to_numpy(), res.W @ res.H)


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_cli_fit_anndata_out(tmp_path: Path, suffix: str) -> None:
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    adata = clustered_adata()
    src = tmp_path / "cells.h5ad"
    adata.write_h5ad(src)
    out = tmp_path / f"cells_nmf{suffix}"

    def fit(*extra: object) -> object:
        args = [
            "fit",
            src,
            "-k",
            3,
            "-o",
            tmp_path / "fit.zarr",
            "--max-iter",
            30,
            "--no-progress",
            "--no-checkpoint",
            "--anndata-out",
            out,
            *extra,
        ]
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    res = fit()
    assert res.exit_code == 0, res.output
    back = ad.read_h5ad(out) if suffix == ".h5ad" else ad.read_zarr(out)
    saved = scalenmf.load(str(tmp_path / "fit.zarr"))
    np.testing.assert_allclose(back.obsm["X_nmf"], saved.H.T, rtol=1e-6)
    np.testing.assert_allclose(back.varm["nmf_W"], saved.W, rtol=1e-6)
    assert list(back.obs_names) == list(adata.obs_names)
    assert list(back.var_names) == list(adata.var_names)
    again = fit()
    assert again.exit_code != 0 and "already exists" in again.output
    assert fit("--overwrite").exit_code == 0


def test_cli_fit_anndata_out_refuses_a_bad_suffix_before_fitting(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    X = tmp_path / "x.npy"
    np.save(X, np.random.default_rng(0).poisson(3.0, (20, 30)).astype(float))
    res = CliRunner().invoke(
        main,
        [
            "fit",
            str(X),
            "-k",
            "2",
            "-o",
            str(tmp_path / "f.zarr"),
            "--anndata-out",
            str(tmp_path / "f.csv"),
            "--no-progress",
            "--no-checkpoint",
        ],
    )
    assert res.exit_code != 0 and "neither .h5ad nor .zarr" in res.output
    assert not (tmp_path / "f.zarr").exists()


def test_cli_fit_anndata_out_must_not_be_the_result_store(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    X = tmp_path / "x.npy"
    np.save(X, np.random.default_rng(0).poisson(3.0, (20, 30)).astype(float))
    out = str(tmp_path / "f.zarr")
    res = CliRunner().invoke(
        main, ["fit", str(X), "-k", "2", "-o", out, "--anndata-out", out, "--no-progress"]
    )
    assert res.exit_code != 0 and "also the result store" in res.output
