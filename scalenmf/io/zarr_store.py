"""The project's Zarr v3 matrix layout: reading it (and AnnData's) and writing it.

Layout of a matrix store (``kind = "matrix"`` in the root attrs under ``scalenmf``)::

    X            dense: 2-D array (m, n), chunks (m, B)
                 sparse: group in AnnData's on-disk encoding (encoding-type csc_matrix):
                         data (nnz,), indices (nnz,), indptr (n+1,), attrs shape [m, n]
    row_labels   (m,) strings, optional
    col_labels   (n,) strings, optional

An AnnData ``.zarr`` store (cells × genes, CSR or dense) is read directly as genes × cells:
the CSR of Xᵀ is the CSC of X, so its row blocks are our column blocks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from scalenmf.io import storage, zarr_write
from scalenmf.io._lazy import lazy_module
from scalenmf.io.atomic import atomic_output
from scalenmf.io.errors import InputError
from scalenmf.io.integrity import (
    WRITE_CONFIG,
    IntegrityError,
    check_csc,
    check_indptr,
    digest_array,
    require_complete,
)
from scalenmf.io.planning import (
    DEFAULT_BLOCK_BYTES,
    MIN_SPREAD_VALUES,
    align_bounds,
    bounds_by_nnz,
    plan_block_cols,
)
from scalenmf.io.source import Bounds, MatrixSource, as_str_array, float_dtype

if TYPE_CHECKING:
    import scipy.sparse as sp
else:
    sp = lazy_module("scipy.sparse")

FORMAT_VERSION = 1


def _codec() -> Any:
    # lz4 through blosc with byte shuffle: decodes at memory speed, so an out-of-core
    # iteration is bounded by the disk, not the decompressor.
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _open_group(path: str | os.PathLike[str]) -> zarr.Group:
    p = str(storage.local_path(str(path)))
    if not storage.exists(p):
        raise InputError(f"no such store: {p!r}")
    try:
        # Read-only: nothing scalenmf does may modify an input store.
        node = zarr.open(storage.zarr_store(p, read_only=True), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise InputError(f"{p!r} is not a readable Zarr store: {exc}") from exc
    if not isinstance(node, zarr.Group):
        raise InputError(f"{p!r} is a bare Zarr array; expected a matrix store (a group)")
    return node


def _absolute(path: str | os.PathLike[str]) -> str:
    p = str(storage.local_path(str(path)))
    return p if storage.is_url(p) else os.path.abspath(p)


def _is_bare_array(path: str) -> bool:
    try:
        node = zarr.open(storage.zarr_store(path, read_only=True), mode="r")
    except Exception:
        return False
    return isinstance(node, zarr.Array) and node.ndim == 2


def _member(group: zarr.Group, name: str, where: str) -> Any:
    """Member ``name`` of ``group``, or None if it has none; metadata that cannot be read
    (not JSON, not Zarr) is an ``InputError`` naming the store and the member."""
    try:
        return group[name] if name in group else None
    except Exception as exc:  # zarr raises the JSON parser's or its own errors
        raise InputError(
            f"the metadata of {name!r} in {where!r} cannot be read ({type(exc).__name__}: {exc})"
        ) from exc


def _labels(group: zarr.Group, name: str) -> np.ndarray | None:
    if _member(group, name, str(group.store_path)) is not None:
        arr = _child_array(group, name)
        require_complete(arr, name, str(group.store_path))
        # A chunk that does not decode is named, not raised as the codec's own error.
        return as_str_array(read_whole(arr, name, f"matrix store {str(group.store_path)!r}"))
    return None


def _child_array(group: zarr.Group, name: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise InputError(f"{name!r} in {group.store_path} is a group; expected an array")
    return node


def _chunk_error(
    path: str,
    name: str,
    start: int,
    stop: int,
    exc: Exception,
    bad: tuple[zarr.Array, tuple[int, ...]] | None = None,
) -> InputError:
    where = ""
    if bad is not None:
        arr, idx = bad
        try:
            key = arr.metadata.encode_chunk_key(idx)
            where = f": chunk {idx} (key {name}/{key}) is corrupt or truncated"
        except Exception:
            where = f": chunk {idx} is corrupt or truncated"
    else:
        where = " (corrupt or truncated chunk?)"
    return InputError(
        f"cannot read columns {start}:{stop} of array {name!r} in {path!r}{where}: {exc}"
    )


def find_bad_chunk(arr: zarr.Array, axis: int, lo: int, hi: int) -> tuple[int, ...] | None:
    """The first chunk of ``arr`` touching ``lo:hi`` along ``axis`` that cannot be decoded."""
    import itertools

    width = int(arr.chunks[axis])
    grid = [range(-(-int(s) // int(c))) for s, c in zip(arr.shape, arr.chunks, strict=True)]
    grid[axis] = range(lo // width, max(lo, hi - 1) // width + 1)
    for idx in itertools.product(*grid):
        try:
            arr.get_block_selection(idx)
        except Exception:
            return tuple(int(i) for i in idx)
    return None


def read_whole(arr: zarr.Array, name: str, what: str) -> np.ndarray:
    """All of ``arr``, or an ``IntegrityError`` naming ``what`` (``"result store '…'"``),
    the array and the first chunk that does not decode."""
    try:
        return np.asarray(arr[...])
    except Exception as exc:  # codecs raise their own types for damaged bytes
        idx = find_bad_chunk(arr, 0, 0, int(arr.shape[0])) if arr.ndim else None
        chunk = f" chunk {idx} (key {name}/{arr.metadata.encode_chunk_key(idx)})" if idx else ""
        raise IntegrityError(
            f"{what}: array {name!r}{chunk} is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc


#: The last chunk a dense source decoded for a block narrower than a chunk, one per
#: process (not per source object: a Dask worker unpickles a copy of the source per task,
#: and a cache on each copy held one chunk per block still in memory), keyed by the
#: source's opening and the chunk.
_LAST_CHUNK: dict[str, tuple[tuple[str, int], np.ndarray]] = {}
_CHUNK_LOCK = threading.Lock()


class ZarrDenseSource(MatrixSource):
    """A dense 2-D Zarr array; ``transposed`` reads an (n, m) array (AnnData's orientation)."""

    def __init__(
        self,
        path: str,
        array: str = "X",
        *,
        transposed: bool = False,
        block_bounds: Bounds | None = None,
    ):
        super().__init__()
        # Absolute, so that Dask workers started elsewhere read the same store.
        self.path = _absolute(path)
        self.array_name = array
        self.transposed = transposed
        arr = self._array()
        if arr.ndim != 2:
            raise InputError(f"array {array!r} in {self.path!r} is {arr.ndim}-D; expected 2-D")
        # One listing: a missing chunk (or a shape far larger than the data) is refused
        # here, not read as zeros.
        require_complete(arr, array or "X", self.path)
        shape = arr.shape[::-1] if transposed else arr.shape
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = float_dtype(arr.dtype)
        self.is_sparse = False
        chunk = arr.chunks[0] if transposed else arr.chunks[1]
        #: Columns per storage chunk and bytes per stored value: what reading a block
        #: decodes (the memory plan counts it).
        self.chunk_cols = int(chunk)
        self.stored_itemsize = int(arr.dtype.itemsize)
        if block_bounds is None:
            m, n = self.shape
            cols = plan_block_cols(m, n, self.dtype.itemsize, min_blocks=os.cpu_count() or 1)
            block_bounds = align_bounds(int(chunk), n, cols)
        self.block_bounds = block_bounds
        #: Names this opening of the store for the decoded-chunk cache (kept by clones
        #: and pickled copies, which read the same data; a new opening gets a new one).
        self._token = uuid.uuid4().hex

    def _array(self) -> zarr.Array:
        arr = self.__dict__.get("_arr")
        if arr is None:
            store = storage.zarr_store(self.path, read_only=True)
            arr = zarr.open_array(store, path=self.array_name, mode="r")
            self.__dict__["_arr"] = arr
        return arr

    def __getstate__(self) -> dict[str, Any]:
        # Travel by path: the open handle is re-made in the process that reads.
        state = dict(self.__dict__)
        state.pop("_arr", None)
        return state

    def _read(self, start: int, stop: int) -> np.ndarray:
        c = start // self.chunk_cols
        if stop - start < self.chunk_cols and (stop - 1) // self.chunk_cols == c:
            # A block narrower than a chunk (a memory plan's part of one, or the online
            # solver's batches) would decode the whole chunk again for every part: the
            # last decoded chunk is kept, one per process (``_LAST_CHUNK``).
            a = c * self.chunk_cols
            key = (self._token, c)
            with _CHUNK_LOCK:
                held = _LAST_CHUNK.get("chunk")
                if held is None or held[0] != key:
                    _LAST_CHUNK.clear()  # the old chunk goes before the new one is decoded
                    b = min(self.shape[1], a + self.chunk_cols)
                    held = (key, self._decode(a, b))
                    _LAST_CHUNK["chunk"] = held
            return np.array(held[1][:, start - a : stop - a])
        return self._decode(start, stop)

    def _decode(self, start: int, stop: int) -> np.ndarray:
        arr = self._array()
        try:
            raw = arr[start:stop, :] if self.transposed else arr[:, start:stop]
        except Exception as exc:
            idx = find_bad_chunk(arr, 0 if self.transposed else 1, start, stop)
            bad = (arr, idx) if idx is not None else None
            name = self.array_name or "X"
            raise _chunk_error(self.path, name, start, stop, exc, bad) from exc
        block: np.ndarray = np.asarray(raw)
        if self.transposed:
            block = block.T
        return block if block.dtype == self.dtype else block.astype(self.dtype)


class ZarrSparseSource(MatrixSource):
    """A compressed-sparse group (our CSC, or AnnData's cells × genes CSR read as CSC)."""

    def __init__(self, path: str, group: str = "X", *, block_bounds: Bounds | None = None):
        super().__init__()
        self.path = _absolute(path)
        self.group_name = group
        g = self._group()
        enc = g.attrs.get("encoding-type")
        raw_shape: Any = g.attrs.get("shape", ())
        shape = tuple(int(s) for s in raw_shape) if isinstance(raw_shape, (list, tuple)) else ()
        if len(shape) != 2:
            raise InputError(f"sparse group {group!r} in {self.path!r} has no 2-D 'shape' attr")
        if enc == "csc_matrix":
            self.shape = (shape[0], shape[1])
        elif enc == "csr_matrix":
            # AnnData cells × genes CSR == genes × cells CSC.
            self.shape = (shape[1], shape[0])
        else:
            raise InputError(
                f"sparse group {group!r} in {self.path!r} has encoding-type {enc!r}; "
                "expected csc_matrix (or AnnData csr_matrix)"
            )
        if min(self.shape) < 0:
            raise InputError(f"sparse group {group!r} in {self.path!r} has shape {shape}")
        parts = {}
        for name in ("data", "indices", "indptr"):
            if _member(g, name, f"{self.path}/{group}") is None:
                raise InputError(f"sparse group {group!r} in {self.path!r} lacks array {name!r}")
            parts[name] = _child_array(g, name)
            if parts[name].ndim != 1:
                raise IntegrityError(
                    f"{group}/{name} in {self.path!r} is {parts[name].ndim}-D; expected 1-D"
                )
            require_complete(parts[name], f"{group}/{name}", self.path)
        self.dtype = float_dtype(parts["data"].dtype)
        if parts["indices"].dtype.kind not in "iu":
            raise IntegrityError(
                f"{group}/indices in {self.path!r} has dtype {parts['indices'].dtype}; "
                "expected integers"
            )
        if parts["data"].shape != parts["indices"].shape:
            raise IntegrityError(
                f"sparse group {group!r} in {self.path!r}: data has {parts['data'].shape[0]} "
                f"entries but indices {parts['indices'].shape[0]}"
            )
        self.is_sparse = True
        indptr = self.indptr
        check_indptr(
            indptr,
            int(parts["data"].shape[0]),
            self.shape[1],
            f"sparse group {group!r} in {self.path!r}",
        )
        if block_bounds is None:
            target = DEFAULT_BLOCK_BYTES // (self.dtype.itemsize + 4)
            spread = max(1, int(indptr[-1]) // max(1, os.cpu_count() or 1))
            block_bounds = bounds_by_nnz(indptr, min(target, max(spread, MIN_SPREAD_VALUES)))
        self.block_bounds = block_bounds

    def _group(self) -> zarr.Group:
        g = self.__dict__.get("_grp")
        if g is None:
            store = storage.zarr_store(self.path, read_only=True)
            g = zarr.open_group(store, path=self.group_name, mode="r")
            self.__dict__["_grp"] = g
        return g

    @property
    def indptr(self) -> np.ndarray:
        ip = self.__dict__.get("_indptr")
        if ip is None:
            # Read whole (n + 1 offsets): a chunk that does not decode is named, not raised
            # as the codec's own error.
            raw = read_whole(
                _child_array(self._group(), "indptr"),
                f"{self.group_name}/indptr",
                f"matrix store {self.path!r}",
            )
            if raw.dtype.kind not in "iu":
                raise IntegrityError(
                    f"{self.group_name}/indptr in {self.path!r} has dtype {raw.dtype}; "
                    "expected integers"
                )
            ip = raw.astype(np.int64, copy=False)
            self.__dict__["_indptr"] = ip
        return ip

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_grp", None)
        return state

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def _read(self, start: int, stop: int) -> sp.csc_matrix:
        g = self._group()
        ip = self.indptr
        lo, hi = int(ip[start]), int(ip[stop])
        for part in ("data", "indices"):
            arr = _child_array(g, part)
            try:
                values = np.asarray(arr[lo:hi])
            except Exception as exc:
                idx = find_bad_chunk(arr, 0, lo, hi)
                bad = (arr, idx) if idx is not None else None
                name = f"{self.group_name}/{part}"
                raise _chunk_error(self.path, name, start, stop, exc, bad) from exc
            if part == "data":
                data = values
            else:
                indices = values
        if data.dtype != self.dtype:
            data = data.astype(self.dtype)
        local_ptr = ip[start : stop + 1] - lo
        # Before any product: scipy trusts these arrays and would read out of bounds.
        check_csc(
            data,
            indices,
            local_ptr,
            self.shape[0],
            f"columns {start}:{stop} of sparse group {self.group_name!r} in {self.path!r}",
        )
        block = sp.csc_matrix((data, indices, local_ptr), shape=(self.shape[0], stop - start))
        if not block.has_canonical_format:
            # Unsorted or duplicate row indices: duplicates are summed (scipy's meaning of
            # a repeated entry), so every kernel sees one value per (row, column).
            block.sum_duplicates()
        return block


def _anndata_index(group: zarr.Group, name: str) -> np.ndarray | None:
    if name not in group:
        return None
    df = group[name]
    key = df.attrs.get("_index")
    if not isinstance(df, zarr.Group) or not isinstance(key, str) or key not in df:
        return None
    return as_str_array(_child_array(df, key)[:])


def open_zarr(path: str | os.PathLike[str]) -> MatrixSource:
    """Open a scalenmf matrix store, an AnnData ``.zarr`` store or a bare 2-D array."""
    p = str(path)
    if _is_bare_array(p):
        # A plain 2-D Zarr array (m, n) is X itself: read it by its column chunks.
        return ZarrDenseSource(p, "")
    g = _open_group(path)
    meta = g.attrs.get("scalenmf")
    if isinstance(meta, dict) and meta.get("kind") == "result":
        raise InputError(
            f"{p!r} is a scalenmf result store, not an input matrix (use scalenmf.load to read it)"
        )
    node = _member(g, "X", p)
    if g.attrs.get("encoding-type") == "anndata":
        if node is None:
            raise InputError(f"AnnData store {p!r} has no X")
        src: MatrixSource
        if isinstance(node, zarr.Group) and node.attrs.get("encoding-type") == "csc_matrix":
            # AnnData's cells × genes CSC is sorted by gene: it cannot be read by blocks
            # of cells. Without this branch it would be read with the axes swapped.
            return _anndata_csc_in_memory(p)
        if isinstance(node, zarr.Group):
            src = ZarrSparseSource(p, "X")
        else:
            src = ZarrDenseSource(p, "X", transposed=True)
        src.set_labels(_anndata_index(g, "var"), _anndata_index(g, "obs"))
        return src
    if node is None:
        raise InputError(f"store {p!r} has no array 'X'; is it a scalenmf matrix store?")
    src = ZarrSparseSource(p, "X") if isinstance(node, zarr.Group) else ZarrDenseSource(p, "X")
    src.set_labels(_labels(g, "row_labels"), _labels(g, "col_labels"))
    return src


#: An AnnData CSC X up to this size is read into memory by ``open_zarr``.
ANNDATA_CSC_IN_MEMORY_BYTES = 1 << 30


def anndata_csc_group(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is an AnnData ``.zarr`` store whose X is CSC-encoded."""
    p = Path(path)
    if not (p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())):
        return False
    try:
        g = zarr.open_group(str(p), mode="r")
        if g.attrs.get("encoding-type") != "anndata" or "X" not in g:
            return False
        node = g["X"]
    except Exception:
        return False
    return isinstance(node, zarr.Group) and node.attrs.get("encoding-type") == "csc_matrix"


def open_anndata_csc_stored(path: str | os.PathLike[str]) -> ZarrSparseSource:
    """An AnnData CSC X as stored (cells × genes, readable by gene blocks), for re-sorting.

    Row labels are the obs (cell) names and column labels the var (gene) names: X is the
    transpose of this source.
    """
    p = str(path)
    src = ZarrSparseSource(p, "X")
    g = _open_group(p)
    src.set_labels(_anndata_index(g, "obs"), _anndata_index(g, "var"))
    return src


def _anndata_csc_in_memory(path: str) -> MatrixSource:
    from scalenmf.io.source import SparseArraySource

    stored = open_anndata_csc_stored(path)
    if stored.nbytes > ANNDATA_CSC_IN_MEMORY_BYTES:
        raise InputError(
            f"X in AnnData store {path!r} is stored CSC (gene-major, "
            f"{stored.nbytes / 2**30:.1f} GiB), which cannot be read by blocks of cells; "
            "run `scalenmf convert` on it once (it re-sorts it out of core), or write X as CSR"
        )
    logging.getLogger(__name__).info(
        "X in %s is stored CSC; reading it into memory (convert it for out-of-core use)", path
    )
    X = stored.read_columns(0, stored.shape[1]).T
    return SparseArraySource(X).set_labels(stored.col_labels, stored.row_labels)


def create_digested(
    group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any
) -> zarr.Array:
    """A new, empty array for ``write_digested`` (and for results copied chunk by chunk):
    the store's codec, and every chunk written even when it holds only zeros."""
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        compressors=[_codec()],
        config=WRITE_CONFIG,
    )


def write_digested(
    group: zarr.Group,
    name: str,
    arr: np.ndarray,
    chunks: tuple[int, ...],
    digests: dict[str, str],
) -> None:
    """Write ``arr`` as the compressed array ``name`` of ``group`` (every chunk stored,
    even an all-zero one, so that an absent chunk means damage) and record its digest in
    ``digests``: how result stores and checkpoints write their arrays."""
    out = create_digested(group, name, arr.shape, chunks, arr.dtype)
    if arr.size:
        out[...] = arr
    digests[name] = digest_array(arr)


#: Where a group is written: a zarr group, or the directory of one in a local store.
GroupLike = Any


def _local_dir(group: GroupLike) -> Path | None:
    """The directory of ``group`` when it is a local one (a ``Path``, or a zarr group of
    a ``LocalStore``), whose arrays ``zarr_write`` may write directly; else None."""
    if isinstance(group, Path):
        return group
    from zarr.storage import LocalStore

    if isinstance(group, zarr.Group) and isinstance(group.store, LocalStore):
        return Path(group.store.root) / group.path
    return None


def _write_indptr(group: GroupLike, indptr: np.ndarray) -> None:
    """A CSC store's ``indptr`` (n + 1 int64 offsets), in chunks of up to 2²⁰."""
    indptr = np.asarray(indptr, dtype=np.int64)
    size = int(indptr.shape[0])
    chunk = max(1, min(size, 1 << 20))
    local = _local_dir(group)
    if local is not None:
        zarr_write.write_numbers(local / "indptr", indptr, chunk, zarr_write.zstd_numbers())
        return
    ip = group.create_array(
        "indptr", shape=(size,), chunks=(chunk,), dtype=np.int64, config=WRITE_CONFIG
    )
    ip[:] = indptr


def write_labels(group: GroupLike, name: str, labels: Any) -> None:
    """Write ``labels`` as the string array ``name`` of ``group``."""
    arr = as_str_array(labels)
    chunk = max(1, min(arr.shape[0], 1 << 16))
    local = _local_dir(group)
    if local is not None:
        zarr_write.write_strings(local / name, arr, chunk)
        return
    out = group.create_array(name, shape=arr.shape, dtype=str, chunks=(chunk,), config=WRITE_CONFIG)
    out[:] = arr.astype(object)


def _matrix_root(tmp: str) -> GroupLike:
    """The root group of a new matrix store at ``tmp``: its directory when local (its
    arrays are then written by ``zarr_write``), else a zarr group."""
    attrs: dict[str, Any] = {"scalenmf": {"kind": "matrix", "format_version": FORMAT_VERSION}}
    if not storage.is_url(tmp):
        return zarr_write.write_group(tmp, attrs)
    root = zarr.open_group(tmp, mode="w")
    root.attrs.update(attrs)
    return root


#: Entries per chunk of a sparse store's ``data`` and ``indices``.
_SPARSE_CHUNK = 1 << 20


def write_source(
    path: str | os.PathLike[str],
    src: MatrixSource,
    *,
    block_cols: int | None = None,
    row_labels: Any = None,
    col_labels: Any = None,
    overwrite: bool = False,
    dtype: Any = None,
) -> str:
    """Write the source ``src`` (m, n) as a scalenmf Zarr matrix store, atomically.

    Block by block, so a source larger than memory is fine. The options and the result are
    those of ``scalenmf.io.matrix.write_matrix``, which opens anything else as a source.
    """
    m, n = src.shape
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(src.dtype)
    rows = row_labels if row_labels is not None else src.row_labels
    cols = col_labels if col_labels is not None else src.col_labels
    if block_cols is None:
        density = src.nnz / max(1, m * n) if src.is_sparse else 1.0
        block_cols = plan_block_cols(m, n, out_dtype.itemsize, density=density)
    block_cols = max(1, min(int(block_cols), max(n, 1)))
    if src.is_sparse and getattr(src, "read_ahead", False) and src.nnz:
        # A sparse store keeps no column blocking, so it may be written in blocks of
        # about one data chunk: each is then encoded while the next is read ahead
        # (the 2 blocks of the h5ad benchmark become 5).
        per_chunk = max(1, int(_SPARSE_CHUNK * n // src.nnz))
        block_cols = min(block_cols, per_chunk)
    src = src.reblock(block_cols)
    with atomic_output(path, overwrite=overwrite) as tmp:
        if src.is_sparse:
            root = _matrix_root(tmp)
        else:
            root = zarr.open_group(tmp, mode="w")
            root.attrs["scalenmf"] = {"kind": "matrix", "format_version": FORMAT_VERSION}

        def labels() -> None:
            if rows is not None:
                write_labels(root, "row_labels", _labels_checked(rows, m, "row"))
            if cols is not None:
                write_labels(root, "col_labels", _labels_checked(cols, n, "column"))

        if src.is_sparse:
            # The labels are written while the last chunks are still being encoded.
            _write_sparse(root, src, out_dtype, labels)
        else:
            arr = root.create_array(
                "X",
                shape=(m, n),
                chunks=(max(m, 1), block_cols),
                dtype=out_dtype,
                compressors=[_codec()],
                fill_value=0,
                config=WRITE_CONFIG,
            )
            for j in range(src.n_blocks):
                a, b = src.block_bounds[j]
                if b > a:
                    arr[:, a:b] = np.asarray(src.read_block(j), dtype=out_dtype)
            labels()
    return str(path)


class _NotCopyable(Exception):
    """Raised inside ``copy_sparse`` when a block turns out to need rewriting (rows out of
    order or repeated in a column): the partial copy is dropped and the caller rewrites."""


def _copy_codecs(arr: zarr.Array) -> list[Any] | None:
    """Compressors of a new Zarr v3 array that decode the stored chunks of the 1-D ``arr``
    byte for byte, or None when they cannot be copied as they are (not a local directory,
    filters or array-to-array codecs, sharding, big-endian values, another compressor).

    AnnData writes Zarr v2 with Blosc (lz4, level 5, byte shuffle, the store's own
    codec); Blosc, Zstd and gzip frames describe themselves, so the v3 codec of the same
    name decodes what the v2 compressor wrote."""
    from zarr.codecs import BytesCodec, GzipCodec, ZstdCodec
    from zarr.storage import LocalStore

    if not isinstance(arr.store, LocalStore) or arr.ndim != 1 or arr.dtype.byteorder == ">":
        return None
    meta = arr.metadata
    if meta.zarr_format == 2:
        if getattr(meta, "filters", None):
            return None
        comp = getattr(meta, "compressor", None)
        if comp is None:
            return []
        cfg = comp.get_config()
        if cfg.get("id") == "blosc":
            shuffle: Any = {0: "noshuffle", 2: "bitshuffle"}.get(
                int(cfg.get("shuffle", 1)), "shuffle"
            )
            return [
                BloscCodec(
                    cname=cfg["cname"],
                    clevel=int(cfg["clevel"]),
                    shuffle=shuffle,
                    typesize=arr.dtype.itemsize,
                    blocksize=int(cfg.get("blocksize", 0)),
                )
            ]
        if cfg.get("id") == "zstd":
            return [ZstdCodec(level=int(cfg.get("level", 0)))]
        if cfg.get("id") == "gzip":
            return [GzipCodec(level=int(cfg.get("level", 5)))]
        return None
    codecs = list(getattr(meta, "codecs", ()))
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None  # array-to-array codecs first, or sharding as the serializer
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return None
    rest = codecs[1:]
    if not all(isinstance(c, (BloscCodec, ZstdCodec, GzipCodec)) for c in rest):
        return None
    return rest


def copy_sparse(
    path: str | os.PathLike[str],
    src: MatrixSource,
    stored: ZarrSparseSource,
    *,
    overwrite: bool = False,
    check: Any = None,
    progress: Any = None,
) -> bool:
    """Write ``stored`` (a CSC group, or AnnData's cells × genes CSR, in a local Zarr
    store) as a scalenmf matrix store by copying its ``data`` and ``indices`` chunk files
    as they are, without decoding and re-encoding them; True when done, False (nothing
    written) when its layout does not allow it, and the caller writes it the usual way.

    Every block is still read once (decoding is cheap; encoding is what costs): values go
    through ``check(block, start)`` (raising ``InputError`` as the usual writer does), and
    a block whose rows are out of order or repeated in a column is not copied (False).
    The store keeps the source's chunking, compressor and index type; ``indptr`` (int64)
    and the labels of ``src`` are written anew.

    Parameters
    ----------
    path : path-like
        The store to create (atomically).
    src : MatrixSource
        What the store holds: ``stored`` itself, or a wrapper of it (labels, checks).
    stored : ZarrSparseSource
        The source whose chunks are copied.
    check : callable (block, start) -> None, optional
    progress : callable (block) -> None, optional
        Called with each block read.
    """
    g = stored._group()
    arrays = {name: _child_array(g, name) for name in ("data", "indices")}
    codecs = {name: _copy_codecs(arr) for name, arr in arrays.items()}
    if any(c is None for c in codecs.values()) or src.dtype != arrays["data"].dtype:
        return False
    m, n = stored.shape
    try:
        with atomic_output(path, overwrite=overwrite) as tmp:
            root = zarr.open_group(tmp, mode="w")
            root.attrs["scalenmf"] = {"kind": "matrix", "format_version": FORMAT_VERSION}
            out = root.create_group("X")
            out.attrs.update(
                {"encoding-type": "csc_matrix", "encoding-version": "0.1.0", "shape": [m, n]}
            )
            for j in range(stored.n_blocks):
                a, _ = stored.block_bounds[j]
                block: Any = stored.read_block(j)
                if block.nnz and not (block.has_canonical_format and int(block.indices.max()) < m):
                    raise _NotCopyable(j)
                if check is not None:
                    check(block, a)
                if progress is not None:
                    progress(block)
            for name, arr in arrays.items():
                copy = out.create_array(
                    name,
                    shape=arr.shape,
                    chunks=arr.chunks,
                    dtype=arr.dtype,
                    compressors=codecs[name],
                    fill_value=0,
                    config=WRITE_CONFIG,
                )
                _copy_chunk_files(arr, copy)
            _write_indptr(out, stored.indptr)
            for name, labels, length, what in (
                ("row_labels", src.row_labels, m, "row"),
                ("col_labels", src.col_labels, n, "column"),
            ):
                if labels is not None:
                    write_labels(root, name, _labels_checked(labels, length, what))
    except _NotCopyable:
        return False
    return True


def _copy_chunk_files(src: zarr.Array, dst: zarr.Array) -> None:
    """Copy every chunk file of the 1-D ``src`` to the new ``dst`` (same chunking, a codec
    that decodes them), then read the first and the last back through ``dst`` as a check."""
    import shutil

    nchunks = -(-int(src.shape[0]) // int(src.chunks[0])) if src.shape[0] else 0
    src_store: Any = src.store  # local stores (``_copy_codecs``): they have a root
    dst_store: Any = dst.store
    src_root = Path(src_store.root) / src.path
    dst_root = Path(dst_store.root) / dst.path
    for i in range(nchunks):
        target = dst_root / dst.metadata.encode_chunk_key((i,))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_root / src.metadata.encode_chunk_key((i,)), target)
    step = int(src.chunks[0])
    for i in {0, nchunks - 1} if nchunks else set():
        a, b = i * step, min(int(src.shape[0]), (i + 1) * step)
        if not np.array_equal(np.asarray(dst[a:b]), np.asarray(src[a:b])):
            raise IntegrityError(f"copied chunk {i} of {src.path!r} does not read back the same")


def _labels_checked(labels: Any, length: int, what: str) -> np.ndarray:
    arr = as_str_array(labels)
    if arr.shape != (length,):
        raise InputError(f"{what} labels have shape {arr.shape}, expected ({length},)")
    return arr


class _ChunkFiles:
    """Whole chunks of a new 1-D array, encoded and written by a small thread pool
    straight to their files when ``arr`` is a ``zarr_write.LocalArray``; ``put`` falls
    back to zarr's writer for a zarr array (a store that is not a local directory).

    Why: zarr's asynchronous write path costs about as much CPU again as the compression
    itself, and it runs while the caller waits; here blosc (which releases the GIL) encodes
    in the background while the caller reads or parses the next block. At most ``depth``
    chunks are in flight, so memory stays a few chunks."""

    def __init__(self, arr: Any, depth: int = 4):
        self.arr = arr
        self.chunk = int(arr.chunks[0])
        self._local = isinstance(arr, zarr_write.LocalArray)
        self._depth = depth
        self._pending: list[Any] = []
        self._pool: Any = None

    def put(self, start: int, values: np.ndarray) -> None:
        """Store ``values`` at ``start`` (a chunk boundary); ``values`` covers whole chunks
        or ends the array."""
        if not self._local:
            self.arr[start : start + len(values)] = values
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(2, thread_name_prefix="zarr-chunks")
        first = start // self.chunk
        for k in range(0, len(values), self.chunk):
            while len(self._pending) >= self._depth:
                self._pending.pop(0).result()
            piece = values[k : k + self.chunk]
            future = self._pool.submit(self._write, first + k // self.chunk, piece)
            self._pending.append(future)

    def _write(self, index: int, piece: np.ndarray) -> None:
        self.arr.write_chunk(index, piece)

    def finish(self, quiet: bool = False) -> None:
        """Wait for every chunk and stop the threads; raise the first write error unless
        ``quiet`` (another error is already on its way)."""
        try:
            while self._pending:
                future = self._pending.pop(0)
                if quiet:
                    future.cancel()
                    with contextlib.suppress(Exception):
                        future.result()
                else:
                    future.result()
        finally:
            for future in self._pending:
                future.cancel()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


class NotCanonical(Exception):
    """Raised by the ``read`` of ``write_sparse_entries`` when the entries turn out not to
    be in canonical CSC order (rows unsorted or repeated in a column): the partial output
    is dropped and the caller writes the matrix block by block instead."""


def write_sparse_entries(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    indptr: np.ndarray,
    read: Any,
    *,
    dtype: Any,
    row_labels: Any = None,
    col_labels: Any = None,
    overwrite: bool = False,
    what: str = "the input",
) -> bool:
    """Write a CSC matrix given by its ``indptr`` and a reader of entry ranges, atomically.

    For an input already laid out as our CSC (an ``.h5ad`` CSR X of cells × genes): the
    ``data`` and ``indices`` chunks are read as exactly the ranges they store, so nothing
    is copied to assemble a chunk and no column block is built; blosc encodes a chunk in
    the background while the next range is read.

    Parameters
    ----------
    path : path-like
        The store to create.
    shape : (int, int)
        (m, n).
    indptr : ndarray of int64, shape (n + 1,)
        Checked here (from 0 up to its last value, never down).
    read : callable (lo, hi) -> (values, rows)
        Entries ``lo:hi`` in column order: values already cast to ``dtype`` and checked,
        row indices checked to lie in ``0..m-1``; raises ``NotCanonical`` to give up.
    dtype : numpy dtype
        Value type stored.
    row_labels, col_labels : array-like of str, optional
    what : str
        Names the input in the message of a bad ``indptr``.

    Returns
    -------
    bool
        True when written; False (nothing left at ``path``) when ``read`` gave up.
    """
    m, n = (int(s) for s in shape)
    nnz = int(indptr[-1]) if len(indptr) else 0
    check_indptr(indptr, nnz, n, what)
    try:
        with atomic_output(path, overwrite=overwrite) as tmp:
            root = _matrix_root(tmp)
            g, data, indices, chunk, index_dtype = _create_csc(root, m, n, nnz, np.dtype(dtype))
            data_out, indices_out = _ChunkFiles(data), _ChunkFiles(indices)
            try:
                for lo in range(0, nnz, chunk):
                    hi = min(nnz, lo + chunk)
                    values, rows = read(lo, hi)
                    data_out.put(lo, np.asarray(values, dtype=dtype))
                    indices_out.put(lo, np.asarray(rows).astype(index_dtype, copy=False))
                _write_indptr(g, indptr)
                # While the encoders finish the last chunks.
                if row_labels is not None:
                    write_labels(root, "row_labels", _labels_checked(row_labels, m, "row"))
                if col_labels is not None:
                    write_labels(root, "col_labels", _labels_checked(col_labels, n, "column"))
            except BaseException:
                data_out.finish(quiet=True)
                indices_out.finish(quiet=True)
                raise
            data_out.finish()
            indices_out.finish()
    except NotCanonical:
        return False
    return True


def _create_csc(
    root: GroupLike, m: int, n: int, nnz: int, dtype: np.dtype
) -> tuple[GroupLike, Any, Any, int, Any]:
    """The CSC group ``X`` of a new store with empty ``data`` and ``indices`` of ``nnz``
    entries: (group, data, indices, entries per chunk, index dtype). In a local store the
    group is a directory and the arrays are ``zarr_write.LocalArray``; else zarr's."""
    attrs = {"encoding-type": "csc_matrix", "encoding-version": "0.1.0", "shape": [m, n]}
    chunk = max(1, min(max(nnz, 1), _SPARSE_CHUNK))
    index_dtype = np.int32 if m < 2**31 else np.int64
    local = _local_dir(root)
    if local is not None and dtype.name in zarr_write.NUMBER_TYPES:
        g = zarr_write.write_group(local / "X", attrs)
        data: Any = zarr_write.LocalArray(
            g / "data", nnz, chunk, dtype, zarr_write.blosc_lz4(dtype.itemsize)
        )
        indices: Any = zarr_write.LocalArray(
            g / "indices",
            nnz,
            chunk,
            np.dtype(index_dtype),
            zarr_write.blosc_lz4(np.dtype(index_dtype).itemsize),
        )
        return g, data, indices, chunk, index_dtype
    if local is not None:  # an unusual value type: a zarr group of the same directory
        root = zarr.open_group(str(local), mode="r+")
    zg = root.create_group("X")
    zg.attrs.update(attrs)
    data = zg.create_array(
        "data",
        shape=(nnz,),
        chunks=(chunk,),
        dtype=dtype,
        compressors=[_codec()],
        config=WRITE_CONFIG,
    )
    indices = zg.create_array(
        "indices",
        shape=(nnz,),
        chunks=(chunk,),
        dtype=index_dtype,
        compressors=[_codec()],
        config=WRITE_CONFIG,
    )
    return zg, data, indices, chunk, index_dtype


def _blocks(src: MatrixSource) -> Generator[Any, None, None]:
    """The blocks of ``src`` in order; with ``src.read_ahead`` (a source whose reads
    release the GIL, such as h5py's) the next block is read in a thread while the caller
    works on this one. One block in flight: memory grows by one block, not with ``n``."""
    if not getattr(src, "read_ahead", False) or src.n_blocks < 2:
        for j in range(src.n_blocks):
            yield src.read_block(j)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        ahead = pool.submit(src.read_block, 0)
        try:
            for j in range(src.n_blocks):
                block = ahead.result()
                if j + 1 < src.n_blocks:
                    ahead = pool.submit(src.read_block, j + 1)
                yield block
        finally:
            ahead.cancel()  # an error or an abandoned write: the pool waits for the read


def _write_sparse(
    root: zarr.Group, src: MatrixSource, dtype: np.dtype, before_wait: Any = None
) -> None:
    """Write the sparse ``src`` as the CSC group ``X`` of ``root``; ``before_wait()``
    (optional) runs once every block is read and its chunks handed to the encoders,
    before waiting for them, so that its work overlaps theirs."""
    m, n = src.shape
    nnz = src.nnz
    g, data, indices, chunk, index_dtype = _create_csc(root, m, n, nnz, dtype)
    indptr = np.zeros(n + 1, dtype=np.int64)
    data_out, indices_out = _ChunkFiles(data), _ChunkFiles(indices)
    pos = 0  # entries read so far
    written = 0  # entries stored so far: always a whole number of chunks until the end
    carry: list[tuple[np.ndarray, np.ndarray]] = []  # read, not yet stored (< one chunk)

    def store(stop: int) -> None:
        # Whole chunks only (except at the very end): a write that ends inside a chunk
        # would make the next one read, decode and encode that chunk again.
        nonlocal written, carry
        if stop > data.shape[0]:
            data.resize((stop,))
            indices.resize((stop,))
        values = np.concatenate([c[0] for c in carry]) if len(carry) > 1 else carry[0][0]
        rows = np.concatenate([c[1] for c in carry]) if len(carry) > 1 else carry[0][1]
        take = stop - written
        data_out.put(written, values[:take])
        indices_out.put(written, rows[:take])
        carry = [(values[take:], rows[take:])] if take < len(values) else []
        written = stop

    # Closed here on every exit, not by the garbage collector: a read in flight is waited
    # for before the source is closed or the error goes up.
    blocks = contextlib.closing(_blocks(src))
    try:
        with blocks as reads:
            for j, read in enumerate(reads):
                a, b = src.block_bounds[j]
                block = sp.csc_matrix(read)
                block.sum_duplicates()
                k = block.nnz
                if k:
                    carry.append(
                        (
                            block.data.astype(dtype, copy=False),
                            block.indices.astype(index_dtype, copy=False),
                        )
                    )
                indptr[a + 1 : b + 1] = pos + block.indptr[1:]
                pos += k
                if pos - written >= chunk:
                    store(written + (pos - written) // chunk * chunk)
        if pos > written:
            store(pos)
        # While the encoders finish the last chunks: indptr, and the caller's work.
        _write_indptr(g, indptr)
        if before_wait is not None:
            before_wait()
    except BaseException:
        data_out.finish(quiet=True)
        indices_out.finish(quiet=True)
        raise
    data_out.finish()
    indices_out.finish()
    if pos != data.shape[0]:
        data.resize((pos,))
        indices.resize((pos,))
