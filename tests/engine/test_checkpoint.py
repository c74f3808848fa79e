"""Checkpoints: atomic publication (even under kill -9), resume parity, wrong-fit refusal."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.engine.checkpoint import Checkpointer, LoopSnapshot
from scalenmf.io.checkpoint import CheckpointError, read_checkpoint, write_checkpoint


def test_states_round_trip_keeps_values_order_and_gaps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    states = [
        [rng.random((3, 5)), None],
        None,
        [np.asfortranarray(rng.random((3, 4))), rng.random((3, 4)).astype(np.float32)],
        rng.random((2, 2)),
    ]
    write_checkpoint(
        str(tmp_path / "ck"),
        7,
        block_states=states,
        model_state={"Ws": [rng.random((6, 3))], "xx": 2.5},
        attrs={"note": "x"},
    )
    back = read_checkpoint(str(tmp_path / "ck"))
    assert back is not None and back["iteration"] == 7
    got = back["block_states"]
    assert got[1] is None and got[0][1] is None
    np.testing.assert_array_equal(got[0][0], states[0][0])
    assert got[2][0].flags.f_contiguous and np.array_equal(got[2][0], states[2][0])
    np.testing.assert_array_equal(got[3], states[3])
    assert back["model_state"]["xx"] == 2.5 and back["attrs"] == {"note": "x"}


WRITER = r"""
import sys, numpy as np
from scalenmf.io.checkpoint import write_checkpoint
location = sys.argv[1]
for it in range(1, 10**6):
    # Every value of checkpoint `it` equals `it`: a mixed or partial one would show.
    states = [[np.full((4, 20000), float(it))] for _ in range(6)]
    write_checkpoint(location, it, block_states=states,
                     model_state={"Ws": [np.full((50, 4), float(it))]}, attrs={"it": it})
    print(it, flush=True)
