"""``convert``: any supported input → a scalenmf Zarr matrix store, streamed in bounded memory.

The conversion has two steps:

1. **Stage** the input into something readable by column blocks. Stores, ``.npy`` (memory
   mapped), ``.h5ad`` with CSR/dense X, and in-memory arrays already are. Text files and
   gene-major (CSC) AnnData X are not; their format's ``Stager`` re-orders them into a
   temporary directory beside the output (see ``scalenmf.io.formats._stage``). A Matrix
   Market file sorted by column is not staged: it is parsed while step 2 writes it (one
   pass); if it turns out not to be sorted, the partial output is dropped and the file is
   staged after all (``RestageNeeded``).
   ``transpose=True`` is applied here too (a samples × features input becomes X).
2. **Write** the final store block by block with ``write_source``, checking every value
   (finite, ≥ 0) and casting dtype / kind (dense ↔ sparse) on the way.

Memory: about a quarter of ``memory_limit`` for a staging batch, plus a few column blocks of
at most ``memory_limit / 8`` bytes each (and never more than the default block size), so
peak memory does not grow with the size of the input. The temporary directory is removed
afterwards, and the output appears only when complete (``atomic_output``): on any error
nothing is left at ``dst``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.io.atomic import OutputExistsError
from scalenmf.io.errors import InputError
from scalenmf.io.formats import stager_for
from scalenmf.io.formats._stage import (
    RestageNeeded,
    StageContext,
    transpose_dense,
    transpose_sparse,
)
from scalenmf.io.formats.h5ad import H5adSource
from scalenmf.io.matrix import as_source
from scalenmf.io.planning import DEFAULT_BLOCK_BYTES, plan_block_cols
from scalenmf.io.readers import open_path
from scalenmf.io.source import DenseArraySource, MatrixSource, SparseArraySource
from scalenmf.io.zarr_store import (
    NotCanonical,
    ZarrDenseSource,
    ZarrSparseSource,
    copy_sparse,
    write_source,
    write_sparse_entries,
)

#: Memory budget of a conversion when none is given.
DEFAULT_MEMORY_LIMIT = 2**30

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: int | float | str) -> int:
    """A byte count from a number or a string such as ``"2GB"``, ``"512 MiB"``, ``"1e9"``.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB)
    powers of 1024, as in dask.

    Raises
    ------
    ValueError
        For a malformed string or a value that is not positive.
    """
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        out = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"memory_limit: cannot read {value!r} as a size; use bytes or a string such "
                "as '2GB' or '512MiB'"
            )
        out = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    else:
        raise ValueError(f"memory_limit must be a number of bytes or a string; got {value!r}")
    if out <= 0:
        raise ValueError(f"memory_limit must be positive; got {value!r}")
    return out


def convert(
    src: Any,
    dst: str | os.PathLike[str],
    *,
    block_cols: int | None = None,
    memory_limit: int | float | str | None = None,
    transpose: bool = False,
    dtype: Any = None,
    sparse: bool | None = None,
    overwrite: bool = False,
    progress: bool = False,
    has_header: bool | None = None,
    has_row_labels: bool | None = None,
    scheduler: Any = None,
) -> str:
    """Write any supported input as a scalenmf Zarr matrix store, streaming.

    Parameters
    ----------
    src : path-like, ndarray, scipy.sparse matrix, dask array or MatrixSource
        X with shape (m features, n samples), or (n, m) with ``transpose=True``. Paths may
        name any registered format: a Zarr store (ours or AnnData's), ``.npy``, CSV/TSV
        (optionally ``.gz``), Matrix Market, ``.h5ad``.
    dst : path-like
        The store to create.
    block_cols : int, optional
        Columns per block (dense storage chunk width). Planned from the shape, density and
        ``memory_limit`` when omitted.
    memory_limit : int, float or str, optional
        Memory budget of the conversion, in bytes or as ``"2GB"`` (default 1 GiB).
    transpose : bool
        The input is stored samples × features; write its transpose.
    dtype : {"float32", "float64"}, optional
        Stored value type (default: the input's floating type; integers become float64).
    sparse : bool, optional
        Write CSC (True) or dense (False); default: keep the input's kind.
    overwrite : bool
        Replace an existing ``dst`` (only once the new store is complete).
    progress : bool
        Show progress bars (tqdm; reading shows bytes per second).
    has_header, has_row_labels : bool, optional
        CSV/TSV input: whether line 1 holds sample names and column 1 feature labels
        (default: decided from the file; ambiguous files are refused, naming these).
    scheduler : str or distributed.Client, optional
        A Dask cluster (``"tcp://host:port"`` or a Client) whose workers parse a Matrix
        Market file sorted by column (as 10x writes it), several chunks at once: a plain
        file as byte ranges the workers read themselves (they must see it: a local
        cluster or a shared file system), a gzipped one decompressed here and sent in
        chunks. This process writes the store. Other inputs are converted here.

    Returns
    -------
    str
        ``dst``.

    Raises
    ------
    InputError
        Unreadable input, or a value that is negative, NaN or infinite (the message names
        the row and column). Nothing is left at ``dst``.
    OutputExistsError
        ``dst`` exists and ``overwrite`` is false (raised before any work).
    """
    budget = DEFAULT_MEMORY_LIMIT if memory_limit is None else parse_bytes(memory_limit)
    if block_cols is not None and (not isinstance(block_cols, (int, np.integer)) or block_cols < 1):
        raise ValueError(f"block_cols must be a positive integer; got {block_cols!r}")
    out_dtype = _check_dtype(dtype)
    text = None
    if has_header is not None or has_row_labels is not None:
        from scalenmf.io.formats.delimited import TextOptions, is_text_path

        if not is_text_path(src):
            raise ValueError(
                "has_header / has_row_labels (--header, --no-header, --row-labels, "
                "--no-row-labels) apply to CSV/TSV input only"
            )
        text = TextOptions(has_header, has_row_labels)
    target = Path(dst)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"output {str(target)!r} already exists; remove it or pass overwrite=True "
            "(--overwrite on the command line)"
        )
    parent = target.resolve().parent
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory {str(parent)!r} does not exist")

    itemsize = out_dtype.itemsize if out_dtype is not None else 8
    block_target = max(1, min(DEFAULT_BLOCK_BYTES, budget // 8))

    def plan(m: int, n: int, density: float) -> int:
        if block_cols is not None:
            return max(1, min(int(block_cols), max(n, 1)))
        size = itemsize + (4 if density < 1.0 else 0)
        return plan_block_cols(m, n, size, density=density, target_bytes=block_target)

    client, owned = _client(scheduler)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.stage-", dir=parent) as work:
            ctx = StageContext(
                Path(work), budget, bool(transpose), plan, bool(progress), text, client=client
            )
            try:
                _write(src, dst, ctx, sparse, out_dtype, overwrite, block_cols is None)
            except RestageNeeded:
                # A streamed input (a Matrix Market file) turned out to need staging; the
                # partial output is already gone (atomic), so read it again the staged way.
                _write(
                    src,
                    dst,
                    replace(ctx, stream=False),
                    sparse,
                    out_dtype,
                    overwrite,
                    block_cols is None,
                )
    finally:
        if owned:
            client.close()
    return str(dst)


def _client(scheduler: Any) -> tuple[Any, bool]:
    """A Client for ``scheduler`` (an address is connected here, and owned) or None."""
    if scheduler is None or not isinstance(scheduler, str):
        return scheduler, False
    from distributed import Client

    try:
        return Client(scheduler, timeout="30s"), True
    except OSError as exc:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}") from exc


def _write(
    src: Any,
    dst: str | os.PathLike[str],
    ctx: StageContext,
    sparse: bool | None,
    out_dtype: np.dtype | None,
    overwrite: bool,
    by_entries: bool = False,
) -> None:
    """Write ``src`` as the store ``dst``; ``by_entries``: an input already laid out as our
    CSC (an .h5ad CSR X) may be copied in entry ranges rather than column blocks (when
    no ``block_cols`` was asked for)."""
    from tqdm.auto import tqdm

    source = _prepare(src, ctx)
    try:
        m, n = source.shape
        if m == 0 or n == 0:
            raise InputError(f"X is empty (shape {m} × {n}); nothing to convert")
        kind = source.is_sparse if sparse is None else bool(sparse)
        final_dtype = out_dtype if out_dtype is not None else np.dtype(source.dtype)
        density = source.nnz / (m * n) if source.is_sparse else 1.0
        cols = ctx.plan(m, n, density)
        checked = CheckedSource(source, final_dtype, kind)
        # In bytes of the matrix written (values, and row indices when sparse), so that the
        # bar shows a rate in B/s whatever the input; text inputs also have a reading bar.
        with tqdm(
            total=checked.bytes_out(checked.nnz if kind else m * n),
            desc="writing",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not ctx.progress,
        ) as bar:
            copied = False
            if by_entries and kind and isinstance(source, H5adSource) and source.is_sparse:
                # CSR cells × genes is our CSC as stored: written chunk by chunk as read,
                # checked on the way; False when its rows are not sorted in every column.
                copied = write_sparse_entries(
                    dst,
                    (m, n),
                    source.indptr,
                    _EntryReader(checked, source, bar),
                    dtype=final_dtype,
                    row_labels=source.row_labels,
                    col_labels=source.col_labels,
                    overwrite=overwrite,
                    what=f"X of {source.path!r}",
                )
            if not copied and kind and isinstance(source, ZarrSparseSource):
                # A sparse Zarr input (AnnData's CSR, or a store of ours) whose chunks can
                # be copied as they are: values checked, nothing re-encoded.
                copied = copy_sparse(
                    dst,
                    checked,
                    source,
                    overwrite=overwrite,
                    check=checked._check,
                    progress=lambda block: bar.update(checked.bytes_out(block.nnz)),
                )
            if not copied:
                bar.reset(total=bar.total)
                checked.bar = bar
                write_source(dst, checked, block_cols=cols, dtype=final_dtype, overwrite=overwrite)
            if bar.n != bar.total:  # duplicate entries summed: fewer stored than announced
                bar.total = bar.n
                bar.refresh()
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()  # a streamed source holds its input file open until read to the end


def _check_dtype(dtype: Any) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}") from exc
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64; got {dt}")
    return dt


def _prepare(src: Any, ctx: StageContext) -> MatrixSource:
    """The input as a column-block-readable source in X's orientation."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise InputError(f"no such file or store: {str(path)!r}")
        stager = stager_for(path)
        if stager is not None:
            return stager.stage(path, ctx)
        return _transpose(open_path(path), ctx) if ctx.transpose else open_path(path)
    if ctx.transpose and not isinstance(src, MatrixSource) and hasattr(src, "T"):
        # In-memory arrays (numpy, scipy.sparse, dask) transpose as views or lazily.
        return as_source(src.T)
    source = as_source(src)
    return _transpose(source, ctx) if ctx.transpose else source


def _transpose(source: MatrixSource, ctx: StageContext) -> MatrixSource:
    """Sᵀ for a source S that holds samples × features."""
    rows, cols = source.col_labels, source.row_labels
    out: MatrixSource
    if isinstance(source, DenseArraySource):
        # In memory or memory-mapped: the transpose is a view; integer values are still
        # cast block by block when read, so a memory map stays out of core.
        out = DenseArraySource(source._X.T)
    elif isinstance(source, SparseArraySource):
        out = SparseArraySource(source.read_columns(0, source.shape[1]).T)
    elif isinstance(source, ZarrDenseSource):
        out = ZarrDenseSource(source.path, source.array_name, transposed=not source.transposed)
    elif source.is_sparse:
        return transpose_sparse(source, ctx)
    else:
        return transpose_dense(source, ctx)
    return out.set_labels(rows, cols)


class CheckedSource(MatrixSource):
    """Wraps a source for writing: checks values, casts dtype and kind, reports progress.

    Parameters
    ----------
    inner : MatrixSource
        The data (m, n).
    dtype : numpy.dtype
        Type of the blocks returned.
    sparse : bool
        Return CSC blocks (True) or ndarrays (False).
    bar : tqdm-like, optional
        ``bar.update(k)`` is called with the bytes of each block returned (``bytes_out``);
        may also be set later, as the attribute ``bar``.
    """

    def __init__(self, inner: MatrixSource, dtype: np.dtype, sparse: bool, bar: Any = None):
        super().__init__()
        self.inner = inner
        self.shape = inner.shape
        self.dtype = np.dtype(dtype)
        self.is_sparse = bool(sparse)
        self.block_bounds = list(inner.block_bounds)
        self.bar = bar
        self._index_bytes = 4 if self.shape[0] < 2**31 else 8  # as the store writes them
        self.read_ahead = bool(getattr(inner, "read_ahead", False))  # see write_source
        self._row_labels = inner.row_labels
        self._col_labels = inner.col_labels

    @property
    def nnz(self) -> int:
        return self.inner.nnz

    def bytes_out(self, entries: int) -> int:
        """Bytes that ``entries`` stored values take in the output (with their row
        indices when sparse); a dense block's entries are all its cells."""
        return entries * (self.dtype.itemsize + (self._index_bytes if self.is_sparse else 0))

    def _read(self, start: int, stop: int) -> Block:
        block = self.inner.read_columns(start, stop)
        self._check(block, start)
        out: Block
        if sp.issparse(block):
            with np.errstate(over="ignore"):
                csc = (
                    block
                    if isinstance(block, sp.csc_matrix) and block.dtype == self.dtype
                    else sp.csc_matrix(block, dtype=self.dtype)
                )
            out = csc if self.is_sparse else csc.toarray()
        else:
            with np.errstate(over="ignore"):  # overflow to inf is reported just below
                arr = np.asarray(block, dtype=self.dtype)
            out = sp.csc_matrix(arr) if self.is_sparse else arr
        if self.dtype.itemsize < np.dtype(block.dtype).itemsize:
            # A narrowing cast can overflow to inf (float64 → float32).
            self._check(out, start)
        if self.bar is not None:
            entries = out.nnz if isinstance(out, sp.csc_matrix) else np.asarray(out).size
            self.bar.update(self.bytes_out(int(entries)))
        return out

    def _check(self, block: Block, start: int) -> None:
        if sp.issparse(block):
            data = np.asarray(block.data)
            if not data.size or (np.isfinite(data).all() and data.min() >= 0):
                return  # the common case: no COO copy just to check the values
            coo = sp.coo_matrix(block)
            values, bad = coo.data, ~np.isfinite(coo.data) | (coo.data < 0)
            if not bad.any():
                return
            i = int(np.argmax(bad))
            row, col, v = int(coo.row[i]), int(coo.col[i]), values[i]
        else:
            arr = np.asarray(block)
            bad = ~np.isfinite(arr) | (arr < 0)
            if not bad.any():
                return
            row, col = (int(x) for x in np.unravel_index(int(np.argmax(bad)), arr.shape))
            v = arr[row, col]
        col += start
        raise InputError(
            f"X must be finite and non-negative; found {float(v)!r} at "
            f"row {row}{self._name(row, True)}, column {col}{self._name(col, False)}"
        )

    def _name(self, i: int, row: bool) -> str:
        labels = self._row_labels if row else self._col_labels
        return f" ({str(labels[i])!r})" if labels is not None else ""


class _EntryReader:
    """``read(lo, hi)`` for ``write_sparse_entries`` over a CSR ``H5adSource``: entries
    cast to the stored type and checked as ``CheckedSource`` checks blocks (finite,
    ≥ 0, named by row and column), row indices inside ``0..m-1``; rows not increasing
    within a column (unsorted or repeated) raise ``NotCanonical``, as those need the
    block writer's sorting and summing.

    Ranges must come in order (a column may continue from one range into the next)."""

    def __init__(self, checked: CheckedSource, source: Any, bar: Any = None):
        self.checked = checked
        self.source = source
        self.indptr = source.indptr
        self.bar = bar
        self._last_row = -1  # row of the entry just before the next range

    def _column(self, p: int) -> int:
        return int(np.searchsorted(self.indptr, p, side="right")) - 1

    def __call__(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        raw, rows = self.source.read_entries(lo, hi)
        if raw.shape != (hi - lo,) or rows.shape != (hi - lo,):
            raise InputError(
                f"X of {self.source.path!r}: data or indices hold fewer entries than "
                f"indptr says ({int(self.indptr[-1])})"
            )
        with np.errstate(over="ignore"):  # an overflow to inf is reported just below
            values = raw.astype(self.checked.dtype, copy=False)
        # Two reductions, no temporary: a NaN makes min() NaN, which fails ">= 0".
        if not (values.min() >= 0 and values.max() < np.inf):
            p = int(np.argmax(~np.isfinite(values) | (values < 0)))
            row, col = int(rows[p]), self._column(lo + p)
            raise InputError(
                f"X must be finite and non-negative; found {float(values[p])!r} at "
                f"row {row}{self.checked._name(row, True)}, "
                f"column {col}{self.checked._name(col, False)}"
            )
        m = self.checked.shape[0]
        if rows.dtype.kind not in "iu":
            raise InputError(f"X/indices of {self.source.path!r} are not integers")
        if int(rows.min()) < 0 or int(rows.max()) >= m:
            p = int(np.argmax((rows < 0) | (rows >= m)))
            raise InputError(
                f"X/indices of {self.source.path!r}: gene index {int(rows[p])} of cell "
                f"{self._column(lo + p)} is outside 0..{m - 1}"
            )
        # Rows increase within each column: every step but those where a column starts.
        step_down = np.diff(rows) <= 0
        ip = self.indptr
        starts = ip[np.searchsorted(ip, lo, side="right") : np.searchsorted(ip, hi, side="left")]
        step_down[starts - lo - 1] = False
        first_starts = ip[np.searchsorted(ip, lo, side="left")] == lo
        if step_down.any() or (not first_starts and int(rows[0]) <= self._last_row):
            raise NotCanonical(lo)
        self._last_row = int(rows[-1])
        if self.bar is not None:
            self.bar.update(self.checked.bytes_out(hi - lo))
        return values, rows


__all__ = ["DEFAULT_MEMORY_LIMIT", "CheckedSource", "convert", "parse_bytes"]
