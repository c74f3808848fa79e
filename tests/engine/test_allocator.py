"""The allocator setting that keeps block temporaries off fresh pages (engine/allocator.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys
import numpy as np
from scalenmf.engine.allocator import keep_freed_memory
from scalenmf.engine.local import LocalExecutor
from scalenmf.io.source import DenseArraySource

LocalExecutor(DenseArraySource(np.ones((4, 4))))
applied = keep_freed_memory()
a = np.ones(100_000)  # 800 kB temporaries, as a block step makes them
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    b = a * 2.0
    c = b + a
    del b, c
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("SCALENMF_MALLOC_TUNING", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_local_executor_keeps_temporaries_off_fresh_pages():
    tuned = probe()
    assert tuned["applied"] is True
    # 400 temporaries of 196 pages each: page-faulted anew without the setting.
    assert tuned["faults"] < 2000
    untuned = probe(SCALENMF_MALLOC_TUNING="0")
    assert untuned["applied"] is False
    assert untuned["faults"] > 5 * max(tuned["faults"], 100)


def test_the_user_s_own_glibc_settings_win():
    assert probe(MALLOC_TRIM_THRESHOLD_="1000000")["applied"] is False


def test_a_fit_under_a_memory_limit_keeps_its_own_heap_setting():
    """Under ``memory_limit`` freed buffers go back to the OS at once (the limit is on RSS):
    the executor must not turn that off."""
    script = r"""
import json, numpy as np, scalenmf
from scalenmf.engine import allocator, memory
X = np.random.default_rng(0).poisson(3.0, (40, 60)).astype(float)
scalenmf.nmf(X, 3, max_iter=2, tol=0, memory_limit="200MB", progress=False)
print(json.dumps({"tightened": memory.heap_tightened(), "kept": allocator.keep_freed_memory()}))
"""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"tightened": True, "kept": False}
