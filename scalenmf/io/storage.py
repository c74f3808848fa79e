"""Where stores live: local paths, ``file://`` URLs and fsspec URLs (``s3://``, ``gs://`` …).

Local paths (and ``file://`` URLs, which are turned into them) take the fast road: plain
files and an atomic ``os.replace``. Any other URL goes through fsspec (``s3://`` needs
``s3fs``; credentials come from the usual environment of that file system) and Zarr's
``FsspecStore``. On object stores a rename is a copy: the "publish" step of an output is
then the copy of a complete temporary prefix, and readers never see a store whose root
metadata is missing (see ``docs/clusters.md``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from scalenmf.io.errors import InputError


def is_url(path: Any) -> bool:
    """True for ``proto://…`` strings other than ``file://`` (those are local paths)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    return not path.startswith("file://")


def local_path(path: Any) -> Any:
    """``file:///a/b`` → ``/a/b``; anything else unchanged."""
    if isinstance(path, str) and path.startswith("file://"):
        return unquote(urlparse(path).path)
    return path


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec file system, path inside it)`` for a URL."""
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec ships with dask
        raise InputError(f"{url!r}: URLs need the fsspec package") from exc
    try:
        fs, inner = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {url!r}: {exc}") from exc
    return fs, inner


def exists(path: Any) -> bool:
    path = local_path(path)
    if is_url(path):
        fs, inner = filesystem(path)
        return bool(fs.exists(inner))
    return Path(path).exists()


def parent_exists(path: Any) -> bool:
    path = local_path(path)
    if is_url(path):
        fs, inner = filesystem(path)
        parent = inner.rstrip("/").rsplit("/", 1)[0] if "/" in inner.rstrip("/") else ""
        # Object stores have no directories: a bucket (or any prefix) is fine.
        return not parent or bool(fs.exists(parent)) or not _has_dirs(fs)
    return Path(path).parent.exists()


def _has_dirs(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local", "memory")


def is_zarr(path: Any) -> bool:
    """True if ``path`` holds a Zarr store (v3 ``zarr.json`` or v2 ``.zgroup``/``.zarray``)."""
    path = local_path(path)
    if is_url(path):
        fs, inner = filesystem(path)
        base = inner.rstrip("/")
        return any(fs.exists(f"{base}/{name}") for name in ("zarr.json", ".zgroup", ".zarray"))
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))


def zarr_store(path: Any, *, read_only: bool) -> Any:
    """What ``zarr.open*`` takes for ``path``: a local path, or a read-only ``FsspecStore``."""
    path = local_path(path)
    if not is_url(path):
        return str(path)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(path, read_only=read_only)


def sibling(path: str, suffix: str) -> str:
    """A hidden temporary name beside ``path`` (same file system / bucket)."""
    head, _, name = str(path).rstrip("/").rpartition("/")
    tmp = f".{name}.{suffix}-{uuid.uuid4().hex[:12]}"
    return f"{head}/{tmp}" if head else tmp


def remove(path: Any) -> None:
    """Delete a store or file if it exists (no error if it does not)."""
    path = local_path(path)
    if is_url(path):
        fs, inner = filesystem(path)
        if fs.exists(inner):
            fs.rm(inner, recursive=True)
        return
    import shutil

    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def move(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` (atomic on local file systems, a copy on object stores)."""
    src, dst = local_path(src), local_path(dst)
    if not is_url(src):
        os.replace(src, dst)
        return
    fs, inner_src = filesystem(src)
    _, inner_dst = filesystem(dst)
    fs.mv(inner_src, inner_dst, recursive=True)


def write_text_atomic(path: str, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a mix."""
    path = local_path(path)
    if is_url(path):
        fs, inner = filesystem(path)
        # A single PUT of a small object is atomic on object stores.
        fs.pipe_file(inner, text.encode())
        return
    tmp = sibling(path, "tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_text(path: str) -> str | None:
    path = local_path(path)
    if is_url(path):
        fs, inner = filesystem(path)
        return fs.cat_file(inner).decode() if fs.exists(inner) else None
    p = Path(path)
    return p.read_text(encoding="utf-8") if p.exists() else None


def listdir(path: str) -> list[str]:
    """Names directly under ``path`` (empty if it does not exist)."""
    path = local_path(path)
    if is_url(path):
        fs, inner = filesystem(path)
        if not fs.exists(inner):
            return []
        return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(inner, detail=False)]
    p = Path(path)
    return sorted(q.name for q in p.iterdir()) if p.is_dir() else []


def makedirs(path: str) -> None:
    path = local_path(path)
    if is_url(path):
        fs, inner = filesystem(path)
        fs.makedirs(inner, exist_ok=True)
        return
    Path(path).mkdir(parents=True, exist_ok=True)
