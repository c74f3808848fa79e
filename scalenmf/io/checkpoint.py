"""Checkpoint stores: a loop's state, published so that a reader never sees half of one.

Layout of a checkpoint location ``CKPT`` (by default ``OUT.zarr.checkpoint`` beside the
result)::

    CKPT/LATEST          one line: the name of the newest complete checkpoint
    CKPT/it-000050/      a Zarr group: block states, model arrays, attrs (the loop's trace)

A checkpoint is written in full under a temporary name, renamed to ``it-NNNNNN``, and only
then named in ``LATEST`` (a one-line file replaced atomically; a single PUT on object
stores). A process killed at any instant therefore leaves ``LATEST`` naming a complete
checkpoint, or no ``LATEST`` at all; leftovers of an interrupted write are removed by the
next write.

Block states are what the executors hold per column block: ``None``, an ndarray, or a list
of (ndarray or None) — one slot per run for NMF. Slot ``r`` of every block is stored as one
flat array ``states/slot{r}`` with the blocks' shapes beside it, so a checkpoint is a
handful of arrays whatever the number of blocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, overload

import numpy as np
import zarr

from scalenmf.io import storage
from scalenmf.io.errors import InputError
from scalenmf.io.integrity import (
    IntegrityError,
    digest_array,
    digest_json,
    digest_stored,
    require_complete,
)
from scalenmf.io.zarr_store import create_digested, read_whole, write_digested

POINTER = "LATEST"
CHECKPOINT_FORMAT_VERSION = 2
#: Root attr holding the digests of every array and of the other attrs.
INTEGRITY = "integrity"
#: Elements per chunk of the flat state arrays (~16 MB of float64).
STATE_CHUNK = 1 << 21
#: Elements per chunk when the states are streamed (~4 MB of float64, shared by the
#: slots): the writer holds one chunk per slot and zarr about two more while it writes.
STREAM_CHUNK = 1 << 19


class CheckpointError(InputError):
    """A checkpoint cannot be read, or does not belong to this fit."""


def _parts(state: Any) -> tuple[str, list[Any]]:
    """A block state's kind and its slots (see the module docstring)."""
    if state is None:
        return "none", []
    if isinstance(state, np.ndarray):
        return "array", [state]
    if isinstance(state, (list, tuple)):
        return "list", list(state)
    raise TypeError(f"cannot checkpoint a block state of type {type(state).__name__}")


def _is_fortran(a: np.ndarray) -> bool:
    # The memory order is kept too: BLAS may sum in another order for another layout,
    # and a resumed fit must match the uninterrupted one bit for bit.
    return bool(a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous)


