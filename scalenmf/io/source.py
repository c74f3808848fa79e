"""Matrix sources: one interface over every place X can live, read one column block at a time.

The fit loop sees only ``MatrixSource``: its shape, dtype, block boundaries and
``read_block(j)``. Whether a block comes from memory, a memory map, a Zarr chunk or a Dask
array is the source's business. Sources are picklable (stores travel by path and reopen
lazily), so a Dask worker can load its own blocks.

This module holds the sources of in-memory data and their common base; the Zarr sources
live in ``zarr_store``, the file formats in ``formats``, and ``matrix.as_source`` (which
opens paths too) sits above them all, so nothing here imports back up.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from scalenmf._typing import Block
from scalenmf.io._lazy import lazy_module
from scalenmf.io.errors import InputError
from scalenmf.io.planning import (
    DEFAULT_BLOCK_BYTES,
    MIN_SPREAD_VALUES,
    bounds_by_nnz,
    bounds_from_cols,
    bounds_from_sizes,
    plan_block_cols,
)

if TYPE_CHECKING:
    import scipy.sparse as sp
else:
    sp = lazy_module("scipy.sparse")

Bounds = list[tuple[int, int]]


class MatrixSource(ABC):
    """A non-negative matrix X (m features × n samples) readable by column blocks.

    Attributes
    ----------
    shape : tuple of int
        ``(m, n)``.
    dtype : numpy.dtype
        Stored value type (floating types are kept; integer counts are read as float64).
    is_sparse : bool
        Blocks come as ``scipy.sparse.csc_matrix`` when true, else C- or F-ordered ndarrays.
    block_bounds : list of (int, int)
        Column ranges of the blocks, covering ``0..n`` in order.
    """

    shape: tuple[int, int]
    dtype: np.dtype
    is_sparse: bool
    block_bounds: Bounds

    def __init__(self) -> None:
        self._row_labels: np.ndarray | None = None
        self._col_labels: np.ndarray | None = None

    # -- blocks ------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(self.block_bounds)

    @abstractmethod
    def _read(self, start: int, stop: int) -> Block:
        """Columns ``start:stop`` as an in-memory block."""

    def read_block(self, j: int) -> Block:
        """Block ``j``: ndarray (m, n_j) or ``csc_matrix`` (m, n_j)."""
        start, stop = self.block_bounds[j]
        return self._read(start, stop)

    def read_columns(self, start: int, stop: int) -> Block:
        """Any column range, regardless of blocking."""
        return self._read(start, stop)

    def reblock(self, block_bounds: Bounds | int | Sequence[int]) -> MatrixSource:
        """The same data with another blocking.

        Parameters
        ----------
        block_bounds : int, list of int or list of (int, int)
            Columns per block, a list of block widths, or explicit ranges.
        """
        bounds = normalize_bounds(block_bounds, self.shape[1])
        clone = self._clone()
        clone.block_bounds = bounds
        return clone

    def _clone(self) -> MatrixSource:
        import copy

        return copy.copy(self)

    # -- sizes -------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Stored entries (m·n for dense)."""
        return int(self.shape[0]) * int(self.shape[1])

    @property
    def nbytes(self) -> int:
        """Decoded bytes of the whole matrix in memory."""
        item = np.dtype(self.dtype).itemsize
        if self.is_sparse:
            return self.nnz * (item + 4) + 8 * (self.shape[1] + 1)
        return self.nnz * item

    def block_nbytes(self, j: int) -> int:
        start, stop = self.block_bounds[j]
        n = max(1, self.shape[1])
        return int(self.nbytes * (stop - start) / n) + 1

    @property
    def in_memory(self) -> bool:
        """True when reading a block costs no I/O or decoding."""
        return False

    # -- labels ------------------------------------------------------------------------
    @property
    def row_labels(self) -> np.ndarray | None:
        return self._row_labels

    @property
    def col_labels(self) -> np.ndarray | None:
        return self._col_labels

    def set_labels(self, rows: Any = None, cols: Any = None) -> MatrixSource:
        """Attach feature (row) and sample (column) labels, checking their lengths."""
        if rows is not None:
            self._row_labels = _check_labels(rows, self.shape[0], "row")
        if cols is not None:
            self._col_labels = _check_labels(cols, self.shape[1], "column")
        return self

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for ``scalenmf info`` and result attrs)."""
        return summary(
            self.shape, self.dtype, self.is_sparse, self.nnz, self.block_bounds, type(self).__name__
        )

    def __repr__(self) -> str:
        m, n = self.shape
        kind = "sparse" if self.is_sparse else "dense"
        return (
            f"<{type(self).__name__} {m}×{n} {kind} {np.dtype(self.dtype)} blocks={self.n_blocks}>"
        )


def summary(
    shape: tuple[int, int], dtype: Any, is_sparse: bool, nnz: int, bounds: Bounds, source: str
) -> dict[str, Any]:
    """``MatrixSource.describe`` from its parts (``scalenmf info`` also builds it from a
    store's metadata alone, without opening the store as a source).

    Parameters
    ----------
    shape : (m, n)
    dtype : numpy dtype the source reads as
    is_sparse : bool
    nnz : int
        Stored entries (m·n for dense).
    bounds : list of (int, int)
        The column blocks.
    source : str
        The name of the source class.
    """
    m, n = shape
    return {
        "shape": [int(m), int(n)],
        "dtype": str(np.dtype(dtype)),
        "sparse": bool(is_sparse),
        "nnz": int(nnz),
        "density": float(nnz / max(1, m * n)),
        "n_blocks": len(bounds),
        "block_cols": sorted({b - a for a, b in bounds}),
        "source": source,
    }


def as_str_array(labels: Any) -> np.ndarray:
    """Labels as a fixed-width numpy str array (from lists, object or StringDType arrays)."""
    arr = np.asarray(labels)
    if arr.dtype.kind == "U":
        return arr
    return np.asarray(arr.astype(object).tolist(), dtype=str) if arr.size else arr.astype("U1")


def _check_labels(labels: Any, length: int, what: str) -> np.ndarray:
    arr = as_str_array(labels)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise InputError(f"{what} labels have length {arr.shape[0]}, expected {length}")
    return arr


def normalize_bounds(spec: Bounds | int | Sequence[int], n: int) -> Bounds:
    """Turn a blocking spec (width, widths or ranges) into checked column ranges."""
    if isinstance(spec, (int, np.integer)):
        return bounds_from_cols(n, int(spec))
    items: list[Any] = list(spec)
    if items and isinstance(items[0], (tuple, list)):
        bounds = [(int(a), int(b)) for a, b in items]
    else:
        bounds = bounds_from_sizes([int(s) for s in items])
    edges = [0]
    for a, b in bounds:
        if a != edges[-1] or b <= a:
            raise ValueError(f"block bounds must be contiguous, non-empty ranges; got {bounds}")
        edges.append(b)
    if edges[-1] != n:
        raise ValueError(f"block bounds cover 0..{edges[-1]}, but X has {n} columns")
    return bounds


def float_dtype(dtype: Any) -> np.dtype:
    """The floating type a source reads ``dtype`` as (integer counts as float64)."""
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype.kind in "iub" or dtype == np.float16:
        return np.dtype(np.float64)
    raise InputError(f"X must hold numbers; got dtype {dtype}")


def default_bounds(m: int, n: int, itemsize: int, density: float = 1.0) -> Bounds:
    cols = plan_block_cols(m, n, itemsize, density=density, min_blocks=os.cpu_count() or 1)
    return bounds_from_cols(n, cols)


class DenseArraySource(MatrixSource):
    """An in-memory (or memory-mapped) ndarray; blocks are views, never copies."""

    def __init__(self, X: np.ndarray, block_bounds: Bounds | None = None):
        super().__init__()
        if X.ndim != 2:
            raise InputError(f"X must be 2-D (features × samples); got shape {X.shape}")
        dtype = float_dtype(X.dtype)
        # Integer counts are cast block by block in ``_read``: casting here would load a
        # whole memory-mapped .npy into memory.
        self._X = X
        self.shape = (int(X.shape[0]), int(X.shape[1]))
        self.dtype = dtype
        self.is_sparse = False
        self.block_bounds = block_bounds or default_bounds(*self.shape, dtype.itemsize)

    @property
    def in_memory(self) -> bool:
        return not isinstance(self._X, np.memmap)

    def _read(self, start: int, stop: int) -> np.ndarray:
        block = self._X[:, start:stop]
        return block if block.dtype == self.dtype else block.astype(self.dtype)


class SparseArraySource(MatrixSource):
    """An in-memory scipy.sparse matrix, held as CSC so column blocks are cheap slices."""

    def __init__(self, X: Any, block_bounds: Bounds | None = None):
        super().__init__()
        if X.ndim != 2:
            raise InputError(f"X must be 2-D (features × samples); got shape {X.shape}")
        csc = sp.csc_matrix(X)
        dtype = float_dtype(csc.dtype)
        if csc.dtype != dtype:
            csc = csc.astype(dtype)
        csc.sum_duplicates()
        self._X = csc
        self.shape = (int(csc.shape[0]), int(csc.shape[1]))
        self.dtype = dtype
        self.is_sparse = True
        if block_bounds is None:
            target = DEFAULT_BLOCK_BYTES // (dtype.itemsize + 4)
            spread = max(1, csc.nnz // max(1, os.cpu_count() or 1))
            block_bounds = bounds_by_nnz(csc.indptr, min(target, max(spread, MIN_SPREAD_VALUES)))
        self.block_bounds = block_bounds

    @property
    def in_memory(self) -> bool:
        return True

    @property
    def nnz(self) -> int:
        return int(self._X.nnz)

    def _read(self, start: int, stop: int) -> sp.csc_matrix:
        return self._X[:, start:stop]


class DaskArraySource(MatrixSource):
    """A dask array; blocks follow its column chunks unless reblocked."""

    def __init__(self, X: Any, block_bounds: Bounds | None = None):
        super().__init__()
        if X.ndim != 2:
            raise InputError(f"X must be 2-D (features × samples); got shape {X.shape}")
        self._X = X
        self.shape = (int(X.shape[0]), int(X.shape[1]))
        self.dtype = float_dtype(X.dtype)
        meta = getattr(X, "_meta", None)
        self.is_sparse = meta is not None and sp.issparse(meta)
        if block_bounds is None:
            block_bounds = bounds_from_sizes(list(X.chunks[1]))
        self.block_bounds = block_bounds

    def _read(self, start: int, stop: int) -> Block:
        block = self._X[:, start:stop].compute(scheduler="synchronous")
        if self.is_sparse or sp.issparse(block):
            return sp.csc_matrix(block, dtype=self.dtype)
        return np.asarray(block, dtype=self.dtype)
