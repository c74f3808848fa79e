"""A local Zarr v3 store's metadata read with ``json``, for commands that only describe it.

``import zarr`` costs about 0.2 s (most of ``scalenmf info``'s start-up), while what ``info``
shows about a store is in its ``zarr.json`` files: shapes, data types, chunk grids and
attributes. This module reads those directly, lists chunk files with ``os.walk`` (the
completeness check of ``scalenmf.io.integrity.require_complete``) and decodes the few small
arrays ``info`` needs (labels, a sparse store's ``indptr``) with numcodecs, the library
zarr's own codecs call; numcodecs is imported only when such an array is present.

It describes only what it fully understands: a local Zarr v3 directory with regular chunk
grids, ``default`` or ``v2`` chunk keys and the codecs ``bytes``, ``vlen-utf8``, ``zstd``,
``blosc`` and ``gzip``. Anything else, and anything unexpected (missing or unreadable
metadata, an absent chunk, a chunk that does not decode, a malformed ``indptr``), raises
``Unsupported``, and the caller reads the store with zarr instead: zarr's reading stays the
reference, and its clear errors stay the errors the user sees.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Data types read here (as zarr v3 names them); others go to zarr.
NUMERIC_TYPES = frozenset(
    ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
) | frozenset(("float16", "float32", "float64"))
STRING_TYPES = frozenset(["string"])
#: Bytes-to-bytes codecs decoded here.
COMPRESSORS = frozenset(["zstd", "blosc", "gzip"])


class Unsupported(Exception):
    """This store (or part of it) is not described here; read it with zarr."""


def read_node(directory: Path) -> dict[str, Any]:
    """The parsed ``zarr.json`` of a v3 group or array directory.

    Raises
    ------
    Unsupported
        No ``zarr.json``, not JSON, not Zarr format 3, or neither a group nor an array.
    """
    try:
        doc = json.loads((directory / "zarr.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise Unsupported(f"{directory}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
        raise Unsupported(f"{directory}: not Zarr v3 metadata")
    if doc.get("node_type") not in ("group", "array"):
        raise Unsupported(f"{directory}: node_type {doc.get('node_type')!r}")
    attrs = doc.get("attributes", {})
    if not isinstance(attrs, dict):
        raise Unsupported(f"{directory}: attributes are not an object")
    return doc


def child(directory: Path, name: str) -> dict[str, Any] | None:
    """The metadata of member ``name`` of a group, or None when there is no such member.

    A directory of that name without readable metadata is not guessed at (``Unsupported``).
    """
    sub = directory / name
    if not os.path.lexists(sub):
        return None
    return read_node(sub)


def members(directory: Path) -> dict[str, dict[str, Any]]:
    """Every member of a group directory by name (its metadata), in name order."""
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(os.listdir(directory)):
        if entry == "zarr.json":
            continue
        if not (directory / entry).is_dir():
            raise Unsupported(f"{directory}: {entry!r} is not a Zarr node")
        out[entry] = read_node(directory / entry)
    return out


@dataclass(frozen=True)
class ArrayMeta:
    """What a v3 array's metadata says: enough to check it is complete and to read it."""

    directory: Path
    shape: tuple[int, ...]
    data_type: str
    chunks: tuple[int, ...]
    key_prefix: str
    key_separator: str
    codecs: tuple[dict[str, Any], ...]

    @property
    def dtype(self) -> np.dtype:
        """The numpy type of a numeric array (``Unsupported`` for strings)."""
        if self.data_type not in NUMERIC_TYPES:
            raise Unsupported(f"{self.directory}: data type {self.data_type!r}")
        return np.dtype(self.data_type)

    def chunk_key(self, idx: tuple[int, ...]) -> str:
        """The store key of chunk ``idx``, relative to the array's directory."""
        if not idx:
            return "c" if self.key_prefix else "0"
        return self.key_prefix + self.key_separator.join(str(i) for i in idx)


