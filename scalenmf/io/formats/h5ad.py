"""AnnData ``.h5ad`` files, read lazily with h5py (AnnData itself is not needed).

AnnData stores X as cells × genes; scalenmf's X is genes × cells, so the file's CSR rows
(cells) are our columns: a column block is a contiguous slice of ``data``/``indices``
given by ``indptr``, read straight from the HDF5 file. Dense X is read by row ranges and
transposed. ``var`` names become row labels, ``obs`` names column labels.

A CSC-encoded X (sorted by gene) cannot be read by cell blocks without a full pass: it is
read into memory when small (under ``CSC_IN_MEMORY_BYTES``, with a logged note), otherwise
an ``InputError`` says to run ``scalenmf convert``, which re-sorts it out of core.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scalenmf.io._lazy import lazy_module
from scalenmf.io.errors import InputError
from scalenmf.io.formats._stage import StageContext, transpose_sparse
from scalenmf.io.planning import DEFAULT_BLOCK_BYTES, bounds_by_nnz, plan_block_cols
from scalenmf.io.source import Bounds, MatrixSource, SparseArraySource, as_str_array, float_dtype

if TYPE_CHECKING:
    import scipy.sparse as sp
else:
    sp = lazy_module("scipy.sparse")

log = logging.getLogger(__name__)

#: A CSC-encoded X up to this size is loaded into memory by ``open_matrix``.
CSC_IN_MEMORY_BYTES = 1 << 30


def can_open(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".h5ad"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is in the dev/h5ad extras
        raise InputError("reading .h5ad needs h5py: pip install 'scalenmf[h5ad]'") from exc
    return h5py


def _open_file(path: str) -> Any:
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path!r} is not a readable HDF5 (.h5ad) file: {exc}") from exc


def _sparse_encoding(node: Any) -> tuple[str, tuple[int, int]] | None:
    """('csr'|'csc', shape) of a sparse group, in the new or the pre-0.7 AnnData encoding."""
    attrs = node.attrs
    enc = attrs.get("encoding-type")
    if isinstance(enc, bytes):
        enc = enc.decode()
    if enc in ("csr_matrix", "csc_matrix"):
        fmt, shape = enc[:3], attrs.get("shape")
    elif "h5sparse_format" in attrs:
        fmt = attrs["h5sparse_format"]
        fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
        shape = attrs.get("h5sparse_shape")
    else:
        return None
    if shape is None or len(shape) != 2:
        return None
    return fmt, (int(shape[0]), int(shape[1]))


def _decoded(raw: np.ndarray) -> np.ndarray:
    """Stored strings (bytes, as h5py reads them) as str: ASCII in one numpy cast (a third
    of the time of decoding each in Python), anything else as UTF-8."""
    try:
        return np.asarray(raw, dtype="S").astype("U")
    except (UnicodeDecodeError, UnicodeEncodeError, ValueError, TypeError):
        return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in raw])


def _index_labels(f: Any, name: str) -> np.ndarray | None:
    """obs / var names: the dataframe's ``_index`` column (or the old compound 'index')."""
    if name not in f:
        return None
    node = f[name]
    try:
        if hasattr(node, "keys"):
            key = node.attrs.get("_index", "_index")
            key = key.decode() if isinstance(key, bytes) else key
            if key not in node:
                return None
            ds = node[key]
            values = _decoded(ds[:]) if ds.dtype.kind in "OS" else ds[:]
        elif node.dtype.names and "index" in node.dtype.names:
            values = [v.decode() if isinstance(v, bytes) else v for v in node["index"]]
        else:
            return None
    except Exception as exc:  # h5py raises several types on damaged files
        raise InputError(f"cannot read {name} names from {f.filename!r}: {exc}") from exc
    return as_str_array(values)


