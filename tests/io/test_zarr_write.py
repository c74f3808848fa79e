"""zarr_write writes the same files as zarr 3 for the arrays scalenmf's writers make."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from scalenmf.io import zarr_write
from scalenmf.io.integrity import WRITE_CONFIG

CASES = {
    # name: (values, chunk, chain)
    "f32": (np.random.default_rng(0).random(2_500_000).astype(np.float32), 1 << 20, "blosc"),
    "f64": (np.random.default_rng(1).random(1000), 300, "blosc"),
    "i32": (
        np.random.default_rng(2).integers(0, 20000, 300_001).astype(np.int32),
        1 << 17,
        "blosc",
    ),
    "i64": (np.arange(5001, dtype=np.int64), 5001, "zstd"),
    "i64_chunks": (np.arange(300_000, dtype=np.int64) * 7, 1 << 17, "zstd"),
    "zeros": (np.zeros(10, dtype=np.float32), 4, "blosc"),
    "state": (np.arange(1000, dtype=np.int64).astype(np.uint8), 1000, "raw"),
    "text": (np.array([f"G{i}é" for i in range(70000)]), 1 << 16, "strings"),
    "one": (np.array(["x"]), 1, "strings"),
}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(Path(d, f).relative_to(root)): Path(d, f).read_bytes()
        for d, _, files in os.walk(root)
        for f in files
    }


def test_files_are_zarrs_byte_for_byte(tmp_path):
    attrs = {"scalenmf": {"kind": "matrix", "format_version": 1}}
    ours, theirs = tmp_path / "ours", tmp_path / "zarr"
    zarr_write.write_group(ours, attrs)
    root = zarr.open_group(theirs, mode="w")
    root.attrs.update(attrs)
    for name, (values, chunk, chain) in CASES.items():
        if chain == "strings":
            zarr_write.write_strings(ours / name, values, chunk)
            arr = root.create_array(
                name, shape=values.shape, dtype=str, chunks=(chunk,), config=WRITE_CONFIG
            )
            arr[:] = values.astype(object)
            continue
        codecs = {
            "blosc": zarr_write.blosc_lz4(values.dtype.itemsize),
            "zstd": zarr_write.zstd_numbers(),
            "raw": zarr_write.raw_bytes(),
        }[chain]
        zarr_write.write_numbers(ours / name, values, chunk, codecs)
        arr = root.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=(chunk,),
            compressors={
                "blosc": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
                "zstd": "auto",
                "raw": None,
            }[chain],
            fill_value=0,
            config=WRITE_CONFIG,
        )
        arr[:] = values
    want, got = _tree(theirs), _tree(ours)
    assert sorted(got) == sorted(want)
    assert [k for k in want if want[k] != got[k]] == []
    back = zarr.open_group(ours, mode="r")
    for name, (values, _, _) in CASES.items():
        np.testing.assert_array_equal(back[name][:], values)


def test_resize_drops_chunks_past_the_end_as_zarr_does(tmp_path):
    values = np.arange(10, dtype=np.int32)
    out = zarr_write.LocalArray(tmp_path / "a", 16, 4, np.int32, zarr_write.blosc_lz4(4))
    for i in range(3):
        out.write_chunk(i, values[4 * i : 4 * i + 4])
    out.write_chunk(3, np.zeros(4, np.int32))
    out.resize((10,))
    assert sorted(p.name for p in (tmp_path / "a" / "c").iterdir()) == ["0", "1", "2"]
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a", mode="r")[:], values)
    assert out.shape == (10,) and out.n_chunks == 3


def test_other_value_types_are_refused(tmp_path):
    with pytest.raises(ValueError, match="LocalArray writes"):
        zarr_write.LocalArray(tmp_path / "a", 3, 3, np.int16, zarr_write.zstd_numbers())


def test_a_full_disk_while_writing_labels_directly_leaves_nothing(tmp_path, monkeypatch):
    """The labels and indptr of a local store are written by zarr_write in this thread: a
    full disk there gives the one-line error and no output (the atomic write drops it)."""
    import errno

    import scipy.sparse as sp

    from scalenmf.io.atomic import OutputError
    from scalenmf.io.matrix import write_matrix

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr_write, "write_strings", full)
    X = sp.random(30, 40, density=0.3, format="csc", random_state=0)
    with pytest.raises(OutputError, match="no space left on device"):
        write_matrix(tmp_path / "x.zarr", X, row_labels=[f"g{i}" for i in range(30)])
    assert list(tmp_path.iterdir()) == []