def array_meta(directory: Path, doc: dict[str, Any]) -> ArrayMeta:
    """Parse an array's ``zarr.json`` (as returned by ``read_node``).

    Raises
    ------
    Unsupported
        Not an array, or a feature not read here: another chunk grid or key encoding,
        sharding, storage transformers, unknown codecs or data types.
    """
    if doc.get("node_type") != "array":
        raise Unsupported(f"{directory}: a group, not an array")
    shape = doc.get("shape")
    grid = doc.get("chunk_grid")
    if not (isinstance(shape, list) and all(_count(s) for s in shape)):
        raise Unsupported(f"{directory}: shape {shape!r}")
    if not (isinstance(grid, dict) and grid.get("name") == "regular"):
        raise Unsupported(f"{directory}: chunk grid {grid!r}")
    chunks = (grid.get("configuration") or {}).get("chunk_shape")
    if not (
        isinstance(chunks, list)
        and len(chunks) == len(shape)
        and all(_count(c) and c > 0 for c in chunks)
    ):
        raise Unsupported(f"{directory}: chunk shape {chunks!r}")
    if doc.get("storage_transformers") not in (None, []):
        raise Unsupported(f"{directory}: storage transformers")
    prefix, separator = _key_encoding(directory, doc.get("chunk_key_encoding"))
    data_type = doc.get("data_type")
    if data_type not in NUMERIC_TYPES | STRING_TYPES:
        raise Unsupported(f"{directory}: data type {data_type!r}")
    codecs = doc.get("codecs")
    if not (isinstance(codecs, list) and codecs and all(isinstance(c, dict) for c in codecs)):
        raise Unsupported(f"{directory}: codecs {codecs!r}")
    serializer = codecs[0].get("name")
    expected = "vlen-utf8" if data_type in STRING_TYPES else "bytes"
    if serializer != expected:
        raise Unsupported(f"{directory}: serializer {serializer!r}")
    for codec in codecs[1:]:
        if codec.get("name") not in COMPRESSORS:
            raise Unsupported(f"{directory}: codec {codec.get('name')!r}")
    return ArrayMeta(
        directory,
        tuple(int(s) for s in shape),
        str(data_type),
        tuple(int(c) for c in chunks),
        prefix,
        separator,
        tuple(codecs),
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _key_encoding(directory: Path, enc: Any) -> tuple[str, str]:
    if not isinstance(enc, dict):
        raise Unsupported(f"{directory}: chunk key encoding {enc!r}")
    name = enc.get("name")
    separator = (enc.get("configuration") or {}).get("separator")
    if name == "default":
        separator = "/" if separator is None else separator
        if separator not in ("/", "."):
            raise Unsupported(f"{directory}: chunk key separator {separator!r}")
        return "c" + separator, separator
    if name == "v2":
        separator = "." if separator is None else separator
        if separator not in ("/", "."):
            raise Unsupported(f"{directory}: chunk key separator {separator!r}")
        return "", separator
    raise Unsupported(f"{directory}: chunk key encoding {name!r}")


def _grid(meta: ArrayMeta) -> list[int]:
    return [math.ceil(s / c) for s, c in zip(meta.shape, meta.chunks, strict=True)]


def stored_keys(directory: Path) -> set[str]:
    """Every file under ``directory``, as ``/``-separated keys relative to it."""
    keys: set[str] = set()
    for root, _, files in os.walk(directory):
        rel = os.path.relpath(root, directory)
        base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        keys.update(base + f for f in files)
    return keys


def require_complete(meta: ArrayMeta) -> None:
    """``Unsupported`` if any chunk file of the array is absent (zarr then names it)."""
    if not meta.shape or any(s == 0 for s in meta.shape):
        return
    grid = _grid(meta)
    n_chunks = math.prod(grid)
    stored = stored_keys(meta.directory)
    if len(stored) < n_chunks:
        # Fewer files than chunks declared: some chunk is absent (and a lying shape may
        # declare more chunks than are worth walking).
        raise Unsupported(f"{meta.directory}: {n_chunks} chunks declared, {len(stored)} files")
    for idx in itertools.product(*(range(g) for g in grid)):
        if meta.chunk_key(idx) not in stored:
            raise Unsupported(f"{meta.directory}: chunk {idx} missing")


def _decompress(codecs: tuple[dict[str, Any], ...], raw: bytes) -> Any:
    """Undo the bytes-to-bytes codecs (last applied first), as zarr does through numcodecs."""
    buf: Any = raw
    for codec in reversed(codecs[1:]):
        name = codec["name"]
        if name == "zstd":
            from numcodecs.zstd import Zstd

            buf = Zstd().decode(buf)
        elif name == "blosc":
            from numcodecs.blosc import Blosc

            buf = Blosc().decode(buf)
        else:
            import gzip

            buf = gzip.decompress(bytes(buf))
    return buf


def read_1d(meta: ArrayMeta) -> np.ndarray:
    """All of a 1-D array (strings as an object array), chunk by chunk.

    Raises
    ------
    Unsupported
        Not 1-D, a chunk absent, or a chunk that does not decode to its declared size.
    """
    if len(meta.shape) != 1:
        raise Unsupported(f"{meta.directory}: {len(meta.shape)}-D")
    require_complete(meta)
    (length,), (chunk,) = meta.shape, meta.chunks
    parts: list[np.ndarray] = []
    for i in range(_grid(meta)[0]):
        try:
            raw = (meta.directory / meta.chunk_key((i,))).read_bytes()
            buf = _decompress(meta.codecs, raw)
            if meta.data_type in STRING_TYPES:
                from numcodecs.vlen import VLenUTF8

                values = np.asarray(VLenUTF8().decode(buf), dtype=object)
            else:
                endian = (meta.codecs[0].get("configuration") or {}).get("endian", "little")
                if endian not in ("little", "big"):
                    raise Unsupported(f"{meta.directory}: endian {endian!r}")
                dtype = meta.dtype.newbyteorder("<" if endian == "little" else ">")
                values = np.frombuffer(buf, dtype=dtype)
        except Unsupported:
            raise
        except Exception as exc:  # codecs raise their own types for damaged bytes
            raise Unsupported(f"{meta.directory}: chunk {i}: {exc}") from exc
        if values.shape != (chunk,):
            raise Unsupported(f"{meta.directory}: chunk {i} decodes to {values.shape}")
        parts.append(values[: max(0, min(chunk, length - i * chunk))])
    if not parts:
        return np.empty(0, dtype=object if meta.data_type in STRING_TYPES else meta.dtype)
    out = np.concatenate(parts)
    return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))


__all__ = [
    "ArrayMeta",
    "Unsupported",
    "array_meta",
    "child",
    "members",
    "read_1d",
    "read_node",
    "require_complete",
    "stored_keys",
]