class _SlotWriter:
    """Slot ``r`` of every block, appended block by block to one flat array.

    Values are gathered in a buffer of one chunk and written a whole chunk at a time (no
    chunk is read back and rewritten), so the states pass through in bounded memory
    however many blocks there are.
    """

    def __init__(self, group: zarr.Group, r: int, dtype: np.dtype, chunk: int, before: int):
        self.group, self.name = group, f"states/slot{r}"
        self.dtype, self.chunk = np.dtype(dtype), int(chunk)
        #: (shape or None, fortran) per block; blocks before this slot appeared have none.
        self.blocks: list[tuple[tuple[int, ...] | None, bool]] = [(None, False)] * before
        self.array = create_digested(group, self.name, (0,), (self.chunk,), self.dtype)
        self.buffer = np.empty(self.chunk, dtype=self.dtype)
        self.filled = 0
        self.written = 0

    def add(self, part: Any) -> None:
        if part is None:
            self.blocks.append((None, False))
            return
        a = np.asarray(part)
        if a.dtype != self.dtype and np.result_type(self.dtype, a.dtype) != self.dtype:
            raise TypeError(
                f"block states of one slot have dtypes {self.dtype} and {a.dtype}; a "
                "streamed checkpoint keeps the first (give the states as a list to upcast)"
            )
        fortran = _is_fortran(a)
        self.blocks.append((tuple(int(d) for d in a.shape), fortran))
        values = a.ravel(order="F" if fortran else "C")
        pos = 0
        while pos < values.size:
            take = min(values.size - pos, self.chunk - self.filled)
            self.buffer[self.filled : self.filled + take] = values[pos : pos + take]
            self.filled += take
            pos += take
            if self.filled == self.chunk:
                self._flush()

    def _flush(self) -> None:
        if not self.filled:
            return
        end = self.written + self.filled
        self.array.resize((end,))
        self.array[self.written : end] = self.buffer[: self.filled]
        self.written, self.filled = end, 0

    def close(self, n_blocks: int, digests: dict[str, str]) -> None:
        self._flush()
        digests[self.name] = digest_stored(self.array, self.chunk * self.dtype.itemsize)
        self.blocks += [(None, False)] * (n_blocks - len(self.blocks))
        ndim = max((len(sh) for sh, _ in self.blocks if sh is not None), default=2)
        shapes = np.full((n_blocks, ndim), -1, dtype=np.int64)
        fortran = np.zeros(n_blocks, dtype=np.int8)
        for j, (shape, f) in enumerate(self.blocks):
            if shape is not None:
                shapes[j] = shape
                fortran[j] = f
        r = self.name.removeprefix("states/slot")
        _write(self.group, f"states/shape{r}", shapes, digests)
        _write(self.group, f"states/fortran{r}", fortran, digests)


