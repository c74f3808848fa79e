"""A lock on an output: one writer per output path, stale locks of dead writers taken over.

``OUT.lock`` beside the output holds the owner's host, pid and process start time (JSON).
It is created with ``O_CREAT | O_EXCL`` (atomic on local file systems, NFS v3+ included),
so of two fits started at once exactly one gets it; the other is refused in one line
naming the owner. A lock whose owner is dead (same host, no such process, or another
process under a reused pid) is stale and taken over. A lock from another host cannot be
checked from here: the message says which host and pid to look at.

The lock is re-entrant within a process (a fit holds it while ``atomic_output`` takes it
again to publish), and is only removed by the process that holds it. While holding it,
a writer may treat every hidden temporary of the output (``.OUT.tmp-*``) as stale: only
the lock holder writes there.

URL outputs (object stores) are not locked: they have no exclusive create.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scalenmf.io import storage
from scalenmf.io.errors import OutputError

#: A lock file that cannot be parsed is taken as a crash mid-write once this old (s).
GARBLED_GRACE_S = 10.0

_HELD: dict[str, int] = {}


class OutputLockedError(FileExistsError):
    """Another live process is writing the same output."""


def lock_path(path: str | os.PathLike[str]) -> Path:
    """``OUT.lock`` for output ``OUT`` (absolute)."""
    p = Path(os.path.abspath(str(storage.local_path(str(path)))))
    return p.with_name(p.name + ".lock")


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused pid from the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the parenthesised command name (which may hold spaces).
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _start_time(pid)
    return start is None or now is None or now == start


def _owner() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _start_time(os.getpid()),
        "since_unix": time.time(),
    }


def _read_owner(lock: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _create(lock: Path, owner: dict[str, Any]) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise OutputError(
            f"cannot write output {str(lock.with_suffix(''))!r}: cannot create its lock "
            f"file {str(lock)!r} ({os.strerror(exc.errno or 0) or exc})"
        ) from exc
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(owner, fh)
    return True


def _stale(lock: Path, owner: dict[str, Any] | None) -> bool:
    if owner is None:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > GARBLED_GRACE_S
    if owner.get("host") != socket.gethostname():
        return False
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        return True
    return pid <= 0 or not _alive(pid, owner.get("start"))


def acquire(path: str | os.PathLike[str]) -> Path | None:
    """Take the lock of output ``path`` (re-entrant); None for URL outputs."""
    if storage.is_url(storage.local_path(str(path))):
        return None
    lock = lock_path(path)
    key = str(lock)
    if key in _HELD:
        _HELD[key] += 1
        return lock
    if not lock.parent.is_dir():
        raise FileNotFoundError(f"the directory of output {str(path)!r} does not exist")
    mine = _owner()
    for _ in range(3):
        if _create(lock, mine):
            _HELD[key] = 1
            return lock
        owner = _read_owner(lock)
        if not _stale(lock, owner):
            who = (
                f"process {owner.get('pid')} on {owner.get('host')}"
                if owner
                else "another process (its lock file is being written)"
            )
            raise OutputLockedError(
                f"output {str(path)!r} is being written by {who}; wait for it to finish, "
                f"or remove {str(lock)!r} if that process is gone"
            )
        # Stale: the owner died without removing it. Remove only what we judged stale.
        with contextlib.suppress(FileNotFoundError):
            if _read_owner(lock) == owner:
                lock.unlink()
    raise OutputLockedError(f"output {str(path)!r}: could not take the lock {str(lock)!r}")


def release(lock: Path | None) -> None:
    """Give back a lock taken by ``acquire`` (removed when the last holder in this process
    gives it back, and only if it is still ours)."""
    if lock is None:
        return
    key = str(lock)
    count = _HELD.get(key, 0)
    if count > 1:
        _HELD[key] = count - 1
        return
    _HELD.pop(key, None)
    owner = _read_owner(lock)
    if owner is not None and owner.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str]) -> Iterator[Path | None]:
    """Hold the lock of output ``path`` for the ``with`` block.

    Raises
    ------
    OutputLockedError
        Another live process holds it.
    OutputError
        The lock file cannot be created (read-only directory, full disk...).
    """
    lock = acquire(path)
    try:
        yield lock
    finally:
        release(lock)


def held(path: str | os.PathLike[str]) -> bool:
    """True if this process holds the lock of output ``path``."""
    return str(lock_path(path)) in _HELD


def describe_errno(exc: OSError) -> str:
    """A short reason for an OS error (``no space left on device`` ...)."""
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc)
