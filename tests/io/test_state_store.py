"""Block states in a scratch Zarr store: exact round trips, generations, clean-up."""

from __future__ import annotations

import gc
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from scalenmf.io.state_store import (
    SCRATCH_PREFIX,
    StateStore,
    columns_array,
    decode_state,
    encode_state,
    scratch_location,
    state_nbytes,
)
from scalenmf.models.step import BlockState


def sample_state(seed: int = 0) -> BlockState:
    rng = np.random.default_rng(seed)
    H = {
        (0, (3,), False): rng.random((1, 3, 7)),
        (1, (2, 4), True): rng.random((2, 4, 7)).astype(np.float32),
    }
    return BlockState(
        1, H, null=sp.random(5, 7, density=0.3, format="csc", random_state=seed), index=4
    )


def test_a_state_comes_back_bit_for_bit_with_aligned_writable_arrays() -> None:
    state = sample_state()
    back = decode_state(encode_state(state))
    assert back.dataset == 1 and back.index == 4 and back.H.keys() == state.H.keys()
    for key, value in state.H.items():
        got = back.H[key]
        assert got.dtype == value.dtype and got.tobytes() == value.tobytes()
        assert got.flags.aligned and got.flags.writeable
        got[...] = 0  # a step may work in place on its state
    assert (back.null != state.null).nnz == 0
    assert decode_state(encode_state(None)) is None
    # Odd-sized buffers before an array do not misalign it.
    odd = {"a": np.arange(3, dtype=np.int8), "b": np.arange(5.0)}
    back = decode_state(encode_state(odd))
    assert back["b"].flags.aligned and back["b"].tolist() == odd["b"].tolist()


def test_state_nbytes_counts_the_arrays_inside() -> None:
    state = sample_state()
    assert state_nbytes(state) >= sum(v.nbytes for v in state.H.values())
    assert state_nbytes(None) == 0


def test_the_store_keeps_generations_and_is_removed(tmp_path: Path) -> None:
    path = scratch_location(tmp_path)
    assert Path(path).parent == tmp_path and Path(path).name.startswith(SCRATCH_PREFIX)
    store = StateStore(path)
    one, two = sample_state(1), sample_state(2)
    store.write(0, one, "a1")
    store.write(0, two, "a2")
    store.write(0, two, "a1")  # replaced
    remote = pickle.loads(pickle.dumps(store))  # what a worker gets: the path alone
    for key, value in two.H.items():
        assert np.array_equal(remote.read(0, "a1").H[key], value)
    store.drop("a1")
    with pytest.raises(KeyError):
        remote.read(0, "a1")
    assert np.array_equal(store.read(0, "a2").H[(0, (3,), False)], two.H[(0, (3,), False)])
    store.remove()
    assert not Path(path).exists()


def test_scratch_defaults_to_the_environment_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SCALENMF_SCRATCH", str(tmp_path))
    assert Path(scratch_location()).parent == tmp_path


def test_a_columns_array_lives_as_long_as_its_object(tmp_path: Path) -> None:
    arr = columns_array(tmp_path, (3, 10), np.float32, 4)
    arr[:, 0:4] = np.ones((3, 4))
    arr[:, 4:10] = 2
    assert np.asarray(arr[...]).sum() == 12 + 36
    [only] = [p.name for p in tmp_path.iterdir()]
    assert only.startswith(SCRATCH_PREFIX)
    del arr
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_or_missing_state_is_refused_not_read(tmp_path: Path) -> None:
    """A flipped byte in a state's numbers, or a chunk gone (read back as zeros), must
    raise, never give a fit wrong numbers."""
    import zarr

    from scalenmf.io.integrity import IntegrityError

    data = encode_state({"H": np.arange(12.0).reshape(3, 4)})
    flipped = data.copy()
    flipped[-3] ^= 0xFF
    with pytest.raises(IntegrityError, match="damaged"):
        decode_state(flipped)
    with pytest.raises(IntegrityError, match="damaged"):
        decode_state(np.zeros_like(data))
    store = StateStore(str(tmp_path / "s.zarr"))
    store.write(0, {"H": np.ones((2, 5))})
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    chunks = [p for p in (tmp_path / "s.zarr").rglob("c/*") if p.is_file()]
    assert chunks and root is not None
    for chunk in chunks:
        chunk.unlink()
    with pytest.raises(IntegrityError):
        store.read(0)
