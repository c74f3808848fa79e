"""Atomic publication of output stores: write under a temporary name, rename when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from scalenmf.io import storage


class OutputExistsError(FileExistsError):
    """The output path exists and overwriting was not asked for."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory path; publish it at ``path`` only if the block succeeds.

    The temporary directory sits beside ``path`` (same file system, so the final rename is
    atomic). On an exception it is removed and ``path`` is left as it was. With
    ``overwrite=True`` an existing ``path`` is replaced only after the new one is complete.

    Parameters
    ----------
    path : path-like
        Where the finished store should appear.
    overwrite : bool
        Replace an existing ``path``; otherwise an existing path is an error, raised before
        any work is done.
    """
    path = storage.local_path(path)
    if storage.is_url(path):
        with _atomic_url(str(path), overwrite) as tmp_url:
            yield tmp_url
        return
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"output {str(target)!r} already exists; remove it or pass overwrite=True "
            "(--overwrite on the command line)"
        )
    if not target.parent.exists():
        raise FileNotFoundError(f"output directory {str(target.parent)!r} does not exist")
    tmp = _tmp_name(target)
    tmp.mkdir()
    try:
        yield str(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, target, overwrite=overwrite)


def publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move a finished temporary store to its final name.

    Replacing an existing store is done by renaming the old one aside first, so at every
    instant either the old or the new complete store is at ``target``.
    """
    if target.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputExistsError(f"output {str(target)!r} already exists")
        old = _tmp_name(target)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def _atomic_url(url: str, overwrite: bool) -> Iterator[str]:
    """``atomic_output`` for an fsspec URL: a temporary prefix beside it, then a move."""
    if storage.exists(url) and not overwrite:
        raise OutputExistsError(
            f"output {url!r} already exists; remove it or pass overwrite=True "
            "(--overwrite on the command line)"
        )
    tmp = storage.sibling(url, "tmp")
    try:
        yield tmp
    except BaseException:
        storage.remove(tmp)
        raise
    if storage.exists(url):
        old = storage.sibling(url, "old")
        storage.move(url, old)
        storage.move(tmp, url)
        storage.remove(old)
    else:
        storage.move(tmp, url)
