"""Bounded-memory staging: turn a stream in the wrong order into column-block-readable data.

Text formats arrive in an order that does not match column blocks: a features × samples CSV
arrives row by row, a Matrix Market file in any entry order, a cells × genes CSC sorted by
gene. Converting them without holding the whole file needs one external re-ordering step,
done here in a temporary directory beside the output:

- ``RowStage``: dense rows appended to a Zarr array whose shards are whole row batches and
  whose inner chunks are narrow column tiles, so a later column block (m, B) reads one
  small tile per row batch. Peak memory: one row batch.
- ``BucketStage``: (row, col, value) triples scattered into one append-only spill file
  set per column block ("bucket"), so a later column block reads only its bucket and
  sorts it into CSC. Peak memory: the scatter buffer plus one bucket.

Both end as a ``MatrixSource`` the Zarr writer streams block by block.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from scalenmf.io._lazy import lazy_module
from scalenmf.io.errors import InputError
from scalenmf.io.planning import bounds_from_cols
from scalenmf.io.source import Bounds, MatrixSource, float_dtype
from scalenmf.io.zarr_store import ZarrDenseSource

if TYPE_CHECKING:
    import scipy.sparse as sp
else:
    sp = lazy_module("scipy.sparse")

log = logging.getLogger(__name__)

#: Bytes of one inner chunk of a staging array: small enough that reading one column block
#: over-reads little, large enough that there are not millions of them.
STAGE_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class StageContext:
    """What a stager needs to know about the conversion it prepares.

    Attributes
    ----------
    workdir : Path
        A private temporary directory (removed after the conversion).
    budget : int
        Memory budget in bytes for the whole conversion; a stager uses at most about half.
    transpose : bool
        The file is stored samples × features; the stager returns X = storedᵀ.
    plan : callable (m, n, density) -> int
        Columns per block of the final store, for stagers that lay out by column block.
    progress : bool
        Show a progress bar.
    text : TextOptions, optional
        How text matrices read their first row and column (``formats.delimited``).
    stream : bool
        A stager may return a source that parses the input while the store is written
        (read once, block by block in order), raising ``RestageNeeded`` if that fails.
    client : distributed.Client, optional
        A Dask cluster whose workers may parse the input (Matrix Market streams only).
    """

    workdir: Path
    budget: int
    transpose: bool
    plan: Callable[[int, int, float], int]
    progress: bool = False
    text: Any = None
    stream: bool = True
    client: Any = None


class RestageNeeded(Exception):
    """Raised while a streamed source is being written when the input turns out not to
    allow streaming (a Matrix Market file not sorted by column): ``convert`` discards the
    partial output and stages the file again with ``StageContext.stream`` false."""


def _stage_codec() -> Any:
    # Fast, light compression: staging data are written once and read once.
    return BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")


class RowStage:
    """Append dense rows of a matrix with ``ncols`` columns to a temporary Zarr array.

    Parameters
    ----------
    workdir : Path
        Temporary directory that will hold ``<name>.zarr``.
    ncols : int
        Row length.
    rows_per_batch : int
        Rows buffered in memory before one shard is written (the memory cost:
        ``rows_per_batch * ncols * 8`` bytes, and about three times that while writing).
    dtype : dtype
        Stored value type.
    name : str
        Name of the staging store inside ``workdir``.
    col_chunk : int, optional
        Width of the inner chunks. Reading a column block decodes whole inner chunks, so
        when the staged rows will be read back by column blocks of width B this should be
        at most B (then a block read decodes about one block of data).
    """

    def __init__(
        self,
        workdir: Path,
        ncols: int,
        rows_per_batch: int,
        dtype: Any = np.float64,
        name: str = "rows",
        col_chunk: int | None = None,
    ):
        self.path = Path(workdir) / f"{name}.zarr"
        self.ncols = int(ncols)
        self.rows_per_batch = max(1, int(rows_per_batch))
        self.dtype = np.dtype(dtype)
        r = self.rows_per_batch
        widest = max(1, STAGE_CHUNK_BYTES // (r * self.dtype.itemsize))
        col_chunk = max(1, min(self.ncols, widest, col_chunk or widest))
        shard_cols = math.ceil(max(self.ncols, 1) / col_chunk) * col_chunk
        root = zarr.open_group(str(self.path), mode="w")
        self._arr = root.create_array(
            "T",
            shape=(0, self.ncols),
            chunks=(r, col_chunk),
            shards=(r, shard_cols),
            dtype=self.dtype,
            compressors=[_stage_codec()],
            fill_value=0,
        )
        self._buf = np.empty((r, self.ncols), dtype=self.dtype)
        self._fill = 0
        self.nrows = 0

    def append(self, rows: np.ndarray) -> None:
        """Add rows (r, ncols); writes a shard each time the buffer fills."""
        rows = np.asarray(rows)
        i = 0
        while i < rows.shape[0]:
            take = min(rows.shape[0] - i, self.rows_per_batch - self._fill)
            self._buf[self._fill : self._fill + take] = rows[i : i + take]
            self._fill += take
            i += take
            if self._fill == self.rows_per_batch:
                self._flush()

    def _flush(self) -> None:
        if self._fill == 0:
            return
        start = self.nrows
        self._arr.resize((start + self._fill, self.ncols))
        self._arr[start : start + self._fill, :] = self._buf[: self._fill]
        self.nrows += self._fill
        self._fill = 0

    def source(self, *, transposed: bool) -> ZarrDenseSource:
        """The staged matrix as a source: rows as X's rows, or (``transposed``) as its columns."""
        self._flush()
        self._buf = np.empty((0, self.ncols), dtype=self.dtype)
        return ZarrDenseSource(str(self.path), "T", transposed=transposed)