class H5adSource(MatrixSource):
    """X of an ``.h5ad`` file (cells × genes, CSR or dense) read as genes × cells by blocks.

    The source travels by path: the HDF5 file is opened lazily in the process that reads
    (and reopened after unpickling), so Dask workers read their own blocks.

    Parameters
    ----------
    path : str
        The ``.h5ad`` file.
    block_bounds : list of (int, int), optional
        Column (cell) ranges; planned from the size when omitted.
    """

    #: h5py releases the GIL while it reads: a writer may read the next block in a
    #: thread while it encodes this one (``zarr_store.write_source``).
    read_ahead = True

    def __init__(self, path: str, block_bounds: Bounds | None = None):
        super().__init__()
        self.path = str(path)
        f = self._file()
        if "X" not in f:
            raise InputError(f"{self.path!r} has no X matrix")
        node = f["X"]
        enc = _sparse_encoding(node) if hasattr(node, "keys") else None
        if hasattr(node, "keys"):
            if enc is None:
                raise InputError(f"X in {self.path!r} is a group of unknown encoding")
            fmt, (cells, genes) = enc
            if fmt != "csr":
                raise InputError(
                    f"X in {self.path!r} is stored {fmt.upper()}; H5adSource reads CSR or dense"
                )
            for name in ("data", "indices", "indptr"):
                if name not in node:
                    raise InputError(f"sparse X in {self.path!r} lacks {name!r}")
            self.is_sparse = True
            self.dtype = float_dtype(node["data"].dtype)
        else:
            if node.ndim != 2:
                raise InputError(f"X in {self.path!r} is {node.ndim}-D; expected 2-D")
            cells, genes = (int(s) for s in node.shape)
            self.is_sparse = False
            self.dtype = float_dtype(node.dtype)
        self.shape = (int(genes), int(cells))
        if self.is_sparse:
            ip = self.indptr
            if ip.shape[0] != cells + 1:
                raise InputError(
                    f"X/indptr in {self.path!r} has length {ip.shape[0]}, expected {cells + 1}"
                )
        if block_bounds is None:
            block_bounds = self._default_bounds()
        self.block_bounds = block_bounds
        self.set_labels(_index_labels(f, "var"), _index_labels(f, "obs"))

    def _default_bounds(self) -> Bounds:
        m, n = self.shape
        if self.is_sparse:
            return bounds_by_nnz(self.indptr, DEFAULT_BLOCK_BYTES // (self.dtype.itemsize + 4))
        from scalenmf.io.planning import bounds_from_cols

        return bounds_from_cols(n, plan_block_cols(m, n, self.dtype.itemsize))

    def _file(self) -> Any:
        f = self.__dict__.get("_h5")
        if f is None:
            f = _open_file(self.path)
            self.__dict__["_h5"] = f
        return f

    @property
    def indptr(self) -> np.ndarray:
        ip = self.__dict__.get("_indptr")
        if ip is None:
            try:
                ip = np.asarray(self._file()["X/indptr"][:], dtype=np.int64)
            except Exception as exc:
                raise InputError(f"cannot read X/indptr of {self.path!r}: {exc}") from exc
            self.__dict__["_indptr"] = ip
        return ip

    def __getstate__(self) -> dict[str, Any]:
        # Travel by path; the h5py handle cannot be pickled and is reopened on demand.
        state = dict(self.__dict__)
        state.pop("_h5", None)
        return state

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1]) if self.is_sparse else super().nnz

    def _read(self, start: int, stop: int) -> Any:
        f = self._file()
        try:
            if self.is_sparse:
                ip = self.indptr
                lo, hi = int(ip[start]), int(ip[stop])
                data = np.asarray(f["X/data"][lo:hi])
                indices = np.asarray(f["X/indices"][lo:hi])
                if data.dtype != self.dtype:
                    data = data.astype(self.dtype)
                return sp.csc_matrix(
                    (data, indices, ip[start : stop + 1] - lo),
                    shape=(self.shape[0], stop - start),
                )
            block = np.asarray(f["X"][start:stop, :]).T
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                f"cannot read cells {start}:{stop} of X in {self.path!r} "
                f"(corrupt or truncated file?): {exc}"
            ) from exc
        return block if block.dtype == self.dtype else block.astype(self.dtype)

    def read_entries(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Entries ``lo:hi`` of a CSR X as stored: (values, gene indices), in cell order;
        as our CSC, the column (cell) of entry ``p`` is given by ``indptr``."""
        f = self._file()
        try:
            return np.asarray(f["X/data"][lo:hi]), np.asarray(f["X/indices"][lo:hi])
        except Exception as exc:
            raise InputError(
                f"cannot read entries {lo}:{hi} of X in {self.path!r} "
                f"(corrupt or truncated file?): {exc}"
            ) from exc


class _StoredCSC(MatrixSource):
    """A CSC-encoded X as stored (cells × genes), readable by gene blocks; for re-sorting."""

    def __init__(self, path: str):
        super().__init__()
        self.path = str(path)
        self._f = _open_file(self.path)
        node = self._f["X"]
        enc = _sparse_encoding(node)
        assert enc is not None and enc[0] == "csc"
        self.shape = enc[1]
        self.dtype = float_dtype(node["data"].dtype)
        self.is_sparse = True
        self._indptr = np.asarray(node["indptr"][:], dtype=np.int64)
        self.block_bounds = bounds_by_nnz(
            self._indptr, DEFAULT_BLOCK_BYTES // (self.dtype.itemsize + 4)
        )
        # Stored orientation: rows are cells (X's columns), columns genes (X's rows).
        self.set_labels(_index_labels(self._f, "obs"), _index_labels(self._f, "var"))

    @property
    def nnz(self) -> int:
        return int(self._indptr[-1])

    def _read(self, start: int, stop: int) -> sp.csc_matrix:
        lo, hi = int(self._indptr[start]), int(self._indptr[stop])
        try:
            data = np.asarray(self._f["X/data"][lo:hi], dtype=self.dtype)
            indices = np.asarray(self._f["X/indices"][lo:hi])
        except Exception as exc:
            raise InputError(
                f"cannot read genes {start}:{stop} of X in {self.path!r}: {exc}"
            ) from exc
        return sp.csc_matrix(
            (data, indices, self._indptr[start : stop + 1] - lo),
            shape=(self.shape[0], stop - start),
        )


def _is_csc(path: Path) -> bool:
    f = _open_file(str(path))
    try:
        node = f.get("X")
        enc = _sparse_encoding(node) if node is not None and hasattr(node, "keys") else None
        return enc is not None and enc[0] == "csc"
    finally:
        f.close()


def read(path: Path) -> MatrixSource:
    """Open an ``.h5ad`` file: lazily for CSR or dense X, in memory for a small CSC X."""
    if not _is_csc(path):
        return H5adSource(str(path))
    stored = _StoredCSC(str(path))
    if stored.nbytes > CSC_IN_MEMORY_BYTES:
        raise InputError(
            f"X in {str(path)!r} is stored CSC (gene-major, {stored.nbytes / 2**30:.1f} GiB), "
            "which cannot be read by blocks of cells; run `scalenmf convert` on it once "
            "(it re-sorts the matrix out of core), or save it with X in CSR form"
        )
    log.info("X in %s is stored CSC; reading it into memory (convert it for out-of-core use)", path)
    X = stored.read_columns(0, stored.shape[1]).T
    return SparseArraySource(X).set_labels(stored.col_labels, stored.row_labels)


def can_stage(path: Path) -> bool:
    return can_open(path) and _is_csc(path)


def stage(path: Path, ctx: StageContext) -> MatrixSource:
    """For ``convert``: re-sort a CSC X into cell blocks out of core (transposing it)."""
    stored = _StoredCSC(str(path))
    if ctx.transpose:
        return stored
    return transpose_sparse(stored, ctx)


__all__ = ["H5adSource", "can_open", "can_stage", "read", "stage"]
