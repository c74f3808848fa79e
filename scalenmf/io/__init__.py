"""I/O: matrix sources, the Zarr layout, format readers and atomic output. No math here."""

from __future__ import annotations

from typing import Any

from scalenmf.io.atomic import OutputExistsError, atomic_output
from scalenmf.io.errors import InputError
from scalenmf.io.readers import Reader, open_path, register_reader
from scalenmf.io.source import MatrixSource, as_source
from scalenmf.io.zarr_store import write_matrix


def open_matrix(obj: Any, *, block_cols: Any = None) -> MatrixSource:
    """Open X (path, ndarray, scipy.sparse, dask array) as a block-readable ``MatrixSource``.

    Parameters
    ----------
    obj : path-like, ndarray, scipy.sparse matrix, dask array or MatrixSource
        X with shape (m features, n samples). Paths may name a scalenmf Zarr store, an
        AnnData ``.zarr``, ``.npy``, and the text / single-cell formats that
        ``scalenmf.io.formats`` registers (CSV/TSV, Matrix Market, .h5ad).
    block_cols : int, list of int or list of (int, int), optional
        Re-block: columns per block, block widths, or explicit column ranges.
    """
    return as_source(obj, block_cols=block_cols)


__all__ = [
    "InputError",
    "MatrixSource",
    "OutputExistsError",
    "Reader",
    "as_source",
    "atomic_output",
    "open_matrix",
    "open_path",
    "register_reader",
    "write_matrix",
]
