"""Opening paths as matrix sources: a registry of readers, each saying what it can open.

Readers are tried in registration order; the first whose ``can_open`` accepts the path
opens it. The built-in ones (Zarr, .npy, then the formats of ``scalenmf.io.formats``) are
registered here on first use; other formats call ``register_reader`` rather than growing an
if-ladder. The format modules never import this one back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalenmf.io import storage
from scalenmf.io.errors import InputError
from scalenmf.io.source import DenseArraySource, MatrixSource


@dataclass(frozen=True)
class Reader:
    """A way to open one file format as a ``MatrixSource``."""

    name: str
    can_open: Callable[[Path], bool]
    open: Callable[[Path], MatrixSource]


_READERS: list[Reader] = []


def register_reader(reader: Reader) -> None:
    """Add a reader (later registrations with the same name replace earlier ones)."""
    for i, existing in enumerate(_READERS):
        if existing.name == reader.name:
            _READERS[i] = reader
            return
    _READERS.append(reader)


def readers() -> list[Reader]:
    _load_builtin()
    return list(_READERS)


def is_zarr_dir(path: Path) -> bool:
    """True for a local Zarr (v3 or v2) group directory: what the first reader opens."""
    return path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists())


def open_zarr_dir(path: Path) -> MatrixSource:
    """Open a local Zarr store, as the first reader does (without loading the others)."""
    from scalenmf.io.zarr_store import open_zarr

    return open_zarr(path)


def _open_npy(path: Path) -> MatrixSource:
    try:
        # A memory map: blocks are paged in on demand, so .npy input is out of core too.
        X = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {str(path)!r} as .npy: {exc}") from exc
    return DenseArraySource(X)


_BUILTIN_LOADED = False


def _load_builtin() -> None:
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    register_reader(Reader("zarr", is_zarr_dir, open_zarr_dir))
    register_reader(Reader("npy", lambda p: p.suffix.lower() == ".npy" and p.is_file(), _open_npy))
    # Text and single-cell formats live in their own modules, imported on first use: they
    # bring zarr and the staging code, which opening a .npy does not need.
    from scalenmf.io.formats import delimited, h5ad, mtx

    register_reader(Reader("csv", delimited.can_open, delimited.read))
    register_reader(Reader("mtx", mtx.can_open, mtx.read))
    register_reader(Reader("h5ad", h5ad.can_open, h5ad.read))


def open_path(path: str | os.PathLike[str]) -> MatrixSource:
    """Open a file or store as a ``MatrixSource`` with the first reader that accepts it.

    ``path`` may be a ``file://`` URL, or an fsspec URL (``s3://``, ``gs://``, ``memory://``)
    of a Zarr store, which is read through fsspec without copying it.
    """
    path = storage.local_path(path)
    if storage.is_url(path):
        url = str(path)
        if not storage.exists(url):
            raise InputError(f"no such file or store: {url!r}")
        if not storage.is_zarr(url):
            raise InputError(f"{url!r} is not a Zarr store; only Zarr stores are read from URLs")
        from scalenmf.io.zarr_store import open_zarr

        return open_zarr(url)
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file or store: {str(p)!r}")
    for reader in readers():
        if reader.can_open(p):
            return reader.open(p)
    names = ", ".join(r.name for r in readers())
    raise InputError(f"cannot tell the format of {str(p)!r} (known formats: {names})")