class BucketStage:
    """Scatter (row, col, value) triples of an m × n matrix into per-column-block spill files.

    Parameters
    ----------
    workdir : Path
        Temporary directory for the spill files.
    shape : (int, int)
        (m, n) of the matrix being assembled (X's orientation).
    block_cols : int
        Width of a bucket; bucket ``j`` holds columns ``j*B .. (j+1)*B``.
    dtype : dtype
        Value type.
    buffer_entries : int
        Triples buffered in memory before the buffers are appended to disk (memory cost:
        about 16 bytes each, plus the batch being added).
    """

    def __init__(
        self,
        workdir: Path,
        shape: tuple[int, int],
        block_cols: int,
        dtype: Any = np.float64,
        buffer_entries: int = 1 << 22,
    ):
        self.dir = Path(workdir) / "buckets"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shape = (int(shape[0]), int(shape[1]))
        self.block_cols = max(1, int(block_cols))
        self.bounds = bounds_from_cols(self.shape[1], self.block_cols)
        self.dtype = np.dtype(dtype)
        self.index_dtype = np.dtype(np.int32 if self.shape[0] < 2**31 else np.int64)
        self.buffer_entries = max(1, int(buffer_entries))
        self.counts = np.zeros(len(self.bounds), dtype=np.int64)
        self._pending: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._buffered = 0
        self._spilled = False  # nothing on disk yet: finish() can keep the buckets in memory

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Add 0-based triples (already checked to lie inside ``shape``)."""
        if len(vals) == 0:
            return
        cols = np.asarray(cols)
        bucket = cols // self.block_cols
        rows = np.asarray(rows)
        vals = np.asarray(vals)
        if bucket.size > 1 and not bool(np.all(bucket[1:] >= bucket[:-1])):
            # Entries out of column order: group them by bucket (a radix sort on small
            # bucket ids); 10x files are sorted by column and skip this.
            small = bucket.astype(np.uint16) if len(self.bounds) <= 1 << 16 else bucket
            order = np.argsort(small, kind="stable")
            bucket, rows, cols, vals = bucket[order], rows[order], cols[order], vals[order]
        rows = rows.astype(self.index_dtype, copy=False)
        local = (cols - bucket * self.block_cols).astype(np.int32, copy=False)
        vals = vals.astype(self.dtype, copy=False)
        cuts = np.flatnonzero(bucket[1:] != bucket[:-1]) + 1
        starts = np.concatenate([[0], cuts]).tolist()
        ends = [*cuts.tolist(), len(bucket)]
        for s, e in zip(starts, ends, strict=True):
            b = int(bucket[s])
            self._pending.setdefault(b, []).append((rows[s:e], local[s:e], vals[s:e]))
            self.counts[b] += e - s
        self._buffered += len(vals)
        if self._buffered >= self.buffer_entries:
            self._flush()

    def _flush(self) -> None:
        for b, parts in self._pending.items():
            for suffix, k in (("rows", 0), ("cols", 1), ("vals", 2)):
                with open(self.dir / f"{b}.{suffix}", "ab") as fh:
                    for part in parts:
                        part[k].tofile(fh)
        self._pending.clear()
        self._buffered = 0
        self._spilled = True

    def finish(self) -> BucketSource:
        """The assembled matrix as a sparse source: in memory when nothing was spilled
        (all entries fit in the buffer), else from the spill files."""
        if self._spilled:
            self._flush()
            held = None
        else:
            held = {
                b: tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
                for b, parts in self._pending.items()
            }
            self._pending.clear()
        return BucketSource(
            self.dir, self.shape, self.bounds, self.dtype, self.index_dtype, self.counts, held
        )


class BucketSource(MatrixSource):
    """A sparse matrix held as per-column-block spill files (made by ``BucketStage``).

    Reading block ``j`` loads its bucket and sorts it into CSC; duplicate entries are
    summed (as ``scipy.io.mmread`` does).
    """

    def __init__(
        self,
        directory: Path,
        shape: tuple[int, int],
        bounds: Bounds,
        dtype: np.dtype,
        index_dtype: np.dtype,
        counts: np.ndarray,
        held: dict[int, tuple[np.ndarray, ...]] | None = None,
    ):
        super().__init__()
        self._held = held
        self.dir = Path(directory)
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.index_dtype = np.dtype(index_dtype)
        self.is_sparse = True
        self._buckets = list(bounds)
        self.block_bounds = list(bounds)
        self._counts = np.asarray(counts, dtype=np.int64)

    @property
    def nnz(self) -> int:
        return int(self._counts.sum())

    def _bucket(self, b: int) -> sp.csc_matrix:
        a, z = self._buckets[b]
        width = z - a
        m = self.shape[0]
        if self._counts[b] == 0:
            return sp.csc_matrix((m, width), dtype=self.dtype)
        if self._held is not None:
            rows, cols, vals = self._held[b]
        else:
            rows = np.fromfile(self.dir / f"{b}.rows", dtype=self.index_dtype)
            cols = np.fromfile(self.dir / f"{b}.cols", dtype=np.int32)
            vals = np.fromfile(self.dir / f"{b}.vals", dtype=self.dtype)
        key = cols.astype(np.int64) * m + rows
        if key.size < 2 or bool(np.all(key[1:] > key[:-1])):
            # Already in CSC order without duplicates (as 10x writes): index directly.
            indptr = np.zeros(width + 1, dtype=np.int64)
            np.cumsum(np.bincount(cols, minlength=width), out=indptr[1:])
            return sp.csc_matrix((vals, rows, indptr), shape=(m, width))
        coo = sp.coo_matrix((vals, (rows, cols)), shape=(m, width))
        return coo.tocsc()  # sorts, and sums duplicates

    def _read(self, start: int, stop: int) -> sp.csc_matrix:
        width = self._buckets[0][1] - self._buckets[0][0] if self._buckets else 1
        first, last = start // max(width, 1), max(start, stop - 1) // max(width, 1)
        parts = [self._bucket(b) for b in range(first, min(last, len(self._buckets) - 1) + 1)]
        block = parts[0] if len(parts) == 1 else sp.hstack(parts, format="csc")
        offset = self._buckets[first][0]
        if start - offset == 0 and stop - offset == block.shape[1]:
            return sp.csc_matrix(block)
        return sp.csc_matrix(block[:, start - offset : stop - offset])


def stage_rows_budget(budget: int, ncols: int, itemsize: int = 8) -> int:
    """Rows per staging batch: one batch holds an eighth of ``budget`` (writing it as a
    compressed shard costs about three times that)."""
    return max(1, int(budget // 8 // max(1, ncols * itemsize)))


def transpose_dense(src: MatrixSource, ctx: StageContext) -> MatrixSource:
    """X = Sᵀ for a dense source S (n × m) that only reads by column blocks.

    Each column block of S (n × b) is a row batch of X (b × n); those go through a
    ``RowStage``. Memory: one block of S plus one row batch.
    """
    n, m = src.shape
    rows = min(max(1, m), stage_rows_budget(ctx.budget, n))
    stage = RowStage(
        ctx.workdir, n, rows, dtype=src.dtype, name="transpose", col_chunk=ctx.plan(m, n, 1.0)
    )
    step = rows
    for a in range(0, m, step):
        b = min(m, a + step)
        stage.append(np.asarray(src.read_columns(a, b)).T)
    out = stage.source(transposed=False)
    return out.set_labels(src.col_labels, src.row_labels)


def transpose_sparse(src: MatrixSource, ctx: StageContext) -> MatrixSource:
    """X = Sᵀ for a sparse source S (n × m) that only reads by column blocks.

    Triples of S's column blocks are scattered into buckets by X's column (S's row).
    Memory: one block of S plus the scatter buffer (a quarter of the budget).
    """
    n, m = src.shape
    density = src.nnz / max(1, m * n)
    block_cols = ctx.plan(m, n, density)
    stage = BucketStage(
        ctx.workdir,
        (m, n),
        block_cols,
        dtype=float_dtype(src.dtype),
        buffer_entries=ctx.budget // 4 // 16,
    )
    for j in range(src.n_blocks):
        a, _ = src.block_bounds[j]
        coo = sp.coo_matrix(src.read_block(j))
        # S[i, a + c] = X[a + c, i]
        stage.add(coo.col.astype(np.int64) + a, coo.row, coo.data)
    out = stage.finish()
    log.debug("transposed %s into %d buckets", src, len(out.block_bounds))
    return out.set_labels(src.col_labels, src.row_labels)


def check_index_range(idx: np.ndarray, size: int, what: str, where: str) -> None:
    """Raise ``InputError`` if 0-based indices fall outside ``0..size-1``."""
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{where}: {what} index {int(idx[i]) + 1} is outside 1..{size}")
