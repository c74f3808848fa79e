"""1-D arrays and groups of a local Zarr v3 store written without zarr's machinery.

Creating an array through zarr costs 2–6 ms (its event loop, metadata validation) and
writing a small one as much again. A conversion writes five or more (``data``,
``indices``, ``indptr`` and two label arrays): about 40 ms, more than a third of an h5ad
conversion that takes 0.1 s. Here the metadata is written as the JSON document zarr 3
would write, and the chunks are encoded by the numcodecs codecs zarr's own codecs call, so
zarr reads the result as its own (tests compare the files byte for byte with zarr's).

Only what scalenmf's writers need: 1-D arrays on a regular grid with ``default`` chunk keys
(``c/<i>``); numbers as little-endian ``bytes`` then Blosc or Zstd, strings as
``vlen-utf8`` then Zstd. Every other store or layout is written through zarr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: The codec chains written here (zarr 3's JSON form).
BYTES_LE: dict[str, Any] = {"name": "bytes", "configuration": {"endian": "little"}}
ZSTD_0: dict[str, Any] = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}
VLEN_UTF8: dict[str, Any] = {"name": "vlen-utf8", "configuration": {}}
#: Number types written here: those of a matrix store's data, indices and indptr, and the
#: bytes of an encoded block state (``state_store``).
NUMBER_TYPES = frozenset(("float32", "float64", "int32", "int64", "uint8"))


def blosc_lz4(itemsize: int) -> list[dict[str, Any]]:
    """The chain of the store's compressed numbers (``zarr_store._codec``): lz4 at level 5
    with byte shuffle, for values of ``itemsize`` bytes."""
    blosc = {"typesize": itemsize, "cname": "lz4", "clevel": 5, "shuffle": "shuffle"}
    return [BYTES_LE, {"name": "blosc", "configuration": {**blosc, "blocksize": 0}}]


def zstd_numbers() -> list[dict[str, Any]]:
    """zarr's default chain for numbers (what it writes when no compressor is given)."""
    return [BYTES_LE, ZSTD_0]


def raw_bytes() -> list[dict[str, Any]]:
    """The chain of single bytes stored as they are (zarr omits the endianness of 1-byte
    types)."""
    return [{"name": "bytes"}]