"""


@pytest.mark.timeout(120)
def test_checkpoint_is_never_half_written_even_when_killed(tmp_path: Path) -> None:
    location = tmp_path / "ck"
    rng = random.Random(3)
    seen = 0
    for trial in range(4):
        log = tmp_path / f"writer{trial}.log"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(location)], stdout=open(log, "w")
        )
        deadline = time.time() + 30
        # Let it get going (imports, the first writes), then kill it at a random instant.
        while time.time() < deadline and len(log.read_text().split()) < 2:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        back = read_checkpoint(str(location))
        assert back is not None, "a complete checkpoint was published before the kill"
        it = back["iteration"]
        assert back["attrs"] == {"it": it}
        for state in back["block_states"]:
            assert state[0].shape == (4, 20000) and np.all(state[0] == it)
        assert np.all(back["model_state"]["Ws"][0] == it)
        seen += 1
    assert seen == 4
    # The next writer cleans up what interrupted writes left behind.
    write_checkpoint(str(location), 10**6, block_states=[None], model_state={}, attrs={})
    assert sorted(p.name for p in location.iterdir()) == ["LATEST", "it-1000000"]


def test_checkpointer_refuses_another_fit(tmp_path: Path) -> None:
    snap = LoopSnapshot(1, [[1.0]], [[0.5]], [0.1], [1], [False], [0], {"xx": 1.0}, [None], 0.1)
    Checkpointer(str(tmp_path / "ck"), every=1, fingerprint={"k": 3}).save(snap)
    with pytest.raises(CheckpointError, match="k was 3, now 4"):
        Checkpointer(str(tmp_path / "ck"), fingerprint={"k": 4}).load()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("solver", ["als", "mu"])
def test_api_resume_equals_uninterrupted(tmp_path: Path, kind: str, solver: str) -> None:
    rng = np.random.default_rng(4)
    X = rng.poisson(2.0, (25, 120)).astype(float)
    data = sp.csc_matrix(X) if kind == "sparse" else X
    kw = {"solver": solver, "max_iter": 17, "tol": 0, "block_cols": 30, "n_runs": 2}
    reference = scalenmf.nmf(data, 3, **kw)
    ck = str(tmp_path / "ck")

    def stop(info) -> None:
        if info.iteration == 11:
            raise Interrupt

    with pytest.raises(Interrupt):
        scalenmf.nmf(data, 3, checkpoint=ck, checkpoint_every=4, callback=stop, **kw)
    res = scalenmf.nmf(data, 3, checkpoint=ck, checkpoint_every=4, resume=True, **kw)
    assert res.info["resumed_from_iteration"] == 8
    np.testing.assert_array_equal(res.W, reference.W)
    np.testing.assert_array_equal(res.H, reference.H)
    assert res.loss_history == reference.loss_history
    assert res.runs == reference.runs


def test_resume_with_other_parameters_is_refused(tmp_path: Path) -> None:
    X = np.random.default_rng(1).poisson(2.0, (20, 60)).astype(float)
    ck = str(tmp_path / "ck")

    def stop(info) -> None:
        if info.iteration == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        scalenmf.nmf(X, 3, max_iter=10, tol=0, checkpoint=ck, checkpoint_every=2, callback=stop)
    with pytest.raises(CheckpointError, match=r"l1_h was 0\.0, now 0\.5"):
        scalenmf.nmf(X, 3, max_iter=10, tol=0, l1_h=0.5, checkpoint=ck, resume=True)
    X2 = X.copy()
    X2[0, 0] += 1
    with pytest.raises(CheckpointError, match="input_checksum"):
        scalenmf.nmf(X2, 3, max_iter=10, tol=0, checkpoint=ck, resume=True)


def test_manifest_is_stored_with_the_result(tmp_path: Path) -> None:
    X = np.random.default_rng(1).poisson(2.0, (20, 60)).astype(float)
    res = scalenmf.nmf(X, 3, max_iter=5, seed=9)
    res.save(tmp_path / "r.zarr")
    manifest = scalenmf.load(tmp_path / "r.zarr").manifest
    assert manifest["params"]["k"] == 3 and manifest["seeds"]["seed"] == 9
    assert manifest["input"]["checksum"].startswith("blake2b:")
    assert manifest["input"]["shape"] == [20, 60]
    for name in ("scalenmf", "numpy", "scipy", "dask", "distributed", "zarr", "python"):
        assert manifest["versions"][name]
    again = scalenmf.nmf(X, 3, max_iter=5, seed=9).manifest["input"]["checksum"]
    assert again == manifest["input"]["checksum"]


# -- states streamed through a checkpoint (states kept out of memory) ------------------


def _blocks(n_blocks: int, cols: int, seed: int = 0):
    """Block states shaped like a fit's: two slots of (10, cols), the second every other
    block only, and a gap; made one at a time."""
    rng = np.random.default_rng(seed)
    for j in range(n_blocks):
        if j == 3:
            yield None
            continue
        second = rng.random((10, cols)) if j % 2 else None
        yield [
            np.asfortranarray(rng.random((10, cols))) if j == 5 else rng.random((10, cols)),
            second,
        ]


def test_an_iterator_of_states_writes_the_checkpoint_a_list_writes(tmp_path: Path) -> None:
    listed, streamed = str(tmp_path / "a"), str(tmp_path / "b")
    write_checkpoint(listed, 3, block_states=list(_blocks(40, 3000)), model_state={}, attrs={})
    write_checkpoint(streamed, 3, block_states=_blocks(40, 3000), model_state={}, attrs={})
    a, b = read_checkpoint(listed), read_checkpoint(streamed)
    assert a is not None and b is not None
    assert a["block_states"].kinds == b["block_states"].kinds
    for want, x, y in zip(_blocks(40, 3000), a["block_states"], b["block_states"], strict=True):
        if want is None:
            assert x is None and y is None
            continue
        for w, p, q in zip(want, x, y, strict=True):
            if w is None:
                assert p is None and q is None
            else:
                assert np.array_equal(p, w) and np.array_equal(q, w)
                assert p.flags.f_contiguous == q.flags.f_contiguous == w.flags.f_contiguous
    # Random access reads the same as iteration, whichever chunk a block starts in.
    states = b["block_states"]
    assert np.array_equal(states[-1][0], list(_blocks(40, 3000))[-1][0])
    assert states[3] is None and len(states) == 40


def test_a_streamed_slot_of_two_dtypes_is_refused(tmp_path: Path) -> None:
    def mixed():
        yield [np.zeros((2, 3), np.float32)]
        yield [np.zeros((2, 3), np.float64)]

    with pytest.raises(TypeError, match="dtypes float32 and float64"):
        write_checkpoint(str(tmp_path / "ck"), 1, block_states=mixed(), model_state={}, attrs={})
    assert read_checkpoint(str(tmp_path / "ck")) is None  # nothing half-published


def test_a_checkpoint_writes_and_reads_states_in_bounded_memory(tmp_path: Path) -> None:
    """80 MB of states pass through a checkpoint with far less than that traced: before
    this, the states were gathered into a list and concatenated per slot (twice them)."""
    import tracemalloc

    def big():
        for j in range(100):
            yield [np.full((10, 10_000), float(j))]  # 800 KB each, 80 MB in all

    ck = str(tmp_path / "ck")
    tracemalloc.start()
    try:
        write_checkpoint(ck, 1, block_states=big(), model_state={}, attrs={})
        _, written = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        back = read_checkpoint(ck)
        assert back is not None
        for j, state in enumerate(back["block_states"]):
            assert state[0][0, 0] == j
        _, read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written < 45e6, f"writing traced {written / 1e6:.0f} MB for 80 MB of states"
    assert read < 45e6, f"reading traced {read / 1e6:.0f} MB for 80 MB of states"


def test_a_damaged_state_slot_is_refused_before_any_state_is_read(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    write_checkpoint(str(ck), 2, block_states=list(_blocks(8, 500)), model_state={}, attrs={})
    chunk = next(
        p
        for p in (ck / "it-000002" / "states" / "slot0").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="slot0"):
        read_checkpoint(str(ck))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_resume_with_states_in_a_scratch_store_equals_uninterrupted(
    tmp_path: Path, scratch: Path, monkeypatch, kind: str
) -> None:
    from scalenmf.engine import local

    monkeypatch.setattr(local, "STATE_SHARE", 0.0)  # every state goes to the scratch store
    rng = np.random.default_rng(6)
    X = rng.poisson(2.0, (25, 160)).astype(float)
    data = sp.csc_matrix(X) if kind == "sparse" else X
    kw = {"max_iter": 13, "tol": 0, "block_cols": 20, "n_runs": 2, "memory_limit": "4GB"}
    reference = scalenmf.nmf(data, 3, **kw)
    assert reference.info["states_in_store"] is True
    ck = str(tmp_path / "ck")

    def stop(info) -> None:
        if info.iteration == 9:
            raise Interrupt

    with pytest.raises(Interrupt):
        scalenmf.nmf(data, 3, checkpoint=ck, checkpoint_every=4, callback=stop, **kw)
    res = scalenmf.nmf(data, 3, checkpoint=ck, checkpoint_every=4, resume=True, **kw)
    assert res.info["resumed_from_iteration"] == 8 and res.info["states_in_store"] is True
    np.testing.assert_array_equal(res.W, reference.W)
    np.testing.assert_array_equal(np.asarray(res.H[...]), np.asarray(reference.H[...]))
    assert res.loss_history == reference.loss_history
