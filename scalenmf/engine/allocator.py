"""Keep the C allocator from handing block-sized temporaries back to the OS at every step.

glibc serves allocations above a threshold (128 KiB at start, adapting up to 32 MiB) with
fresh ``mmap`` pages, and trims the heap top once more than twice that is free. A block
step allocates and frees temporaries of a few hundred KiB to a few MiB (``W H``, ratios,
right-hand sides) many times per iteration, so each one is page-faulted in anew: on the
machines we measured, that was half of the CPU time of a 96 × 500 KL fit with four
restarts (3.2 s → 1.7 s with the settings below). Keeping temporaries up to 4 MiB on the
heap, and up to 16 MiB of freed heap before trimming, removes those faults; the cost is at
most that much memory held for reuse. Larger arrays are still mapped and unmapped as
before (numpy asks huge pages for them).

Applied once per process, on Linux with glibc only, unless ``SCALENMF_MALLOC_TUNING=0``,
the user has set glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, or a
fit under ``memory_limit`` has set the opposite (:func:`.memory.tighten_heap`: a limit on
RSS needs freed buffers returned at once, which this setting would hold back).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Temporaries below this come from the heap, not from fresh pages.
MMAP_THRESHOLD_BYTES = 4 << 20
#: Freed heap kept for reuse before it is returned to the OS.
TRIM_THRESHOLD_BYTES = 16 << 20

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set the thresholds (once per process); True when they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    from scalenmf.engine.memory import heap_tightened

    if heap_tightened():
        return False  # decided for this process, without caching: a limit's setting wins
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("SCALENMF_MALLOC_TUNING") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user chose
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    return _applied
