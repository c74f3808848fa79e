"""Block states kept in a scratch Zarr store instead of in memory.

An executor holds one *state* per column block of X (every run's H block and whatever else
the model keeps per block). For millions of samples these add up to k × n values and more,
so past a share of the memory limit the executor keeps them here: each state is written
when its block step returns it and read back when its block is stepped again, so only the
states of the blocks in flight are in memory.

A state is any picklable object (dataclasses, dicts of arrays). It is stored as one uint8
array per block: the pickle (protocol 5) with its array buffers taken out of band, laid out
as ``header | pickle | buffer 0 | buffer 1 | …`` so that reading it back is one chunk read
and the arrays are rebuilt on that buffer without another copy. Uncompressed: H blocks are
dense floats that compress little, and every step rewrites them.

Generations (``name``) let a Dask executor write a new anchor completely before the old one
is dropped (see ``engine/dask_exec.py``); the local executor uses one.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import tempfile
import threading
import uuid
import weakref
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from scalenmf.io import storage, zarr_write
from scalenmf.io.integrity import IntegrityError

#: Environment variable naming the directory for scratch stores (default: the system's).
SCRATCH_ENV = "SCALENMF_SCRATCH"
#: Prefix of a scratch store's name (a leftover one can be recognised and removed).
SCRATCH_PREFIX = "scalenmf-scratch-"
_HEADER = struct.Struct("<QQI")  # pickle length, number of buffers, CRC-32 of the rest
_LENGTH = struct.Struct("<Q")
#: Start every buffer on a multiple of this (numpy and BLAS want aligned arrays).
_ALIGN = 64


def scratch_location(where: str | os.PathLike[str] | None = None) -> str:
    """A fresh, unique path for a scratch store inside ``where``.

    ``where`` defaults to ``$SCALENMF_SCRATCH`` or the system's temporary directory. A URL
    (``s3://bucket/prefix``) gives a location on that file system, for Dask workers that
    share no disk.
    """
    base = where if where is not None else os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()
    base = storage.local_path(os.fspath(base))
    name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}.zarr"
    if storage.is_url(base):
        return f"{str(base).rstrip('/')}/{name}"
    return os.path.join(base, name)


def check_scratch(where: Any) -> Any:
    """``where`` as a usable directory for scratch stores: created if missing, refused if
    it is not a writable directory. None (the default location) and URLs pass unchanged.

    Raises
    ------
    ValueError
        ``where`` names a file, lies under a file, or cannot be written; the message names it.
    """
    if where is None:
        return None
    if not isinstance(where, (str, os.PathLike)):
        raise ValueError(f"scratch must be a directory path or URL, not {type(where).__name__}")
    where = storage.local_path(os.fspath(where))
    if storage.is_url(where):
        return where
    if os.path.exists(where) and not os.path.isdir(where):
        raise ValueError(f"scratch {where!r} is a file, not a directory")
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"scratch directory {where!r} cannot be created: {exc.strerror or exc}"
        ) from None
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"scratch directory {where!r} is not writable")
    return where


def encode_state(state: Any) -> np.ndarray:
    """One block state as a flat uint8 array (see the module docstring for the layout)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(state, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    offset = _HEADER.size + _LENGTH.size * len(raws) + len(body)
    starts = []
    for raw in raws:
        offset = -(-offset // _ALIGN) * _ALIGN
        starts.append(offset)
        offset += raw.nbytes
    out = np.zeros(offset, dtype=np.uint8)
    lengths = b"".join(_LENGTH.pack(r.nbytes) for r in raws)
    pos = _HEADER.size
    out[pos : pos + len(lengths)] = np.frombuffer(lengths, dtype=np.uint8)
    pos += len(lengths)
    out[pos : pos + len(body)] = np.frombuffer(body, dtype=np.uint8)
    for start, raw in zip(starts, raws, strict=True):
        out[start : start + raw.nbytes] = np.frombuffer(raw, dtype=np.uint8)
    # A checksum of everything after the header: a damaged or missing scratch chunk must
    # stop the fit, not feed it wrong numbers.
    crc = zlib.crc32(out[_HEADER.size :].data)
    out[: _HEADER.size] = np.frombuffer(_HEADER.pack(len(body), len(raws), crc), dtype=np.uint8)
    return out


def decode_state(data: np.ndarray) -> Any:
    """The block state ``encode_state`` turned into ``data``."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.size < _HEADER.size:
        raise IntegrityError("a stored block state is truncated")
    body_len, n_buffers, crc = _HEADER.unpack(data[: _HEADER.size].tobytes())
    if body_len == 0 or zlib.crc32(data[_HEADER.size :].data) != crc:
        raise IntegrityError(
            "a stored block state is damaged (its checksum does not match): the scratch "
            "store was changed or lost while the fit ran"
        )
    pos = _HEADER.size
    lengths = [int(v) for v in data[pos : pos + _LENGTH.size * n_buffers].view("<u8")]
    pos += _LENGTH.size * n_buffers
    body = data[pos : pos + body_len].tobytes()
    offset = pos + body_len
    views = []
    for length in lengths:
        offset = -(-offset // _ALIGN) * _ALIGN
        views.append(memoryview(data[offset : offset + length]))  # type: ignore[arg-type]
        offset += length
    return pickle.loads(body, buffers=views)


def state_nbytes(state: Any) -> int:
    """Bytes of the arrays in a state (walks dicts, lists, tuples and dataclasses)."""
    if isinstance(state, np.ndarray):
        return int(state.nbytes)
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    fields = getattr(state, "__dataclass_fields__", None)
    if fields is not None:
        return sum(state_nbytes(getattr(state, name, None)) for name in fields)
    nbytes = getattr(state, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, (int, np.integer)) else 0


class _Everything(set):
    """A set that holds every name (what a worker's copy of a store takes as prepared)."""

    def __contains__(self, item: object) -> bool:
        return True


_ANY = _Everything()


class StateStore:
    """Per-block states in a scratch Zarr store (created on first write, removed by ``remove``).

    Parameters
    ----------
    path : str
        Where the store goes (a local path or a URL reachable by everyone who reads it).
    """

    def __init__(self, path: str):
        self.path = path
        self._root: zarr.Group | None = None
        self._prepared: set[str] = set()
        # Threads of one process (the local executor's, a Dask worker's) open and extend
        # the store together; zarr's "create if absent" is not safe against that.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Travels to Dask workers as its path; each process opens the store itself.
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._root = None
        self._lock = threading.Lock()
        # A worker trusts the writer's ``prepare``: re-creating the group there would race
        # the other workers writing beside it.
        self._prepared = _ANY

    def _group(self) -> zarr.Group:
        with self._lock:
            if self._root is None:
                store = storage.zarr_store(self.path, read_only=False)
                self._root = zarr.open_group(store, mode="a")
            return self._root

    def _local_dir(self) -> Path | None:
        """The store's directory when it is local (its arrays may be written directly)."""
        path = storage.local_path(self.path)
        return None if storage.is_url(path) else Path(path)

    @staticmethod
    def _key(j: int, name: str) -> str:
        return f"{name}/{int(j)}"

    def prepare(self, name: str) -> None:
        """Create the group of a generation (before several processes write into it)."""
        root = self._group()
        with self._lock:
            root.require_group(name)
            self._prepared.add(name)

    def write(self, j: int, state: Any, name: str = "s") -> None:
        """Store block ``j``'s state (replacing the one stored before)."""
        if name not in self._prepared:
            self.prepare(name)
        data = encode_state(state)
        local = self._local_dir()
        if local is not None:
            # As zarr writes it, without its machinery: zarr's create_array costs a few ms
            # a block, and leaves reference cycles (its JSON encoders) for the collector,
            # a few KB a block that were still held at the peak of a bounded projection.
            zarr_write.write_numbers(
                local / self._key(j, name), data, max(1, data.shape[0]), zarr_write.raw_bytes()
            )
            return
        node = self._group().create_array(
            self._key(j, name),
            shape=data.shape,
            chunks=(max(1, data.shape[0]),),
            dtype=np.uint8,
            compressors=None,
            fill_value=0,
            overwrite=True,
        )
        node[...] = data

    def read(self, j: int, name: str = "s") -> Any:
        """Block ``j``'s stored state."""
        node = self._group()[self._key(j, name)]
        assert isinstance(node, zarr.Array)
        return decode_state(np.asarray(node[...]))

    def drop(self, name: str) -> None:
        """Forget a generation of states."""
        root = self._group()
        if name in root:
            del root[name]
        if isinstance(self._prepared, set):
            self._prepared.discard(name)

    def remove(self) -> None:
        """Delete the store (whatever it holds)."""
        self._root = None
        path = storage.local_path(self.path)
        if storage.is_url(path):
            if storage.exists(path):
                storage.remove(path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def columns_array(
    where: Any, shape: tuple[int, ...], dtype: Any, chunk_cols: int, name: str = "H"
) -> zarr.Array:
    """An empty (rows, n) or (n,) array in a fresh scratch store, filled by column blocks.

    For a result's H (or a per-sample figure) when the block states were kept out of
    memory: the fit writes it block by block and hands it on as this array (read lazily,
    saved chunk by chunk). The store is removed when the array object is garbage-collected
    (or the process exits).
    """
    path = scratch_location(where)
    root = zarr.open_group(storage.zarr_store(path, read_only=False), mode="w")
    dims = tuple(int(s) for s in shape)
    chunks = (*(max(1, s) for s in dims[:-1]), max(1, min(dims[-1], int(chunk_cols))))
    arr = root.create_array(
        name,
        shape=dims,
        chunks=chunks,
        dtype=np.dtype(dtype),
        compressors=None,
        fill_value=0,
    )
    weakref.finalize(arr, _remove_store, path)
    return arr


def _remove_store(path: str) -> None:
    StateStore(path).remove()
