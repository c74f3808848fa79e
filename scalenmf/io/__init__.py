"""I/O: matrix sources, the Zarr layout, format readers and atomic output. No math here."""

from __future__ import annotations

from typing import Any

from scalenmf.io.atomic import OutputExistsError, atomic_output
from scalenmf.io.errors import InputError
from scalenmf.io.readers import Reader, open_path, register_reader
from scalenmf.io.source import MatrixSource, as_source
from scalenmf.io.zarr_store import write_matrix


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
