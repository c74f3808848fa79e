"""Nothing read wrong: missing chunks, damaged checkpoints and results, hostile sparse stores.

Every store scalenmf reads must be complete and consistent; what is not is refused in one
line naming the array (and chunk), never read as zeros and never handed to scipy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main
from scalenmf.io.errors import InputError

BIN = Path(sys.executable).parent


def fit(path: Path | str, out: Path, *extra: str, k: int = 2):
    args = ["fit", str(path), "-k", str(k), "-o", str(out), "--no-progress", *extra]
    return CliRunner().invoke(main, args)


def one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def counts(m: int = 10, n: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2.0, (m, n)).astype(float) + 1


def chunk_keys(array_dir: Path) -> list[Path]:
    return sorted(p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json")


# -- item 1: an absent chunk is an error, never zeros -----------------------------------


def test_missing_dense_chunk_is_refused_naming_array_and_chunk(tmp_path: Path) -> None:
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, counts(), block_cols=10)
    (store / "X" / "c" / "0" / "2").unlink()
    line = one_line_error(fit(store, tmp_path / "o.zarr"))
    assert "'X'" in line and "chunk (0, 2)" in line and "missing" in line, line
    assert not (tmp_path / "o.zarr").exists()


def test_missing_sparse_chunk_is_refused_not_all_zeros(tmp_path: Path) -> None:
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, sp.csc_matrix(counts()), block_cols=10)
    victim = chunk_keys(store / "X" / "data")[0]
    victim.unlink()
    line = one_line_error(fit(store, tmp_path / "o.zarr"))
    assert "X/data" in line and "missing" in line and "all zeros" not in line, line


def test_all_zero_blocks_are_stored_and_read(tmp_path: Path) -> None:
    X = counts()
    X[:, 10:20] = 0
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, X, block_cols=10)
    src = scalenmf.io.open_matrix(store)
    np.testing.assert_array_equal(src.read_columns(0, 40), X)


def test_dense_store_declaring_far_more_columns_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, counts(), block_cols=10)
    meta_path = store / "X" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [10, 2_000_000_000]
    meta_path.write_text(json.dumps(meta))
    t0 = time.perf_counter()
    line = one_line_error(fit(store, tmp_path / "o.zarr"))
    assert time.perf_counter() - t0 < 30
    assert "incomplete" in line and "chunk (0, 4)" in line, line


def test_missing_label_chunk_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "x.zarr"
    labels = [f"g{i}" for i in range(10)]
    scalenmf.write_matrix(store, counts(), block_cols=10, row_labels=labels)
    for p in chunk_keys(store / "row_labels"):
        p.unlink()
    with pytest.raises(InputError, match="row_labels.*missing"):
        scalenmf.io.open_matrix(store)


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scalenmf.write_matrix(tmp_path / "x.zarr", counts(), block_cols=10)
    monkeypatch.chdir(tmp_path)
    src = scalenmf.io.open_matrix("x.zarr")
    assert os.path.isabs(src.path) and src.path == str(tmp_path / "x.zarr")


# -- item 4: hostile sparse stores are refused before any product -----------------------


def sparse_store(tmp_path: Path, name: str = "x.zarr") -> Path:
    store = tmp_path / name
    scalenmf.write_matrix(store, sp.csc_matrix(counts()), block_cols=10)
    return store


def rewrite(store: Path, part: str, values: np.ndarray) -> None:
    g = zarr.open_group(str(store / "X"), mode="r+")
    del g[part]
    arr = g.create_array(part, shape=values.shape, dtype=values.dtype, chunks=values.shape)
    arr[...] = values


def hostile_indices_out_of_range(store: Path) -> None:
    g = zarr.open_group(str(store / "X"), mode="r")
    idx = np.asarray(g["indices"][:])
    idx[len(idx) // 2] = 10**6
    rewrite(store, "indices", idx)


def hostile_negative_index(store: Path) -> None:
    g = zarr.open_group(str(store / "X"), mode="r")
    idx = np.asarray(g["indices"][:]).astype(np.int64)
    idx[3] = -7
    rewrite(store, "indices", idx)


def hostile_indptr_not_monotone(store: Path) -> None:
    g = zarr.open_group(str(store / "X"), mode="r")
    ip = np.asarray(g["indptr"][:])
    ip[5], ip[6] = ip[6] + 50, ip[5]
    rewrite(store, "indptr", ip)


def hostile_shape_smaller(store: Path) -> None:
    g = zarr.open_group(str(store / "X"), mode="r+")
    g.attrs["shape"] = [3, 40]


def hostile_indptr_past_end(store: Path) -> None:
    g = zarr.open_group(str(store / "X"), mode="r")
    ip = np.asarray(g["indptr"][:])
    ip[-1] += 1000
    rewrite(store, "indptr", ip)


HOSTILE = {
    "indices out of range": (hostile_indices_out_of_range, "out of range"),
    "negative index": (hostile_negative_index, "out of range"),
    "indptr not monotone": (hostile_indptr_not_monotone, "not monotone"),
    "shape smaller than indices": (hostile_shape_smaller, "out of range"),
    "indptr past the data": (hostile_indptr_past_end, "indptr ends at"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_sparse_store_is_refused_in_a_subprocess(tmp_path: Path, case: str) -> None:
    # A real process: before the fix some of these were a segmentation fault (rc 139).
    damage, needle = HOSTILE[case]
    store = sparse_store(tmp_path)
    damage(store)
    out = tmp_path / "o.zarr"
    cmd = [str(BIN / "scalenmf"), "fit", str(store), "-k", "2", "-o"]
    proc = subprocess.run(
        [*cmd, str(out), "--no-progress", "--max-iter", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert needle in lines[0], lines[0]
    assert not out.exists()


def test_duplicate_sparse_entries_are_summed(tmp_path: Path) -> None:
    store = sparse_store(tmp_path)
    g = zarr.open_group(str(store / "X"), mode="r")
    data, idx, ip = (np.asarray(g[p][:]) for p in ("data", "indices", "indptr"))
    # Column 0 gets its first entry twice (once more at the end of the column).
    col0 = slice(ip[0], ip[1])
    data2 = np.concatenate([data[col0], data[ip[0] : ip[0] + 1], data[ip[1] :]])
    idx2 = np.concatenate([idx[col0], idx[ip[0] : ip[0] + 1], idx[ip[1] :]])
    ip2 = ip.copy()
    ip2[1:] += 1
    rewrite(store, "data", data2)
    rewrite(store, "indices", idx2)
    rewrite(store, "indptr", ip2)
    block = scalenmf.io.open_matrix(store).read_columns(0, 40)
    expected = counts()
    expected[idx[ip[0]], 0] *= 2
    assert block.has_canonical_format
    np.testing.assert_array_equal(block.toarray(), expected)
