"""Ctrl-C (SIGINT) while ``scalenmf fit`` writes its result: one line, exit 130, and the old
result or nothing at the output path (no half-written store, no traceback at exit).

The write is held deterministically: a wrapper process patches zarr's local store so that
the first chunk written into the output's temporary store signals the test (a file) and
then waits; the test sends SIGINT exactly then.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import scalenmf

HOLD = r"""
import asyncio, signal, sys
from pathlib import Path
import zarr.storage

# Ctrl-C as at a terminal: a test run started in the background (`nohup … &`, a CI
# runner) ignores SIGINT, children inherit that, and Python then installs no handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

ready = Path(sys.argv[1])
original = zarr.storage.LocalStore.set

async def held_set(self, key, value, *args, **kwargs):
    # The fit's result is written under ".OUT.tmp-…": hold its first chunk.
    if ".tmp-" in str(self.root) and "/c/" in "/" + key and not ready.exists():
        ready.write_text("writing")
        await asyncio.sleep(120)
    return await original(self, key, value, *args, **kwargs)

zarr.storage.LocalStore.set = held_set
from scalenmf.cli.main import main
sys.argv = ["scalenmf", *sys.argv[2:]]
main()
"""


def run_interrupted(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    ready = tmp_path / "ready"
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ready), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the result write never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def store(tmp_path) -> str:
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, size=(30, 200)).astype(np.float64)
    return scalenmf.write_matrix(tmp_path / "x.zarr", X)


def assert_one_line(done: subprocess.CompletedProcess) -> None:
    """Exit 130 and "interrupted" last, after at most the fit's own warning: no traceback,
    no click "Aborted!", no asyncio complaint about zarr's write tasks at exit."""
    assert done.returncode == 130, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert lines[-1] == "interrupted", done.stderr
    assert all(line.startswith("warning: stopped at max_iter") for line in lines[:-1]), lines


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.timeout(240)
def test_ctrl_c_during_the_result_write_leaves_nothing(tmp_path, store):
    out = tmp_path / "out.zarr"
    args = ["fit", store, "-k", "3", "-o", str(out), "--max-iter", "3", "--no-progress"]
    done = run_interrupted(tmp_path, [*args, "--no-checkpoint"])
    assert_one_line(done)
    assert not out.exists()
    assert leftovers(out) == []


@pytest.mark.timeout(240)
def test_ctrl_c_during_an_overwrite_keeps_the_old_result(tmp_path, store):
    out = tmp_path / "out.zarr"
    args = ["fit", store, "-k", "3", "-o", str(out), "--max-iter", "3", "--no-progress"]
    first = subprocess.run(
        [sys.executable, "-m", "scalenmf.cli.main", *args, "--no-checkpoint"],
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr
    old = scalenmf.load(out)
    done = run_interrupted(tmp_path, [*args, "--seed", "5", "--overwrite"])
    assert_one_line(done)
    kept = scalenmf.load(out)
    assert np.array_equal(kept.W, old.W) and np.array_equal(kept.H, old.H)
    # The checkpoint of the interrupted fit stays for --resume; no temporary store does.
    assert [name for name in leftovers(out) if ".tmp-" in name or ".old-" in name] == []
