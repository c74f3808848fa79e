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
- ``highly_variable_genes``: the ``n_top_genes`` most variable genes, by Seurat v3's
  normalised variance (``sc.pp.highly_variable_genes(flavor="seurat_v3")``, on counts) or
  by cNMF's v-score (the ratio of a gene's Fano factor to the one expected from its mean,
  cNMF's ``get_highvar_genes``, on normalised counts); two passes over the blocks. On an
  AnnData it marks ``adata.var["highly_variable"]`` and writes the columns scanpy writes;
  on a store it returns them as a table, and ``subset_genes`` keeps the marked genes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.io.anndata import is_anndata
from scalenmf.io.combine import RowOrderedSource
from scalenmf.io.errors import user_stacklevel
from scalenmf.io.matrix import as_source
from scalenmf.io.source import MatrixSource

#: The flavours of ``highly_variable_genes``.
HVG_FLAVORS = ("seurat_v3", "cnmf")


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


# -- highly variable genes ----------------------------------------------------------------


def _clipped_sums(source: MatrixSource, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per gene Σ min(x, clip) and Σ min(x, clip)² over the cells, in one pass.

    Also whether every value is a whole number (Seurat v3 expects counts).
    """
    m = source.shape[0]
    s1 = np.zeros(m)
    s2 = np.zeros(m)
    integral = True
    for _, block in _blocks(source):
        if sp.issparse(block):
            csc = sp.csc_matrix(block)
            data = np.minimum(np.asarray(csc.data, dtype=np.float64), clip[csc.indices])
            s1 += np.bincount(csc.indices, weights=data, minlength=m)
            s2 += np.bincount(csc.indices, weights=data * data, minlength=m)
            values = csc.data
        else:
            dense = np.minimum(np.asarray(block, dtype=np.float64), clip[:, None])
            s1 += dense.sum(axis=1)
            s2 += np.square(dense).sum(axis=1)
            values = np.asarray(block)
        if integral and values.size and values.dtype.kind == "f":
            integral = bool(np.all(np.mod(values, 1) == 0))
    return s1, s2, integral


def _raw_mean_var(source: MatrixSource) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance (ddof = 1) from the plain sums of x and x², scanpy's way.

    Seurat v3's loess fit jumps with the last bits of its inputs (genes of counts share
    means exactly), so the genes it marks are scanpy's only if the means and variances
    are scanpy's to the bit: ``mean = Σx/n``, ``var = (Σx²/n − mean²)·n/(n−1)``. On counts
    the sums are exact whatever the block order, so streaming gives the same bits.
    """
    m, n = source.shape
    s1 = np.zeros(m)
    s2 = np.zeros(m)
    for _, block in _blocks(source):
        if sp.issparse(block):
            csc = sp.csc_matrix(block)
            data = np.asarray(csc.data, dtype=np.float64)
            s1 += np.bincount(csc.indices, weights=data, minlength=m)
            s2 += np.bincount(csc.indices, weights=data * data, minlength=m)
        else:
            dense = np.asarray(block, dtype=np.float64)
            s1 += dense.sum(axis=1)
            s2 += np.square(dense).sum(axis=1)
    mean = s1 / n
    var = s2 / n - mean**2
    if n != 1:
        var *= n / (n - 1)
    return mean, var


def _seurat_v3(source: MatrixSource, n_top: int, span: float) -> tuple[dict[str, Any], dict]:
    """Seurat v3's normalised variance per gene (scanpy's ``flavor="seurat_v3"``, one batch).

    A loess fit (degree 2, ``span``) of log10 variance on log10 mean gives each gene its
    expected standard deviation σ̂; values above ``mean + σ̂·√n`` are clipped, and the
    variance of the clipped values over σ̂² is the gene's score.
    """
    try:
        from skmisc.loess import loess
    except ImportError as exc:  # pragma: no cover - installed with the dev extra
        raise ImportError(
            'flavor="seurat_v3" fits a loess curve with scikit-misc: pip install scikit-misc'
        ) from exc
    n = source.shape[1]
    if n < 2:
        raise ValueError("highly_variable_genes needs at least 2 cells")
    mean, var = _raw_mean_var(source)
    not_const = var > 0
    if int(not_const.sum()) < 3:
        raise ValueError("fewer than 3 genes vary across the cells; there is nothing to rank")
    estimate = np.zeros(source.shape[0], dtype=np.float64)
    model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
    model.fit()
    estimate[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**estimate)
    clip = reg_std * np.sqrt(n) + mean
    s1, s2, integral = _clipped_sums(source, clip)
    if not integral:
        warnings.warn(
            'flavor="seurat_v3" expects raw counts, but non-integers were found',
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    # The same expression, in the same order, as scanpy's.
    norm_var = (1 / ((n - 1) * np.square(reg_std))) * ((n * np.square(mean)) + s2 - 2 * s1 * mean)
    ranks = np.argsort(np.argsort(-norm_var)).astype(np.float32)
    ranks[ranks >= n_top] = np.nan
    columns = {
        "highly_variable": ~np.isnan(ranks),
        "highly_variable_rank": ranks,
        "means": mean,
        "variances": var,
        "variances_norm": norm_var.astype(np.float64, copy=False),
    }
    return columns, {"flavor": "seurat_v3"}


def _cnmf(source: MatrixSource, n_top: int) -> tuple[dict[str, Any], dict]:
    """cNMF's v-score: each gene's Fano factor over the one expected from its mean.

    As cNMF's ``get_highvar_genes``: population variance, the expected Fano factor
    ``A²·mean + B²`` with A the smallest coefficient of variation among the 20 most
    expressed genes and B² the median Fano factor of the genes inside the 10–90 %
    quantiles of both mean and Fano factor.
    """
    import pandas as pd

    n = source.shape[1]
    mean, var1 = gene_mean_var(source)
    gene_var = pd.Series(var1 * (max(n - 1, 1) / max(n, 1)))  # cNMF: ddof = 0
    gene_mean = pd.Series(mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        fano = gene_var / gene_mean
        top = gene_mean.sort_values(ascending=False)[:20].index
        A = float((np.sqrt(gene_var) / gene_mean)[top].min())
    mean_lo, mean_hi = gene_mean.quantile([0.10, 0.90])
    fano_lo, fano_hi = fano.quantile([0.10, 0.90])
    box = (fano > fano_lo) & (fano < fano_hi) & (gene_mean > mean_lo) & (gene_mean < mean_hi)
    B = float(np.sqrt(fano[box].median()))
    expected = (A**2) * gene_mean + (B**2)
    ratio = fano / expected
    order = ratio.sort_values(ascending=False).index[:n_top]
    chosen = ratio.index.isin(order)
    ranks = np.full(source.shape[0], np.nan, dtype=np.float32)
    ranks[np.asarray(order)] = np.arange(len(order), dtype=np.float32)
    columns = {
        "highly_variable": np.asarray(chosen),
        "highly_variable_rank": ranks,
        "means": mean,
        "variances": gene_var.to_numpy(),
        "fano": fano.to_numpy(),
        "expected_fano": expected.to_numpy(),
        "fano_ratio": ratio.to_numpy(),
    }
    return columns, {"flavor": "cnmf", "A": A, "B": B}


def highly_variable_genes(
    data: Any,
    n_top_genes: int = 2000,
    *,
    flavor: str = "seurat_v3",
    layer: str | None = None,
    span: float = 0.3,
    subset: bool = False,
) -> Any:
    """Mark the ``n_top_genes`` most variable genes.

    Parameters
    ----------
    data : AnnData (cells × genes) or anything ``scalenmf.nmf`` reads (genes × cells)
        Streamed block by block (two passes) when it is a store.
    n_top_genes : int
        How many genes to mark (all of them when there are fewer).
    flavor : {"seurat_v3", "cnmf"}
        ``"seurat_v3"``: Seurat v3's normalised variance on counts, the genes and values of
        ``sc.pp.highly_variable_genes(flavor="seurat_v3")`` (needs scikit-misc for its
        loess); ``"cnmf"``: cNMF's v-score, meant for normalised counts (cNMF runs it on
        counts per million: ``normalize_total(data, 1e6)`` first).
    layer : str, optional
        AnnData only: rank the genes of this layer instead of X.
    span : float
        ``"seurat_v3"``: the loess span.
    subset : bool
        AnnData only: keep only the marked genes (in place).

    Returns
    -------
    None for an AnnData: ``adata.var`` gets ``highly_variable`` (bool),
    ``highly_variable_rank`` (0 = most variable; NaN for the unmarked), ``means``,
    ``variances`` and ``variances_norm`` (seurat_v3) or ``fano``, ``expected_fano`` and
    ``fano_ratio`` (cnmf); ``adata.uns["hvg"]`` the flavour (and cNMF's A and B).
    Otherwise a ``pandas.DataFrame`` of those columns, one row per gene, indexed by the
    row labels; pass it to ``subset_genes`` to fit the marked genes only.
    """
    import pandas as pd

    if flavor not in HVG_FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(HVG_FLAVORS)}; got {flavor!r}")
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, (int, np.integer)):
        raise ValueError(f"n_top_genes must be a positive integer; got {n_top_genes!r}")
    if n_top_genes < 1:
        raise ValueError(f"n_top_genes must be a positive integer; got {n_top_genes!r}")
    adata = data if is_anndata(data) else None
    if adata is not None:
        matrix, _ = _anndata_matrix(adata, layer)
        source = as_source(matrix.T)
    else:
        if layer is not None:
            raise ValueError("layer= names a layer of an AnnData object; data is not one")
        source = as_source(data)
    n_top = int(min(n_top_genes, source.shape[0]))
    if flavor == "seurat_v3":
        columns, info = _seurat_v3(source, n_top, span)
    else:
        columns, info = _cnmf(source, n_top)
    if adata is None:
        labels = source.row_labels
        index = pd.Index(labels if labels is not None else np.arange(source.shape[0]))
        return pd.DataFrame(columns, index=index)
    adata.uns["hvg"] = info
    for name, values in columns.items():
        adata.var[name] = values
    if subset:
        adata._inplace_subset_var(np.asarray(columns["highly_variable"]))
    return None


def subset_genes(data: Any, genes: Any) -> MatrixSource:
    """The genes × cells source of ``data`` restricted to some genes (rows), read lazily.

    Parameters
    ----------
    data : anything ``scalenmf.nmf`` reads (genes × cells)
    genes : DataFrame from ``highly_variable_genes``, boolean mask or row indices
    """
    source = as_source(data)
    if hasattr(genes, "columns") and "highly_variable" in genes.columns:
        genes = genes["highly_variable"].to_numpy()
    genes = np.asarray(genes)
    if genes.dtype == bool:
        if genes.shape != (source.shape[0],):
            raise ValueError(
                f"the gene mask has {genes.shape[0]} entries; the data has {source.shape[0]} genes"
            )
        rows = np.flatnonzero(genes)
    else:
        rows = genes.astype(np.int64)
    if rows.size == 0:
        raise ValueError("no genes selected")
    return RowOrderedSource(source, rows)
