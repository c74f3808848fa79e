"""Preparation steps single-cell users run before NMF (cNMF's recipe), in memory or streamed.

Each function takes either an ``anndata.AnnData`` (cells × genes; modified in place, as
scanpy's ``sc.pp`` functions do) or anything ``scalenmf.nmf`` reads as genes × cells — a
store path, an array, a ``MatrixSource``. For the latter nothing is written: one pass over
the blocks computes the statistics (per-cell totals, per-gene variances) and the function
returns a ``PreparedSource`` that applies the scaling to every block as it is read, so a
matrix that does not fit in memory is normalised and scaled on the fly by the fit itself::

    prepared = scalenmf.pp.scale_features(scalenmf.pp.normalize_total("cells.zarr"))
    result = scalenmf.nmf(prepared, 10)

- ``normalize_total``: every cell scaled to the same total, by default the median total of
  the cells with any counts (``sc.pp.normalize_total``; cells with no counts stay 0).
- ``scale_features``: every gene divided by its standard deviation (ddof = 1) without
  centring, genes of zero variance left as they are, optional clipping at ``max_value``
  (``sc.pp.scale(zero_center=False)``, the cNMF recipe's last step).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.io.anndata import is_anndata
from scalenmf.io.matrix import as_source
from scalenmf.io.source import MatrixSource


class PreparedSource(MatrixSource):
    """A source whose blocks are scaled per column (cell) and per row (gene) when read.

    Parameters
    ----------
    base : MatrixSource, shape (m, n)
    col_scale : ndarray, shape (n,), optional
        Each column (cell) is multiplied by its factor.
    row_scale : ndarray, shape (m,), optional
        Each row (gene) is multiplied by its factor.
    clip : float, optional
        Values above it are set to it (after scaling).
    """

    def __init__(
        self,
        base: MatrixSource,
        col_scale: np.ndarray | None = None,
        row_scale: np.ndarray | None = None,
        clip: float | None = None,
    ):
        super().__init__()
        self.base = base
        self.shape = base.shape
        self.is_sparse = base.is_sparse
        self.dtype = np.dtype(base.dtype)
        self.block_bounds = list(base.block_bounds)
        self.col_scale = None if col_scale is None else np.asarray(col_scale, dtype=np.float64)
        self.row_scale = None if row_scale is None else np.asarray(row_scale, dtype=np.float64)
        self.clip = clip
        self.set_labels(base.row_labels, base.col_labels)

    @property
    def in_memory(self) -> bool:
        return False  # scaling costs a pass over the block: let the executor cache the result

    @property
    def nnz(self) -> int:
        return self.base.nnz

    def _read(self, start: int, stop: int) -> Block:
        block = self.base.read_columns(start, stop)
        cols = None if self.col_scale is None else self.col_scale[start:stop]
        if sp.issparse(block):
            out = sp.csc_matrix(block, dtype=np.float64, copy=True)
            if cols is not None:
                out = out @ sp.diags(cols)
            if self.row_scale is not None:
                out = sp.diags(self.row_scale) @ out
            out = sp.csc_matrix(out)
            if self.clip is not None:
                np.minimum(out.data, self.clip, out=out.data)
            return out.astype(self.dtype)
        out = np.array(block, dtype=np.float64)
        if cols is not None:
            out *= cols[None, :]
        if self.row_scale is not None:
            out *= self.row_scale[:, None]
        if self.clip is not None:
            np.minimum(out, self.clip, out=out)
        return out.astype(self.dtype, copy=False)


def _blocks(source: MatrixSource) -> Any:
    for j in range(source.n_blocks):
        yield source.block_bounds[j], source.read_block(j)


def cell_totals(source: MatrixSource) -> np.ndarray:
    """Column sums (per cell) of a genes × cells source, in one pass, float64."""
    totals = np.zeros(source.shape[1], dtype=np.float64)
    for (a, b), block in _blocks(source):
        totals[a:b] = np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
    return totals


def gene_mean_var(source: MatrixSource) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene (row) mean and variance (ddof = 1) over the cells, in one pass, float64.

    Dense blocks' sums of x and x² are taken about a first-block estimate of the mean,
    which keeps the one-pass variance accurate when the mean dwarfs the spread; sparse
    blocks are summed as stored (never densified), as scanpy's ``_get_mean_var`` does.
    """
    m, n = source.shape
    shift: np.ndarray | None = None
    s1 = np.zeros(m)
    s2 = np.zeros(m)
    for _, block in _blocks(source):
        if sp.issparse(block):
            csc = sp.csc_matrix(block, dtype=np.float64)
            if shift is None:
                shift = np.zeros(m)
            s1 += np.asarray(csc.sum(axis=1)).ravel()
            s2 += np.asarray(csc.multiply(csc).sum(axis=1)).ravel()
            continue
        dense = np.asarray(block, dtype=np.float64)
        if shift is None:
            shift = dense.mean(axis=1)
        d = dense - shift[:, None]
        s1 += d.sum(axis=1)
        s2 += np.einsum("ij,ij->i", d, d)
    if shift is None or n == 0:
        return np.zeros(m), np.zeros(m)
    mean = shift + s1 / n
    var = (s2 - s1 * s1 / n) / max(n - 1, 1)
    return mean, np.maximum(var, 0.0)


