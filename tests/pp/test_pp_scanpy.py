"""The preparation steps against scanpy itself (and cNMF's v-score against its own code):
the same genes and the same values, in memory (AnnData) and streamed from a store."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf import pp

ad = pytest.importorskip("anndata")
sc = pytest.importorskip("scanpy")
pytest.importorskip("skmisc")

SEURAT_COLUMNS = ("means", "variances", "variances_norm")


def cells_by_genes(n_cells: int = 400, n_genes: int = 600, seed: int = 0) -> np.ndarray:
    """Negative-binomial-like counts: gene means spread over decades, some genes overdispersed,
    two all-zero genes and one constant gene (as real data have)."""
    rng = np.random.default_rng(seed)
    depth = rng.gamma(4.0, 0.25, (n_cells, 1))
    mu = rng.lognormal(-1.0, 1.5, (1, n_genes))
    shape = np.where(rng.random(n_genes) < 0.15, 0.5, 20.0)
    lam = rng.gamma(shape, mu * depth / shape)
    X = rng.poisson(lam).astype(np.float64)
    X[:, 5] = 0.0
    X[:, 17] = 0.0
    X[:, 9] = 3.0
    return X


def adata_of(X: np.ndarray, sparse: bool) -> ad.AnnData:
    a = ad.AnnData(sp.csr_matrix(X) if sparse else X.copy())
    a.obs_names = [f"cell{i}" for i in range(X.shape[0])]
    a.var_names = [f"gene{j}" for j in range(X.shape[1])]
    return a


def assert_seurat_equal(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    np.testing.assert_array_equal(
        ours["highly_variable"].to_numpy(), theirs["highly_variable"].to_numpy()
    )
    np.testing.assert_array_equal(
        ours["highly_variable_rank"].to_numpy(), theirs["highly_variable_rank"].to_numpy()
    )
    for col in SEURAT_COLUMNS:
        np.testing.assert_allclose(ours[col].to_numpy(), theirs[col].to_numpy(), rtol=1e-9)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_seurat_v3_marks_the_genes_scanpy_marks(sparse: bool) -> None:
    X = cells_by_genes()
    theirs, ours = adata_of(X, sparse), adata_of(X, sparse)
    sc.pp.highly_variable_genes(theirs, n_top_genes=150, flavor="seurat_v3")
    assert pp.highly_variable_genes(ours, 150, flavor="seurat_v3") is None
    assert int(ours.var["highly_variable"].sum()) == 150
    assert_seurat_equal(ours.var, theirs.var)
    assert ours.uns["hvg"] == theirs.uns["hvg"] == {"flavor": "seurat_v3"}
    # An AnnData's obs / var and X are left as they were (only var gains columns).
    np.testing.assert_array_equal(ours.X.toarray() if sparse else ours.X, X)


def test_seurat_v3_streamed_from_a_store_and_subset(tmp_path: Path) -> None:
    X = cells_by_genes(seed=3)
    theirs = adata_of(X, sparse=True)
    sc.pp.highly_variable_genes(theirs, n_top_genes=100, flavor="seurat_v3")
    store = tmp_path / "genes_by_cells.zarr"
    scalenmf.write_matrix(
        str(store),
        sp.csc_matrix(X.T),
        block_cols=64,  # several blocks: the two passes are streamed
        row_labels=np.asarray(theirs.var_names),
        col_labels=np.asarray(theirs.obs_names),
    )
    table = pp.highly_variable_genes(str(store), 100, flavor="seurat_v3")
    assert list(table.index) == list(theirs.var_names)
    assert_seurat_equal(table, theirs.var)
    kept = pp.subset_genes(str(store), table)
    assert kept.shape == (100, X.shape[0])
    assert list(kept.row_labels) == list(theirs.var_names[theirs.var["highly_variable"]])
    dense = np.hstack(
        [np.asarray(sp.csc_matrix(kept.read_block(j)).toarray()) for j in range(kept.n_blocks)]
    )
    np.testing.assert_array_equal(dense, X.T[theirs.var["highly_variable"].to_numpy()])


def test_seurat_v3_subset_in_place_and_layer() -> None:
    X = cells_by_genes(seed=5)
    theirs = adata_of(X, sparse=False)
    sc.pp.highly_variable_genes(theirs, n_top_genes=80, flavor="seurat_v3", subset=True)
    ours = adata_of(np.zeros_like(X), sparse=False)
    ours.layers["counts"] = X.copy()
    pp.highly_variable_genes(ours, 80, layer="counts", subset=True)
    assert list(ours.var_names) == list(theirs.var_names)
    assert ours.n_vars == 80


def test_seurat_v3_warns_on_non_integers_like_scanpy() -> None:
    X = cells_by_genes(seed=1) * 0.5
    with pytest.warns(UserWarning, match="non-integers"):
        pp.highly_variable_genes(adata_of(X, sparse=False), 50)


def test_normalize_total_and_scale_give_scanpy_values(tmp_path: Path) -> None:
    X = cells_by_genes(seed=2)
    X[11] = 0.0  # an empty cell stays empty
    for sparse in (False, True):
        theirs, ours = adata_of(X, sparse), adata_of(X, sparse)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.normalize_total(theirs)
            sc.pp.scale(theirs, zero_center=False)
        pp.normalize_total(ours)
        pp.scale_features(ours)
        a = theirs.X.toarray() if sp.issparse(theirs.X) else theirs.X
        b = ours.X.toarray() if sp.issparse(ours.X) else ours.X
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)
        # target_sum and max_value as scanpy takes them
        theirs, ours = adata_of(X, sparse), adata_of(X, sparse)
        sc.pp.normalize_total(theirs, target_sum=1e4)
        sc.pp.scale(theirs, zero_center=False, max_value=4.0)
        pp.normalize_total(ours, 1e4)
        pp.scale_features(ours, max_value=4.0)
        a = theirs.X.toarray() if sp.issparse(theirs.X) else theirs.X
        b = ours.X.toarray() if sp.issparse(ours.X) else ours.X
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)
    # Streamed from a store (genes × cells): the same values as scanpy's in memory.
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(str(store), X.T, block_cols=50)
    prepared = pp.scale_features(pp.normalize_total(str(store)))
    streamed = np.hstack([prepared.read_block(j) for j in range(prepared.n_blocks)])
    theirs = adata_of(X, sparse=False)
    sc.pp.normalize_total(theirs)
    sc.pp.scale(theirs, zero_center=False)
    np.testing.assert_allclose(streamed, theirs.X.T, rtol=1e-6, atol=1e-9)


def cnmf_reference(expression: np.ndarray, numgenes: int) -> pd.DataFrame:
    """cNMF's ``get_highvar_genes_sparse`` (cnmf/cnmf.py), as written there."""
    expression = sp.csr_matrix(expression)
    gene_mean = np.array(expression.mean(axis=0)).astype(float).reshape(-1)
    E2 = expression.copy()
    E2.data **= 2
    gene2_mean = np.array(E2.mean(axis=0)).reshape(-1)
    gene_var = pd.Series(gene2_mean - (gene_mean**2))
    gene_mean = pd.Series(gene_mean)
    gene_fano = gene_var / gene_mean
    top_genes = gene_mean.sort_values(ascending=False)[:20].index
    A = (np.sqrt(gene_var) / gene_mean)[top_genes].min()
    w_mean_low, w_mean_high = gene_mean.quantile([0.10, 0.90])
    w_fano_low, w_fano_high = gene_fano.quantile([0.10, 0.90])
    winsor_box = (
        (gene_fano > w_fano_low)
        & (gene_fano < w_fano_high)
        & (gene_mean > w_mean_low)
        & (gene_mean < w_mean_high)
    )
    fano_median = gene_fano[winsor_box].median()
    B = np.sqrt(fano_median)
    gene_expected_fano = (A**2) * gene_mean + (B**2)
    fano_ratio = gene_fano / gene_expected_fano
    highvargenes = fano_ratio.sort_values(ascending=False).index[:numgenes]
    return pd.DataFrame(
        {
            "mean": gene_mean,
            "var": gene_var,
            "fano": gene_fano,
            "expected_fano": gene_expected_fano,
            "high_var": fano_ratio.index.isin(highvargenes),
            "fano_ratio": fano_ratio,
        }
    )


