"""The process's own memory: its resident size now, and a heap that gives memory back.

Under a memory limit the fit's peak is what the process holds at its worst moment, not what
it has allocated: glibc keeps freed blocks below its (growing) mmap threshold in its arenas,
one per thread, so temporaries of a few MB freed by every block step stay resident. A fixed
threshold maps every large buffer on its own and unmaps it when freed (measured on the
1.5 GB store of ``benchmarks/bench_memory.py``: the RSS between two passes fell from
183 MB to 121 MB, and the peak from 363 MB to 306 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

#: Allocations at least this large get their own mapping, returned to the OS when freed.
MMAP_THRESHOLD = 1 << 20
#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_TIGHTENED = False


def process_rss() -> int:
    """Resident bytes of this process now (0 where it cannot be read)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover - psutil is a dependency; /proc may be hidden
        return 0


def heap_tightened() -> bool:
    """Whether :func:`tighten_heap` has set this process's heap (a fit under a limit)."""
    return _TIGHTENED


def tighten_heap() -> bool:
    """Make glibc's malloc return large freed buffers to the OS (once per process).

    Returns True if the setting took effect (glibc only; elsewhere nothing changes).
    """
    global _TIGHTENED
    if _TIGHTENED:
        return True
    if os.name != "posix":  # pragma: no cover - Linux and macOS only here
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc (macOS, musl)
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD)
    )
    _TIGHTENED = ok
    log.debug("malloc: mmap threshold %d bytes (%s)", MMAP_THRESHOLD, "set" if ok else "failed")
    return ok


#: The same setting for a worker process started by a LocalCluster (glibc reads it at start).
#: (distributed already sets a small ``MALLOC_TRIM_THRESHOLD_`` for its workers.)
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