def _dump(directory: Path, doc: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # zarr's own serialisation (indent 2, NaN allowed), so the files are the same bytes.
    (directory / "zarr.json").write_bytes(json.dumps(doc, indent=2, allow_nan=True).encode())


def write_group(directory: str | os.PathLike[str], attributes: dict[str, Any]) -> Path:
    """Create the group ``directory`` (its ``zarr.json``) with ``attributes``."""
    path = Path(directory)
    _dump(path, {"attributes": attributes, "zarr_format": 3, "node_type": "group"})
    return path


class LocalArray:
    """A new 1-D array of a local Zarr v3 store, written chunk by chunk.

    Parameters
    ----------
    directory : path-like
        The array's directory (created, with its ``zarr.json``).
    length : int
        Number of elements; ``resize`` changes it.
    chunk : int
        Elements per chunk (≥ 1).
    dtype : numpy dtype or "string"
        One of ``NUMBER_TYPES``, or "string" for text.
    codecs : list of dict
        The codec chain: ``blosc_lz4(...)`` or ``zstd_numbers()`` for numbers,
        ``[VLEN_UTF8, ZSTD_0]`` for strings.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        length: int,
        chunk: int,
        dtype: Any,
        codecs: list[dict[str, Any]],
    ):
        self.root = Path(directory)
        self.chunk = max(1, int(chunk))
        self.is_string = isinstance(dtype, str) and dtype == "string"
        self.dtype: np.dtype = np.dtype(object) if self.is_string else np.dtype(dtype)
        if not self.is_string and self.dtype.name not in NUMBER_TYPES:
            raise ValueError(f"LocalArray writes {sorted(NUMBER_TYPES)} or strings, not {dtype}")
        self.codecs = codecs
        self._encoders = [_encoder(c, self.dtype.itemsize) for c in codecs[1:]]
        self.length = int(length)
        self._has_chunk_dir = False
        self._write_metadata()

    @property
    def path(self) -> str:
        """The array's directory."""
        return str(self.root)

    @property
    def shape(self) -> tuple[int]:
        return (self.length,)

    @property
    def chunks(self) -> tuple[int]:
        return (self.chunk,)

    def _write_metadata(self) -> None:
        fill: str | float | int
        if self.is_string:
            data_type, fill = "string", ""
        else:
            data_type = self.dtype.name
            fill = 0.0 if self.dtype.kind == "f" else 0
        _dump(
            self.root,
            {
                "shape": [self.length],
                "data_type": data_type,
                "chunk_grid": {
                    "name": "regular",
                    "configuration": {"chunk_shape": [self.chunk]},
                },
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": fill,
                "codecs": self.codecs,
                "attributes": {},
                "zarr_format": 3,
                "node_type": "array",
                "storage_transformers": [],
            },
        )

    def resize(self, shape: tuple[int, ...]) -> None:
        """Set the length to ``shape[0]``; chunks wholly past the new end are deleted, as
        zarr's ``resize`` does."""
        old = self.n_chunks
        self.length = int(shape[0])
        self._write_metadata()
        for i in range(self.n_chunks, old):
            (self.root / "c" / str(i)).unlink(missing_ok=True)

    @property
    def n_chunks(self) -> int:
        return -(-self.length // self.chunk)

    def encode(self, piece: np.ndarray) -> bytes:
        """One chunk's stored bytes; a piece shorter than a chunk (the last) is padded
        with the fill value, as zarr stores it."""
        if self.is_string:
            values = np.asarray(piece, dtype=object)
            if len(values) < self.chunk:
                values = np.concatenate([values, np.full(self.chunk - len(values), "", object)])
            from numcodecs import VLenUTF8

            raw: Any = VLenUTF8().encode(values)
        else:
            raw = np.ascontiguousarray(piece, dtype=self.dtype.newbyteorder("<"))
            if len(raw) < self.chunk:
                raw = np.concatenate([raw, np.zeros(self.chunk - len(raw), raw.dtype)])
        for enc in self._encoders:
            raw = enc.encode(raw)
        return bytes(raw)

    def write_chunk(self, index: int, piece: np.ndarray) -> None:
        """Store chunk ``index`` (``piece`` holds its elements)."""
        # "c/" is made once (writer threads may race to make it: exist_ok).
        if not self._has_chunk_dir:
            (self.root / "c").mkdir(exist_ok=True)
            self._has_chunk_dir = True
        (self.root / "c" / str(int(index))).write_bytes(self.encode(piece))

    def write(self, values: np.ndarray) -> None:
        """Store all of ``values`` (of length ``self.length``), chunk by chunk."""
        for i in range(self.n_chunks):
            self.write_chunk(i, values[i * self.chunk : (i + 1) * self.chunk])


def _encoder(codec: dict[str, Any], itemsize: int) -> Any:
    """The numcodecs codec that zarr 3 calls for the bytes-to-bytes ``codec``."""
    cfg = codec["configuration"]
    if codec["name"] == "blosc":
        from numcodecs import Blosc

        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[cfg["shuffle"]]
        return Blosc(
            cname=cfg["cname"],
            clevel=cfg["clevel"],
            shuffle=shuffle,
            blocksize=cfg["blocksize"],
            typesize=cfg["typesize"],
        )
    if codec["name"] == "zstd":
        from numcodecs import Zstd

        return Zstd(level=cfg["level"], checksum=cfg["checksum"])
    raise ValueError(f"codec {codec['name']!r} is not written here")


def write_numbers(
    directory: str | os.PathLike[str], values: np.ndarray, chunk: int, codecs: list[dict[str, Any]]
) -> LocalArray:
    """Write the 1-D number array ``values`` whole as the array ``directory``."""
    values = np.asarray(values)
    out = LocalArray(directory, len(values), chunk, values.dtype, codecs)
    out.write(values)
    return out


def write_strings(directory: str | os.PathLike[str], values: Any, chunk: int) -> LocalArray:
    """Write the 1-D strings ``values`` whole as the array ``directory`` (zarr's default
    chain for text: ``vlen-utf8`` then Zstd level 0)."""
    values = np.asarray(values)
    out = LocalArray(directory, len(values), chunk, "string", [VLEN_UTF8, ZSTD_0])
    out.write(values.astype(object))
    return out
