"""Preparation steps: scanpy's formulas, in memory (AnnData) and streamed (stores, sources)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf import pp

ad = pytest.importorskip("anndata")


def counts(seed: int = 0) -> np.ndarray:
    """Cells × genes counts, with one empty cell and one constant gene."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(1.0, 2.0, (60, 1)) * rng.gamma(0.7, 1.0, (1, 25))).astype(float)
    X[7] = 0.0
    X[:, 3] = 2.0
    X[7, 3] = 0.0
    return X


def expected_normalized(X: np.ndarray, target: float | None = None) -> np.ndarray:
    # sc.pp.normalize_total: cells scaled to target (default: median of non-zero totals)
    totals = X.sum(axis=1)
    target = np.median(totals[totals > 0]) if target is None else target
    factor = np.where(totals > 0, totals / target, 1.0)
    return X / factor[:, None]


def expected_scaled(X: np.ndarray, max_value: float | None = None) -> np.ndarray:
    # sc.pp.scale(zero_center=False): divide by the ddof=1 std; zero-variance genes kept
    std = X.std(axis=0, ddof=1)
    std[std == 0] = 1.0
    out = X / std
    return out if max_value is None else np.minimum(out, max_value)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_anndata_in_place_matches_the_formulas(sparse):
    X = counts()
    adata = ad.AnnData(sp.csr_matrix(X) if sparse else X.copy())
    assert pp.normalize_total(adata) is None
    got = adata.X.toarray() if sparse else adata.X
    np.testing.assert_allclose(got, expected_normalized(X), rtol=1e-12)
    pp.scale_features(adata, max_value=5.0)
    got = adata.X.toarray() if sparse else adata.X
    np.testing.assert_allclose(got, expected_scaled(expected_normalized(X), 5.0), rtol=1e-10)
    assert np.all(got[7] == 0)  # the empty cell stays empty


def test_layer_and_target_sum():
    X = counts()
    adata = ad.AnnData(X.copy(), layers={"raw": X.copy()})
    pp.normalize_total(adata, target_sum=1e4, layer="raw")
    np.testing.assert_allclose(adata.layers["raw"], expected_normalized(X, 1e4), rtol=1e-12)
    np.testing.assert_array_equal(adata.X, X)
    with pytest.raises(ValueError, match="target_sum must be positive"):
        pp.normalize_total(adata, target_sum=0)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_streamed_from_a_store_matches_in_memory(tmp_path: Path, sparse):
    X = counts()  # cells × genes
    genes_by_cells = sp.csc_matrix(X.T) if sparse else np.ascontiguousarray(X.T)
    store = tmp_path / "cells.zarr"
    scalenmf.write_matrix(store, genes_by_cells, block_cols=16)
    by_path = pp.normalize_total(str(store))
    assert by_path is not None
    # several blocks, so the statistics really are merged across blocks
    prepared = pp.scale_features(pp.normalize_total(scalenmf.open_matrix(str(store)).reblock(16)))
    assert prepared is not None and prepared.n_blocks == 4
    np.testing.assert_allclose(by_path.col_scale, prepared.base.col_scale, rtol=1e-12)
    streamed = np.hstack(
        [
            (b.toarray() if sp.issparse(b) else b)
            for b in (prepared.read_block(j) for j in range(prepared.n_blocks))
        ]
    )
    np.testing.assert_allclose(streamed, expected_scaled(expected_normalized(X)).T, rtol=1e-10)
    # the fit reads the prepared blocks as it would the prepared matrix
    fit = {"solver": "hals", "max_iter": 30, "tol": 0.0, "seed": 1, "block_cols": 16}
    a = scalenmf.nmf(prepared, 3, **fit)
    b = scalenmf.nmf(expected_scaled(expected_normalized(X)).T.copy(), 3, **fit)
    np.testing.assert_allclose(a.W @ a.H, b.W @ b.H, rtol=1e-6, atol=1e-8)


def test_gene_variance_is_accurate_with_a_large_mean():
    rng = np.random.default_rng(2)
    X = 1e8 + rng.normal(0.0, 1.0, (5, 400))  # genes × cells
    _, var = pp.gene_mean_var(scalenmf.open_matrix(X).reblock(50))
    np.testing.assert_allclose(var, X.var(axis=1, ddof=1), rtol=1e-6)
