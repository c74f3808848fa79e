"""Atomic publication of output stores: write under a temporary name, rename when complete.

Every local output is written under the output's lock (``scalenmf.io.lock``), so the
hidden temporaries beside it (``.OUT.tmp-*``, ``.OUT.old-*``) can only be leftovers of a
killed writer: they are removed before a new write. Replacing an existing output swaps the
two directories in one ``renameat2(RENAME_EXCHANGE)`` where the kernel has it (Linux), so
at every instant the old or the new complete store is at ``OUT``; elsewhere the old store
is renamed aside first, and the next writer puts it back if the process died between the
two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from scalenmf.io import storage
from scalenmf.io.errors import OutputError
from scalenmf.io.lock import output_lock


class OutputExistsError(FileExistsError):
    """The output path exists and overwriting was not asked for."""


def _tmp_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex[:12]}")


def _leftovers(target: Path, kind: str) -> list[Path]:
    prefix = f".{target.name}.{kind}-"
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix))


def clean_stale(target: Path) -> list[str]:
    """Remove what killed writers left beside ``target``; call only under its lock.

    An old store renamed aside just before a kill (``.OUT.old-*`` with no ``OUT``) is put
    back first: it is complete. Returns the names removed.
    """
    olds = _leftovers(target, "old")
    if olds and not target.exists():
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, target)
        olds.remove(newest)
    removed = []
    for p in [*_leftovers(target, "tmp"), *olds]:
        shutil.rmtree(p, ignore_errors=True)
        if p.is_file():
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def write_error(target: str | os.PathLike[str], exc: OSError) -> OutputError | None:
    """A one-line ``OutputError`` for the OS errors of a failed write (else None)."""
    if exc.errno == errno.ENOSPC:
        return OutputError(f"no space left on device writing {str(target)!r}")
    if exc.errno == errno.EDQUOT:
        return OutputError(f"disk quota exceeded writing {str(target)!r}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {str(target)!r}: {os.strerror(exc.errno).lower()}")
    return None


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

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputLockedError
        Another live process is writing ``path``.
    OutputError
        The disk filled up, or the directory is not writable (one line naming ``path``).
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
    with output_lock(target):
        clean_stale(target)
        if target.exists() and not overwrite:
            raise OutputExistsError(f"output {str(target)!r} already exists")
        tmp = _tmp_name(target)
        try:
            tmp.mkdir()
            yield str(tmp)
            publish(tmp, target, overwrite=overwrite)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            one_line = write_error(target, exc)
            if one_line is not None:
                raise one_line from exc
            raise
        except BaseException:
            # Ctrl-C lands in the thread waiting on zarr's I/O loop, whose write tasks go
            # on: stop them before removing what they write into.
            settle_zarr()
            shutil.rmtree(tmp, ignore_errors=True)
            raise


#: Seconds to wait for zarr's cancelled write tasks to end after an interruption.
SETTLE_S = 10.0


def settle_zarr(timeout: float = SETTLE_S) -> None:
    """Cancel the tasks left on zarr's I/O loop and wait for them to end.

    A ``KeyboardInterrupt`` stops the thread waiting on a zarr write, not the write: its
    tasks would still create chunk files, and at exit zarr's loop would be closed under
    them ("Task was destroyed but it is pending!").
    """
    import asyncio

    try:
        from zarr.core import sync as zarr_sync
    except ImportError:  # pragma: no cover - zarr is a dependency
        return
    loop = zarr_sync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def cancel_others() -> None:
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others, timeout=timeout)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(cancel_others(), loop).result(timeout + 1)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the file system or kernel cannot: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move a finished temporary store to its final name.

    An existing store is swapped with the new one in one step where possible; otherwise
    it is renamed aside first (see the module docstring for the recovery), so at every
    instant either the old or the new complete store is at ``target``.
    """
    if target.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputExistsError(f"output {str(target)!r} already exists")
        if _exchange(tmp, target):
            # ``tmp`` now holds the old store; a kill here leaves it for the next writer.
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = _tmp_name(target, "old")
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


def check_output(path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Fail before any work if output ``path`` exists (without ``overwrite``) or cannot
    be written: its directory is missing, or refuses a new file (tried, not guessed:
    permissions do not tell for root, read-only mounts or full disks).

    Raises
    ------
    OutputExistsError, FileNotFoundError, OutputError
        One line naming ``path``.
    """
    path = storage.local_path(path)
    if storage.is_url(path):
        if storage.exists(path) and not overwrite:
            raise OutputExistsError(f"output {str(path)!r} already exists (use --overwrite)")
        return
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"output {str(target)!r} already exists (use --overwrite to replace it)"
        )
    if not target.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(target.parent)!r} does not exist")
    probe = _tmp_name(target, "probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except OSError as exc:
        raise OutputError(
            f"cannot write output {str(target)!r}: {os.strerror(exc.errno or 0).lower()}"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