def _encode_states(
    group: zarr.Group, states: Iterable[Any], digests: dict[str, str]
) -> dict[str, Any]:
    """Write the block states, taking them one at a time from ``states``.

    ``states`` may be an iterator (the executor's, reading them from its scratch store):
    only one block's state and a chunk per slot are in memory at once. A list's slots are
    stored in the common dtype of their arrays; an iterator's in the first array's.
    """
    dtypes: dict[int, np.dtype] = {}
    if isinstance(states, Sequence):
        arrays: dict[int, list[np.dtype]] = {}
        for state in states:
            for r, part in enumerate(_parts(state)[1]):
                if part is not None:
                    arrays.setdefault(r, []).append(np.asarray(part).dtype)
        dtypes = {r: np.result_type(*ds) for r, ds in arrays.items()}
    kinds: list[str] = []
    lengths: list[int] = []
    slots: list[_SlotWriter | None] = []
    n_blocks = 0
    for state in states:
        kind, parts = _parts(state)
        kinds.append(kind)
        lengths.append(len(parts))
        for r, part in enumerate(parts):
            while len(slots) <= r:
                slots.append(None)
            slot = slots[r]
            if slot is None and part is not None:
                dtype = dtypes.get(r, np.asarray(part).dtype)
                chunk = max(1 << 16, STREAM_CHUNK // max(1, len(parts)))
                slot = slots[r] = _SlotWriter(group, r, dtype, chunk, n_blocks)
            if slot is not None:
                slot.add(part)
        for r, slot in enumerate(slots):
            if slot is not None and r >= len(parts):
                slot.add(None)
        n_blocks += 1
    for r, slot in enumerate(slots):
        if slot is None:  # no block had an array in this slot
            empty = np.zeros(0, dtype=np.float64)
            _write(group, f"states/slot{r}", empty, digests, chunk=STATE_CHUNK)
            _write(group, f"states/shape{r}", np.full((n_blocks, 2), -1, np.int64), digests)
            _write(group, f"states/fortran{r}", np.zeros(n_blocks, np.int8), digests)
        else:
            slot.close(n_blocks, digests)
    return {"kinds": kinds, "slots": len(slots), "lengths": lengths}


class StoredStates(Sequence[Any]):
    """The block states of a checkpoint, read from it one block at a time.

    Every array was checked against its recorded digest when this was made (read in
    slabs); indexing or iterating then reads a block's values (iteration keeps the last
    chunk of every slot, so each chunk is decoded once). The checkpoint must stay in
    place while the states are read.
    """

    def __init__(self, group: zarr.Group, meta: dict[str, Any], digests: dict[str, str]):
        self.kinds = list(meta["kinds"])
        self.lengths = [int(n) for n in meta["lengths"]]
        self.slots: list[zarr.Array] = []
        self.shapes: list[np.ndarray] = []
        self.fortran: list[np.ndarray] = []
        self.offsets: list[np.ndarray] = []
        for r in range(int(meta["slots"])):
            flat = _node(group, f"states/slot{r}", digests)
            slab = int(flat.chunks[0]) * flat.dtype.itemsize
            try:
                digest = digest_stored(flat, slab)
            except Exception as exc:  # codecs raise their own types for damaged bytes
                raise CheckpointError(
                    f"checkpoint {str(group.store_path)!r}: array 'states/slot{r}' is corrupt "
                    f"or truncated ({type(exc).__name__}: {exc}); remove the checkpoint to "
                    "start afresh"
                ) from exc
            if digest != digests[f"states/slot{r}"]:
                raise CheckpointError(_damaged(group, f"states/slot{r}"))
            shapes = _read(group, f"states/shape{r}", digests)
            sizes = np.where(shapes[:, 0] < 0, 0, np.prod(np.maximum(shapes, 0), axis=1))
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            if len(shapes) != len(self.kinds) or offsets[-1] != flat.shape[0]:
                raise CheckpointError(
                    f"state slot {r} holds {flat.shape[0]} values, expected {offsets[-1]}"
                )
            self.slots.append(flat)
            self.shapes.append(shapes)
            self.fortran.append(_read(group, f"states/fortran{r}", digests))
            self.offsets.append(offsets)
        self._cache: dict[int, tuple[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.kinds)

    def _values(self, r: int, lo: int, hi: int) -> np.ndarray:
        flat = self.slots[r]
        chunk = int(flat.chunks[0])
        if hi - lo > chunk:
            return np.asarray(flat[lo:hi])
        out = np.empty(hi - lo, dtype=flat.dtype)
        pos = lo
        while pos < hi:
            c = pos // chunk
            cached = self._cache.get(r)
            if cached is None or cached[0] != c:
                cached = (c, np.asarray(flat[c * chunk : min((c + 1) * chunk, flat.shape[0])]))
                self._cache[r] = cached
            take = min(hi, (c + 1) * chunk) - pos
            out[pos - lo : pos - lo + take] = cached[1][pos - c * chunk : pos - c * chunk + take]
            pos += take
        return out

    def _block(self, r: int, j: int) -> np.ndarray | None:
        shape = self.shapes[r][j]
        if shape[0] < 0:
            return None
        dims = tuple(int(d) for d in shape)
        order: Literal["C", "F"] = "F" if self.fortran[r][j] else "C"
        lo, hi = int(self.offsets[r][j]), int(self.offsets[r][j + 1])
        return np.reshape(self._values(r, lo, hi), dims, order=order).copy(order=order)

    @overload
    def __getitem__(self, j: int) -> Any: ...
    @overload
    def __getitem__(self, j: slice) -> list[Any]: ...
    def __getitem__(self, j: int | slice) -> Any:
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(j)
        kind = self.kinds[j]
        if kind == "none":
            return None
        if kind == "array":
            return self._block(0, j)
        return [self._block(r, j) for r in range(self.lengths[j])]

    def __iter__(self) -> Iterator[Any]:
        for j in range(len(self)):
            yield self[j]


def _decode_states(
    group: zarr.Group, meta: dict[str, Any], digests: dict[str, str]
) -> StoredStates:
    return StoredStates(group, meta, digests)


def _damaged(group: zarr.Group, name: str) -> str:
    return (
        f"checkpoint {str(group.store_path)!r}: array {name!r} does not match its recorded "
        "checksum (damaged after it was written); remove the checkpoint to start afresh"
    )


def _node(group: zarr.Group, name: str, digests: dict[str, str]) -> zarr.Array:
    """Array ``name``, present, complete and with a recorded digest (not yet compared)."""
    where = str(group.store_path)
    try:
        node = group[name]
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {where!r} lacks array {name!r}") from exc
    if not isinstance(node, zarr.Array):
        raise CheckpointError(f"{name!r} in the checkpoint is not an array")
    try:
        require_complete(node, name, where)
    except IntegrityError as exc:
        raise CheckpointError(f"checkpoint {exc}") from exc
    if digests.get(name) is None:
        raise CheckpointError(f"checkpoint {where!r} records no checksum for array {name!r}")
    return node


def _read(group: zarr.Group, name: str, digests: dict[str, str]) -> np.ndarray:
    """Array ``name``, complete and matching its digest, else ``CheckpointError`` naming it."""
    node = _node(group, name, digests)
    try:
        values = read_whole(node, name, f"checkpoint {str(group.store_path)!r}")
    except IntegrityError as exc:
        raise CheckpointError(f"{exc}; remove the checkpoint to start afresh") from exc
    if digest_array(values) != digests[name]:
        raise CheckpointError(_damaged(group, name))
    return values


def _write(
    group: zarr.Group,
    name: str,
    arr: np.ndarray,
    digests: dict[str, str],
    chunk: int | None = None,
) -> None:
    arr = np.ascontiguousarray(arr)
    if chunk is not None and arr.ndim == 1:
        chunks: tuple[int, ...] = (max(1, min(arr.shape[0], chunk)),)
    else:
        chunks = tuple(max(1, d) for d in arr.shape) or ()
    write_digested(group, name, arr, chunks, digests)


def _encode_model(
    group: zarr.Group, state: dict[str, Any], digests: dict[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            _write(group, f"model/{name}", value, digests)
            meta[name] = {"array": True}
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
            for i, arr in enumerate(value):
                _write(group, f"model/{name}/{i}", arr, digests)
            meta[name] = {"arrays": len(value)}
        else:
            meta[name] = {"value": json.loads(json.dumps(value))}
    return meta


def _decode_model(
    group: zarr.Group, meta: dict[str, Any], digests: dict[str, str]
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, how in meta.items():
        if how.get("array"):
            state[name] = _read(group, f"model/{name}", digests)
        elif "arrays" in how:
            state[name] = [_read(group, f"model/{name}/{i}", digests) for i in range(how["arrays"])]
        else:
            state[name] = how["value"]
    return state


def write_checkpoint(
    location: str,
    iteration: int,
    *,
    block_states: Iterable[Any],
    model_state: dict[str, Any],
    attrs: dict[str, Any],
) -> str:
    """Publish a checkpoint at ``location``; return the checkpoint's name.

    Parameters
    ----------
    location : path or URL
        The checkpoint directory (created if missing).
    iteration : int
        Iterations completed; names the checkpoint.
    block_states : iterable
        One state per column block (see the module docstring), taken one at a time: an
        iterator over states kept in a scratch store is written in bounded memory.
    model_state : dict
        Arrays, lists of arrays, or JSON values.
    attrs : dict
        JSON metadata (the loop trace, the fit's fingerprint, ...).
    """
    storage.makedirs(location)
    name = f"it-{int(iteration):06d}"
    final = f"{location.rstrip('/')}/{name}"
    tmp = storage.sibling(final, "tmp")
    try:
        root = zarr.open_group(storage.zarr_store(tmp, read_only=False), mode="w")
        digests: dict[str, str] = {}
        state_meta = _encode_states(root, block_states, digests)
        model_meta = _encode_model(root, model_state, digests)
        body = {
            "iteration": int(iteration),
            "states": state_meta,
            "model": model_meta,
            "loop": json.loads(json.dumps(attrs)),
        }
        root.attrs.update(
            {
                "scalenmf": {"kind": "checkpoint", "format_version": CHECKPOINT_FORMAT_VERSION},
                **body,
                INTEGRITY: {"arrays": digests, "attrs": digest_json(body)},
            }
        )
        if storage.exists(final):
            storage.remove(final)
        storage.move(tmp, final)
    except BaseException:
        storage.remove(tmp)
        raise
    storage.write_text_atomic(f"{location.rstrip('/')}/{POINTER}", name + "\n")
    _prune(location, keep=name)
    return name


def _prune(location: str, keep: str) -> None:
    """Remove older checkpoints and leftovers of interrupted writes."""
    for entry in storage.listdir(location):
        if entry in (keep, POINTER):
            continue
        if entry.startswith("it-") or entry.startswith("."):
            storage.remove(f"{location.rstrip('/')}/{entry}")


def latest_checkpoint(location: str) -> str | None:
    """Name of the newest complete checkpoint at ``location``, or None.

    Without ``LATEST`` (deleted, or the process was killed between publishing the first
    checkpoint and naming it), the newest ``it-*`` checkpoint is used, with a warning: its
    digests are verified when it is read, so a complete one is as good as named.
    """
    pointer = f"{location.rstrip('/')}/{POINTER}"
    try:
        text = storage.read_text(pointer)
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{pointer!r} is not a text file naming a checkpoint ({exc.reason}); "
            "remove the checkpoint directory to start afresh"
        ) from exc
    if text is None:
        found = sorted(e for e in storage.listdir(location) if e.startswith("it-"))
        if not found:
            return None
        import warnings

        warnings.warn(
            f"{pointer!r} is missing; resuming from the newest checkpoint found, {found[-1]}",
            stacklevel=2,
        )
        return found[-1]
    name = text.strip()
    if not name.startswith("it-") or "/" in name or len(name.splitlines()) != 1:
        raise CheckpointError(
            f"{pointer!r} names {name[:40]!r}, not a checkpoint; remove the checkpoint "
            "directory to start afresh"
        )
    if not storage.exists(f"{location.rstrip('/')}/{name}"):
        raise CheckpointError(f"{pointer!r} names {name!r}, which does not exist")
    return name


def read_checkpoint(location: str) -> dict[str, Any] | None:
    """The newest checkpoint at ``location``, or None if there is none.

    Returns
    -------
    dict with ``iteration``, ``block_states`` (a ``StoredStates``: checked, then read a
    block at a time), ``model_state``, ``attrs`` (the loop's).
    """
    name = latest_checkpoint(location)
    if name is None:
        return None
    path = f"{location.rstrip('/')}/{name}"
    try:
        root = zarr.open_group(storage.zarr_store(path, read_only=True), mode="r")
        meta = root.attrs.get("scalenmf")
        if not isinstance(meta, dict) or meta.get("kind") != "checkpoint":
            raise CheckpointError(f"{path!r} is not a scalenmf checkpoint")
        seal = root.attrs.get(INTEGRITY)
        if not isinstance(seal, dict):
            raise CheckpointError(
                f"checkpoint {path!r} has no checksums (written by an older scalenmf, or "
                "edited); remove it to start afresh"
            )
        body = {key: root.attrs.get(key) for key in ("iteration", "states", "model", "loop")}
        if digest_json(body) != seal.get("attrs"):
            raise CheckpointError(
                f"the attrs of checkpoint {path!r} (iteration, loss history, state layout) "
                "do not match their recorded checksum: it was edited or damaged; remove it "
                "to start afresh"
            )
        digests = dict(seal.get("arrays") or {})
        return {
            "iteration": int(str(root.attrs["iteration"])),
            "block_states": _decode_states(root, dict(body["states"]), digests),  # type: ignore[arg-type]
            "model_state": _decode_model(root, dict(body["model"]), digests),  # type: ignore[arg-type]
            "attrs": dict(body["loop"]),  # type: ignore[arg-type]
        }
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc}") from exc


def remove_checkpoints(location: str) -> None:
    """Delete the checkpoint location (after the final result is published)."""
    storage.remove(location)