def _target(totals: np.ndarray, target_sum: float | None) -> float:
    if target_sum is not None:
        if not target_sum > 0:
            raise ValueError(f"target_sum must be positive; got {target_sum!r}")
        return float(target_sum)
    positive = totals[totals > 0]
    if positive.size == 0:
        raise ValueError("every cell has zero counts; there is nothing to normalise")
    return float(np.median(positive))


def _norm_factors(totals: np.ndarray, target: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        factors = np.where(totals > 0, target / np.where(totals > 0, totals, 1.0), 1.0)
    return factors


def _anndata_matrix(adata: Any, layer: str | None) -> tuple[Any, str]:
    if layer is None:
        return adata.X, "X"
    if layer not in adata.layers:
        raise ValueError(f"AnnData has no layer {layer!r}")
    return adata.layers[layer], layer


def _set_anndata_matrix(adata: Any, layer: str | None, value: Any) -> None:
    if layer is None:
        adata.X = value
    else:
        adata.layers[layer] = value


def _float(matrix: Any) -> Any:
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix, dtype=np.result_type(matrix.dtype, np.float32))
    return np.asarray(matrix, dtype=np.result_type(matrix.dtype, np.float32))


def normalize_total(
    data: Any, target_sum: float | None = None, *, layer: str | None = None
) -> PreparedSource | None:
    """Scale every cell to the same total count.

    Parameters
    ----------
    data : AnnData (cells × genes) or anything ``scalenmf.nmf`` reads (genes × cells)
    target_sum : float, optional
        The total every cell gets; default: the median total of the cells with counts.
    layer : str, optional
        AnnData only: normalise this layer instead of X.

    Returns
    -------
    None for an AnnData (changed in place); else a ``PreparedSource`` (genes × cells).
    """
    if is_anndata(data):
        matrix, _ = _anndata_matrix(data, layer)
        X = _float(matrix)
        totals = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
        factors = _norm_factors(totals, _target(totals, target_sum))
        if sp.issparse(X):
            X = sp.csr_matrix(sp.diags(factors.astype(X.dtype)) @ X)
        else:
            X = (X * factors[:, None]).astype(X.dtype, copy=False)
        _set_anndata_matrix(data, layer, X)
        return None
    source = as_source(data)
    totals = cell_totals(source)
    return PreparedSource(source, col_scale=_norm_factors(totals, _target(totals, target_sum)))


def scale_features(
    data: Any, *, max_value: float | None = None, layer: str | None = None
) -> PreparedSource | None:
    """Divide every gene by its standard deviation (ddof = 1), without centring.

    Genes of zero variance are left unscaled. ``max_value`` clips the scaled values.
    Returns None for an AnnData (changed in place), else a ``PreparedSource``.
    """
    if is_anndata(data):
        matrix, _ = _anndata_matrix(data, layer)
        X = _float(matrix)
        source = as_source(X.T)
        _, var = gene_mean_var(source)
        std = np.sqrt(var)
        factors = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 1.0)
        if sp.issparse(X):
            X = sp.csr_matrix(X @ sp.diags(factors.astype(X.dtype)))
            if max_value is not None:
                np.minimum(X.data, max_value, out=X.data)
        else:
            X = (X * factors[None, :]).astype(X.dtype, copy=False)
            if max_value is not None:
                np.minimum(X, max_value, out=X)
        _set_anndata_matrix(data, layer, X)
        return None
    source = as_source(data)
    _, var = gene_mean_var(source)
    std = np.sqrt(var)
    factors = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 1.0)
    return PreparedSource(source, row_scale=factors, clip=max_value)
