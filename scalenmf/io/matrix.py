"""X in and out: open anything ``nmf`` accepts as a ``MatrixSource``, write it as a store.

The top of the I/O layer for matrices. Below it, in import order: ``source`` (the sources
of in-memory data), ``zarr_store`` (the Zarr layout), ``formats`` (text and single-cell
files) and ``readers`` (the registry that opens a path with the first format accepting
it). This module joins them; nothing below imports it, so the I/O layer has no cycle.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from scalenmf.io._lazy import lazy_module
from scalenmf.io.readers import open_path
from scalenmf.io.source import DaskArraySource, DenseArraySource, MatrixSource, SparseArraySource
from scalenmf.io.zarr_store import write_source

if TYPE_CHECKING:
    import scipy.sparse as sp
else:
    sp = lazy_module("scipy.sparse")


def as_source(X: Any, *, block_cols: Any = None) -> MatrixSource:
    """Wrap anything ``nmf`` accepts (path, ndarray, sparse, dask array, source) as a source.

    Parameters
    ----------
    X : path-like, ndarray, scipy.sparse matrix, dask array, array-like or MatrixSource
        The matrix, shape (m features, n samples). A path is opened by ``open_path``.
    block_cols : int, list of int or list of (int, int), optional
        Re-block: columns per block, block widths, or explicit column ranges.
    """
    if isinstance(X, MatrixSource):
        src = X
    elif isinstance(X, (str, os.PathLike)):
        src = open_path(X)
    elif sp.issparse(X):
        src = SparseArraySource(X)
    elif type(X).__module__.startswith("dask"):
        src = DaskArraySource(X)
    elif isinstance(X, np.ndarray):
        src = DenseArraySource(X)
    elif hasattr(X, "__array__") and not isinstance(X, (list, tuple)):
        src = DenseArraySource(np.asarray(X))
    elif isinstance(X, (list, tuple)):
        src = DenseArraySource(np.asarray(X, dtype=np.float64))
    else:
        raise TypeError(
            "X must be a path, numpy array, scipy.sparse matrix, dask array or MatrixSource; "
            f"got {type(X).__name__}"
        )
    if block_cols is not None:
        src = src.reblock(block_cols)
    return src


def open_matrix(
    obj: Any,
    *,
    block_cols: Any = None,
    has_header: bool | None = None,
    has_row_labels: bool | None = None,
    missing: bool = False,
) -> MatrixSource:
    """Open X (path, ndarray, scipy.sparse, dask array) as a block-readable ``MatrixSource``.

    Parameters
    ----------
    obj : path-like, ndarray, scipy.sparse matrix, dask array or MatrixSource
        X with shape (m features, n samples). Paths may name a scalenmf Zarr store, an
        AnnData ``.zarr``, ``.npy``, and the text / single-cell formats that
        ``scalenmf.io.formats`` registers (CSV/TSV, Matrix Market, .h5ad).
    block_cols : int, list of int or list of (int, int), optional
        Re-block: columns per block, block widths, or explicit column ranges.
    has_header, has_row_labels : bool, optional
        CSV/TSV only: whether line 1 holds sample names and column 1 feature labels
        (default: decided from the file, refusing ambiguous files; see
        ``scalenmf.io.formats.delimited``).
    missing : bool
        CSV/TSV: read empty / NA / NaN cells as NaN, the missing entries of a masked fit
        (other formats keep their NaN as they are).
    """
    if has_header is not None or has_row_labels is not None or missing:
        from scalenmf.io.formats.delimited import TextOptions, open_text_matrix

        opts = TextOptions(has_header, has_row_labels, bool(missing))
        obj = open_text_matrix(obj, opts)
    return as_source(obj, block_cols=block_cols)


def write_matrix(
    path: str | os.PathLike[str],
    X: Any,
    *,
    block_cols: int | None = None,
    row_labels: Any = None,
    col_labels: Any = None,
    overwrite: bool = False,
    dtype: Any = None,
) -> str:
    """Write X as a scalenmf Zarr matrix store, atomically.

    Parameters
    ----------
    path : path-like
        The store to create (a directory).
    X : ndarray, scipy.sparse matrix, dask array, MatrixSource or path, shape (m, n)
        Streamed block by block: a source larger than memory is fine.
    block_cols : int, optional
        Columns per storage chunk (dense) — the natural block size of later reads.
        Planned from the size when omitted.
    row_labels, col_labels : sequence of str, optional
        Feature and sample names (default: those of the source, if any).
    overwrite : bool
        Replace an existing store once the new one is complete.
    dtype : dtype, optional
        Store values in this floating type (default: the source's).

    Returns
    -------
    str
        ``path``.
    """
    return write_source(
        path,
        as_source(X),
        block_cols=block_cols,
        row_labels=row_labels,
        col_labels=col_labels,
        overwrite=overwrite,
        dtype=dtype,
    )


__all__ = ["as_source", "open_matrix", "write_matrix"]
