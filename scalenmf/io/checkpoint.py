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
from typing import Any, Literal

import numpy as np
import zarr

from scalenmf.io import storage
from scalenmf.io.errors import InputError
from scalenmf.io.integrity import (
    IntegrityError,
    digest_array,
    digest_json,
    require_complete,
)
from scalenmf.io.zarr_store import read_whole, write_digested

POINTER = "LATEST"
CHECKPOINT_FORMAT_VERSION = 2
#: Root attr holding the digests of every array and of the other attrs.
INTEGRITY = "integrity"
#: Elements per chunk of the flat state arrays (~16 MB of float64).
STATE_CHUNK = 1 << 21


class CheckpointError(InputError):
    """A checkpoint cannot be read, or does not belong to this fit."""


def _encode_states(group: zarr.Group, states: list[Any], digests: dict[str, str]) -> dict[str, Any]:
    kinds: list[str] = []
    slots: list[list[np.ndarray | None]] = []
    for s in states:
        if s is None:
            kinds.append("none")
            slots.append([])
        elif isinstance(s, np.ndarray):
            kinds.append("array")
            slots.append([s])
        elif isinstance(s, (list, tuple)):
            kinds.append("list")
            slots.append(list(s))
        else:
            raise TypeError(f"cannot checkpoint a block state of type {type(s).__name__}")
    n_slots = max((len(s) for s in slots), default=0)
    for r in range(n_slots):
        parts = [s[r] if r < len(s) else None for s in slots]
        arrays = [np.asarray(p) for p in parts if p is not None]
        dtype = np.result_type(*arrays) if arrays else np.dtype(np.float64)
        ndim = max((a.ndim for a in arrays), default=2)
        shapes = np.full((len(parts), ndim), -1, dtype=np.int64)
        # The memory order is kept too: BLAS may sum in another order for another layout,
        # and a resumed fit must match the uninterrupted one bit for bit.
        fortran = np.zeros(len(parts), dtype=np.int8)
        for j, p in enumerate(parts):
            if p is not None:
                a = np.asarray(p)
                shapes[j] = a.shape
                fortran[j] = a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous
        flat = (
            np.concatenate(
                [
                    np.asarray(a, dtype=dtype).ravel(order="F" if f else "C")
                    for a, f in zip(arrays, fortran[[p is not None for p in parts]], strict=True)
                ]
            )
            if arrays
            else np.zeros(0, dtype=dtype)
        )
        _write(group, f"states/slot{r}", flat, digests, chunk=STATE_CHUNK)
        _write(group, f"states/shape{r}", shapes, digests)
        _write(group, f"states/fortran{r}", fortran, digests)
    return {"kinds": kinds, "slots": n_slots, "lengths": [len(s) for s in slots]}


def _decode_states(group: zarr.Group, meta: dict[str, Any], digests: dict[str, str]) -> list[Any]:
    kinds, lengths = meta["kinds"], meta["lengths"]
    per_slot: list[list[np.ndarray | None]] = []
    for r in range(int(meta["slots"])):
        flat = _read(group, f"states/slot{r}", digests)
        shapes = _read(group, f"states/shape{r}", digests)
        fortran = _read(group, f"states/fortran{r}", digests)
        pos = 0
        blocks: list[np.ndarray | None] = []
        for shape, f in zip(shapes, fortran, strict=True):
            if shape[0] < 0:
                blocks.append(None)
                continue
            size = int(np.prod(shape))
            dims = tuple(int(d) for d in shape)
            order: Literal["C", "F"] = "F" if f else "C"
            block = np.reshape(flat[pos : pos + size], dims, order="F" if f else "C")
            blocks.append(block.copy(order=order))
            pos += size
        if pos != flat.shape[0]:
            raise CheckpointError(f"state slot {r} holds {flat.shape[0]} values, expected {pos}")
        per_slot.append(blocks)
    states: list[Any] = []
    for j, kind in enumerate(kinds):
        if kind == "none":
            states.append(None)
        elif kind == "array":
            states.append(per_slot[0][j])
        else:
            states.append([per_slot[r][j] for r in range(int(lengths[j]))])
    return states


def _read(group: zarr.Group, name: str, digests: dict[str, str]) -> np.ndarray:
    """Array ``name``, complete and matching its digest, else ``CheckpointError`` naming it."""
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
    try:
        values = read_whole(node, name, f"checkpoint {where!r}")
    except IntegrityError as exc:
        raise CheckpointError(f"{exc}; remove the checkpoint to start afresh") from exc
    expected = digests.get(name)
    if expected is None:
        raise CheckpointError(f"checkpoint {where!r} records no checksum for array {name!r}")
    if digest_array(values) != expected:
        raise CheckpointError(
            f"checkpoint {where!r}: array {name!r} does not match its recorded checksum "
            "(damaged after it was written); remove the checkpoint to start afresh"
        )
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
    block_states: list[Any],
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
    block_states : list
        One state per column block (see the module docstring).
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
    dict with ``iteration``, ``block_states``, ``model_state``, ``attrs`` (the loop's).
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