def test_cnmf_v_score_matches_cnmf(tmp_path: Path) -> None:
    X = cells_by_genes(seed=4)
    tpm = adata_of(X, sparse=True)
    pp.normalize_total(tpm, 1e6)  # cNMF ranks counts per million
    ref = cnmf_reference(tpm.X, 120)
    with np.errstate(divide="ignore", invalid="ignore"):
        pp.highly_variable_genes(tpm, 120, flavor="cnmf")
    var = tpm.var
    np.testing.assert_array_equal(var["highly_variable"].to_numpy(), ref["high_var"].to_numpy())
    for ours, theirs in [
        ("means", "mean"),
        ("variances", "var"),
        ("fano", "fano"),
        ("expected_fano", "expected_fano"),
        ("fano_ratio", "fano_ratio"),
    ]:
        np.testing.assert_allclose(var[ours].to_numpy(), ref[theirs].to_numpy(), rtol=1e-8)
    assert tpm.uns["hvg"]["flavor"] == "cnmf" and tpm.uns["hvg"]["A"] > 0
    ranks = var["highly_variable_rank"].to_numpy()
    top = np.argsort(-np.nan_to_num(ref["fano_ratio"].to_numpy(), nan=-np.inf))[:120]
    np.testing.assert_array_equal(ranks[top], np.arange(120))
    # Streamed from a store, the same genes.
    store = tmp_path / "tpm.zarr"
    scalenmf.write_matrix(str(store), sp.csc_matrix(tpm.X.T), block_cols=70)
    table = pp.highly_variable_genes(str(store), 120, flavor="cnmf")
    np.testing.assert_array_equal(table["highly_variable"].to_numpy(), ref["high_var"].to_numpy())


def test_bad_arguments_are_one_clear_line() -> None:
    a = adata_of(cells_by_genes(seed=6), sparse=False)
    with pytest.raises(ValueError, match="flavor must be one of seurat_v3, cnmf"):
        pp.highly_variable_genes(a, 10, flavor="seurat")
    with pytest.raises(ValueError, match="n_top_genes must be a positive integer"):
        pp.highly_variable_genes(a, 0)
    with pytest.raises(ValueError, match="n_top_genes must be a positive integer"):
        pp.highly_variable_genes(a, 2.5)
    with pytest.raises(ValueError, match="layer= names a layer"):
        pp.highly_variable_genes(np.ones((5, 5)), 2, layer="counts")
    with pytest.raises(ValueError, match="no layer 'raw'"):
        pp.highly_variable_genes(a, 10, layer="raw")
