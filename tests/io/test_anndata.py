"""AnnData in, factors stored in it: scalenmf.nmf(adata), scalenmf.tl.nmf, to_anndata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.io import InputError
from scalenmf.io.anndata import anndata_source

ad = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")

FIT = {"solver": "hals", "max_iter": 40, "tol": 0.0, "seed": 3}


def make_adata(sparse: bool = True) -> ad.AnnData:
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(1.0, 1.0, (80, 4)) @ rng.gamma(0.5, 2.0, (4, 30)))
    X = sp.csr_matrix(counts.astype(np.float32)) if sparse else counts.astype(np.float64)
    adata = ad.AnnData(
        X=X,
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(80)]),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(30)]),
    )
    adata.layers["double"] = 2.0 * counts.astype(np.float64)
    return adata


def dense(adata: ad.AnnData) -> np.ndarray:
    X = adata.X
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


@pytest.mark.parametrize("sparse", [True, False], ids=["csr", "dense"])
def test_nmf_of_anndata_matches_the_transposed_matrix(sparse):
    adata = make_adata(sparse)
    res = scalenmf.nmf(adata, 4, **FIT)
    X = adata.X
    ref = scalenmf.nmf(sp.csc_matrix(X.T) if sparse else np.ascontiguousarray(X.T), 4, **FIT)
    np.testing.assert_allclose(res.W, ref.W, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res.H, ref.H, rtol=1e-6, atol=1e-8)
    assert list(res.row_labels) == list(adata.var_names)
    assert list(res.col_labels) == list(adata.obs_names)


def test_source_is_a_transposed_view_not_a_copy():
    adata = make_adata(sparse=False)
    src = anndata_source(adata)
    assert src.shape == (30, 80)
    assert np.shares_memory(src.read_block(0), adata.X)
    csr = make_adata(sparse=True)
    sparse_src = anndata_source(csr)
    assert sparse_src.is_sparse  # CSR cells × genes is CSC genes × cells: the same arrays
    assert np.shares_memory(sparse_src._X.data, csr.X.data)


def test_layer_and_bad_layer():
    adata = make_adata()
    res = scalenmf.nmf(adata, 4, layer="double", **FIT)
    base = scalenmf.nmf(2.0 * dense(adata).T, 4, **FIT)
    np.testing.assert_allclose(res.W @ res.H, base.W @ base.H, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match=r"no layer 'raw'.*'double'"):
        scalenmf.nmf(adata, 4, layer="raw")
    with pytest.raises(ValueError, match="layer= names a layer of an AnnData"):
        scalenmf.nmf(dense(adata).T, 4, layer="double")


def test_tl_nmf_writes_obsm_varm_uns(tmp_path: Path):
    adata = make_adata()
    assert scalenmf.tl.nmf(adata, 4, **FIT) is None
    res = scalenmf.nmf(adata, 4, **FIT)
    np.testing.assert_allclose(adata.obsm["X_nmf"], res.H.T)
    np.testing.assert_allclose(adata.varm["nmf_W"], res.W)
    uns = adata.uns["nmf"]
    assert uns["n_iter"] == 40 and uns["params"]["k"] == 4
    np.testing.assert_allclose(uns["loss_history"], res.loss_history)
    assert uns["relative_error"] == pytest.approx(res.relative_error)
    path = tmp_path / "fitted.h5ad"
    adata.write_h5ad(path)  # everything stored is writable
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.obsm["X_nmf"], res.H.T)
    other = scalenmf.tl.nmf(adata, 3, key_added="nmf3", copy=True, **FIT)
    assert other.obsm["X_nmf3"].shape == (80, 3) and "X_nmf3" not in adata.obsm


def test_backed_h5ad(tmp_path: Path):
    adata = make_adata()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    res = scalenmf.nmf(backed, 4, **FIT)
    ref = scalenmf.nmf(adata, 4, **FIT)
    np.testing.assert_allclose(res.W, ref.W, rtol=1e-5, atol=1e-7)
    assert list(res.col_labels) == list(adata.obs_names)
    scalenmf.tl.nmf(backed, 4, **FIT)
    np.testing.assert_allclose(backed.obsm["X_nmf"], ref.H.T, rtol=1e-5, atol=1e-7)
    backed.file.close()


def test_result_to_anndata_and_pandas_round_trip(tmp_path: Path):
    adata = make_adata()
    res = scalenmf.nmf(adata, 4, **FIT)
    W, H = res.to_pandas()
    assert list(W.index) == list(adata.var_names) and list(W.columns) == ["F1", "F2", "F3", "F4"]
    assert list(H.columns) == list(adata.obs_names)
    np.testing.assert_array_equal(W.to_numpy(), res.W)
    out = res.to_anndata()
    assert out.shape == (80, 30)
    path = tmp_path / "result.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.obsm["X_nmf"], res.H.T)
    np.testing.assert_allclose(back.varm["nmf_W"], res.W)
    np.testing.assert_allclose(back.uns["nmf"]["loss_history"], res.loss_history)
    assert list(back.obs_names) == list(adata.obs_names)
    with_x = res.to_anndata(dense(adata))
    np.testing.assert_array_equal(with_x.X, dense(adata))
