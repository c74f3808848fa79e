"""Integrity of stores: every chunk present, every sparse block well formed, digests kept.

Zarr reads an absent chunk as the fill value, silently: a store with one chunk file
deleted (or a header declaring far more columns than it holds data for) reads as zeros.
So every array scalenmf reads is checked for completeness when it is opened, with one
listing of its keys (not one request per read). Stores that scalenmf writes store every
chunk, even an all-zero one (``write_empty_chunks``), so that "absent" always means "lost".

Sparse blocks come from files anyone may have written; scipy's sparse products trust the
index arrays and read out of bounds (a segmentation fault) when they lie. ``check_csc``
validates a block's ``indptr`` and ``indices`` with a few vectorised passes before any
product sees it.

Checkpoints and result stores keep a BLAKE2b digest of each array's decoded values and
of their attrs, verified when they are read back: a flipped bit inside a compressed chunk
that still decodes, or an edited attr, is refused by name instead of giving another result.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams

from scalenmf.io.errors import InputError

#: Array config for everything scalenmf writes: all-zero chunks are stored too.
WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}
DIGEST_BYTES = 16


class IntegrityError(InputError):
    """A store is incomplete, malformed or does not match its recorded digests."""


# -- completeness ---------------------------------------------------------------------


def _stored_keys(arr: zarr.Array) -> set[str]:
    from zarr.core.sync import sync

    store = arr.store_path.store
    prefix = arr.store_path.path
    prefix = f"{prefix}/" if prefix else ""

    async def collect() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return {key[len(prefix) :] for key in sync(collect())}


def _grid_indices(grid: list[int]) -> Iterator[tuple[int, ...]]:
    # C order, generated one at a time: itertools.product and np.ndindex both build
    # something of the grid's size first, which for a lying shape is itself the problem.
    idx = [0] * len(grid)
    while True:
        yield tuple(idx)
        axis = len(grid) - 1
        while axis >= 0:
            idx[axis] += 1
            if idx[axis] < grid[axis]:
                break
            idx[axis] = 0
            axis -= 1
        if axis < 0:
            return


def missing_chunk(arr: zarr.Array) -> tuple[tuple[int, ...], str] | None:
    """The first chunk (grid index, key) of ``arr`` absent from its store, or None.

    One listing of the array's keys; the grid is walked only when some key is missing,
    and then only up to the first absent one.
    """
    if arr.ndim == 0 or any(int(s) == 0 for s in arr.shape):
        return None
    outer = arr.shards or arr.chunks
    grid = [math.ceil(int(s) / int(c)) for s, c in zip(arr.shape, outer, strict=True)]
    stored = _stored_keys(arr)
    encode = arr.metadata.encode_chunk_key
    # Walked lazily in order up to the first absent key: at most len(stored) + 1 steps,
    # however many chunks the metadata declares.
    for idx in _grid_indices(grid):
        key = encode(idx)
        if key not in stored:
            return tuple(int(i) for i in idx), key
    return None


def require_complete(arr: zarr.Array, name: str, where: str) -> None:
    """Raise ``IntegrityError`` naming the array and chunk if any chunk of ``arr`` is absent.

    Parameters
    ----------
    arr : zarr.Array
        The array to check.
    name : str
        Its name inside the store (for the message).
    where : str
        The store's path (for the message).
    """
    gone = missing_chunk(arr)
    if gone is None:
        return
    idx, key = gone
    outer = arr.shards or arr.chunks
    n_chunks = math.prod(math.ceil(int(s) / int(c)) for s, c in zip(arr.shape, outer, strict=True))
    raise IntegrityError(
        f"array {name!r} in {where!r} is incomplete: chunk {idx} (key {name}/{key}) is missing "
        f"from the store ({n_chunks} chunk(s) declared for shape {tuple(arr.shape)}); "
        "an absent chunk would read as zeros"
    )


# -- sparse blocks --------------------------------------------------------------------


def check_csc(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, m: int, what: str) -> None:
    """Refuse a CSC block whose index arrays would make scipy read out of bounds.

    Checks: ``indptr`` is 1-D, starts at 0, never decreases and ends at ``len(indices)``
    == ``len(data)``; every index is an integer in ``0 <= i < m``. Duplicate row indices
    within a column are allowed (scalenmf sums them, as scipy's ``sum_duplicates`` does).

    Parameters
    ----------
    data : ndarray, shape (nnz,)
    indices : ndarray, shape (nnz,)
    indptr : ndarray, shape (n + 1,)
        Relative to this block (``indptr[0]`` must be 0).
    m : int
        Rows of the matrix.
    what : str
        Names the block in the message (store, group and column range).
    """
    if indices.ndim != 1 or data.ndim != 1 or indptr.ndim != 1:
        raise IntegrityError(f"{what}: data, indices and indptr must be 1-D")
    if indices.dtype.kind not in "iu":
        raise IntegrityError(f"{what}: indices have dtype {indices.dtype}; expected integers")
    if indptr.shape[0] == 0 or indptr[0] != 0:
        raise IntegrityError(f"{what}: indptr does not start at 0")
    if indptr.shape[0] > 1 and bool((np.diff(indptr) < 0).any()):
        first = int(np.flatnonzero(np.diff(indptr) < 0)[0])
        raise IntegrityError(f"{what}: indptr decreases at position {first} (not monotone)")
    nnz = int(indptr[-1])
    if nnz != indices.shape[0] or nnz != data.shape[0]:
        raise IntegrityError(
            f"{what}: indptr ends at {nnz}, but the block holds {indices.shape[0]} indices "
            f"and {data.shape[0]} values"
        )
    if nnz:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= m:
            bad = lo if lo < 0 else hi
            raise IntegrityError(
                f"{what}: row index {bad} is out of range for a matrix of {m} rows "
                "(the declared shape is smaller than the indices)"
            )


def check_indptr(indptr: np.ndarray, nnz: int, n: int, what: str) -> None:
    """Check a whole store's ``indptr`` (n + 1,) once: from 0 up to ``nnz``, never down."""
    if indptr.shape != (n + 1,):
        raise IntegrityError(
            f"{what}: indptr has length {indptr.shape[0]}, expected {n + 1} (columns + 1)"
        )
    if indptr.dtype.kind not in "iu":
        raise IntegrityError(f"{what}: indptr has dtype {indptr.dtype}; expected integers")
    if int(indptr[0]) != 0:
        raise IntegrityError(f"{what}: indptr starts at {int(indptr[0])}, not 0")
    steps = np.diff(indptr)
    if steps.size and bool((steps < 0).any()):
        first = int(np.flatnonzero(steps < 0)[0])
        raise IntegrityError(f"{what}: indptr decreases at column {first} (not monotone)")
    if int(indptr[-1]) != nnz:
        raise IntegrityError(
            f"{what}: indptr ends at {int(indptr[-1])}, but data and indices hold {nnz} entries"
        )


# -- digests --------------------------------------------------------------------------


def digest_array(arr: np.ndarray) -> str:
    """Hex BLAKE2b of an array's dtype, shape and values (C order)."""
    a = np.asarray(arr)
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    if a.dtype.kind in "OUST":
        # Strings by value, whatever their numpy type (fixed width, object, StringDType).
        h.update(f"str{a.shape}".encode())
        h.update(json.dumps([str(v) for v in a.astype(object).ravel().tolist()]).encode())
        return h.hexdigest()
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    if a.size:  # an empty array is its dtype and shape (memoryview refuses zero strides)
        h.update(memoryview(a).cast("B"))  # type: ignore[arg-type]
    return h.hexdigest()


def digest_stored(arr: zarr.Array, slab_bytes: int = 1 << 24) -> str:
    """``digest_array`` of a stored array, read in row slabs of about ``slab_bytes``.

    Equal to ``digest_array(arr[...])`` (the C order of the whole is the concatenation of
    its row slabs), without holding the whole array: an H of millions of samples is
    verified in bounded memory.
    """
    if arr.dtype.kind in "OUST" or arr.ndim == 0:
        return digest_array(np.asarray(arr[...]))
    rows = int(arr.shape[0])
    row_bytes = max(1, math.prod(int(d) for d in arr.shape[1:]) * arr.dtype.itemsize)
    step = max(1, slab_bytes // row_bytes)
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(f"{np.dtype(arr.dtype).str}{tuple(int(d) for d in arr.shape)}".encode())
    for lo in range(0, rows, step):
        slab = np.ascontiguousarray(arr[lo : lo + step])
        if slab.size:
            h.update(memoryview(slab).cast("B"))  # type: ignore[arg-type]
    return h.hexdigest()


def digest_json(value: Any) -> str:
    """Hex BLAKE2b of a JSON value in canonical form (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).hexdigest()


def verify_digest(actual: str, expected: Any, what: str, where: str) -> None:
    """Raise ``IntegrityError`` if a recomputed digest differs from the recorded one."""
    if expected is not None and actual != expected:
        raise IntegrityError(
            f"{what} in {where!r} does not match its recorded checksum (the store was "
            "damaged or edited after it was written)"
        )


# Arrays written by scalenmf through code that does not pass ``WRITE_CONFIG`` (staging
# stores of the format converters, DNMF outputs) must also store their all-zero chunks,
# since every store scalenmf reads back is checked for completeness. Storing an empty
# chunk costs a few bytes and changes no value read, for this process's other users too.
zarr.config.set({"array.write_empty_chunks": True})
