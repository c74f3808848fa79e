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
    with pytest.raises(InputError, match=r"row_labels.*missing"):
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


# -- items 1, 2, 12: checkpoints are complete and sealed ---------------------------------


class Interrupt(Exception):
    pass


FIT = {"max_iter": 12, "tol": 0, "block_cols": 10, "n_runs": 1}


def interrupted_checkpoint(tmp_path: Path) -> tuple[np.ndarray, Path]:
    X = np.random.default_rng(3).poisson(2.0, (12, 40)).astype(float)

    def stop(info) -> None:
        if info.iteration == 7:
            raise Interrupt

    ck = tmp_path / "ck"
    with pytest.raises(Interrupt):
        scalenmf.nmf(X, 3, checkpoint=str(ck), checkpoint_every=3, callback=stop, **FIT)
    assert (ck / "LATEST").read_text().strip() == "it-000006"
    return X, ck


def resume(X: np.ndarray, ck: Path, **kw):
    return scalenmf.nmf(X, 3, checkpoint=str(ck), resume=True, **{**FIT, **kw})


def test_resumed_fit_still_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    X, ck = interrupted_checkpoint(tmp_path)
    reference = scalenmf.nmf(X, 3, **FIT)
    res = resume(X, ck)
    assert res.info["resumed_from_iteration"] == 6
    np.testing.assert_array_equal(res.W, reference.W)
    np.testing.assert_array_equal(res.H, reference.H)


@pytest.mark.parametrize("array", ["states/slot0", "model/Ws/0"])
def test_missing_checkpoint_chunk_is_refused(tmp_path: Path, array: str) -> None:
    X, ck = interrupted_checkpoint(tmp_path)
    chunk_keys(ck / "it-000006" / array)[0].unlink()
    with pytest.raises(InputError, match=rf"{array}.*missing"):
        resume(X, ck)


def flip_bit(path: Path, at: float = 0.6) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("at", [0.3, 0.6, 0.95])
def test_flipped_bit_in_a_checkpoint_chunk_is_refused(tmp_path: Path, at: float) -> None:
    X, ck = interrupted_checkpoint(tmp_path)
    flip_bit(chunk_keys(ck / "it-000006" / "states" / "slot0")[0], at)
    with pytest.raises(InputError, match=r"states/slot0.*(checksum|corrupt)"):
        resume(X, ck)


def test_edited_checkpoint_attrs_are_refused(tmp_path: Path) -> None:
    X, ck = interrupted_checkpoint(tmp_path)
    meta_path = ck / "it-000006" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["loop"]["relative_errors"][0][-1] = 0.001
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"attrs.*checksum"):
        resume(X, ck)


def test_garbage_latest_names_the_file(tmp_path: Path) -> None:
    X, ck = interrupted_checkpoint(tmp_path)
    (ck / "LATEST").write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(InputError, match="LATEST"):
        resume(X, ck)


def test_deleted_latest_resumes_from_the_newest_checkpoint_saying_so(tmp_path: Path) -> None:
    X, ck = interrupted_checkpoint(tmp_path)
    (ck / "LATEST").unlink()
    with pytest.warns(UserWarning, match="LATEST.*missing.*it-000006"):
        res = resume(X, ck)
    assert res.info["resumed_from_iteration"] == 6


def test_refusal_names_the_option_not_the_internal_key(tmp_path: Path) -> None:
    X, ck = interrupted_checkpoint(tmp_path)
    with pytest.raises(InputError, match=r"solver was 'als', now 'hals' \(--solver\)"):
        resume(X, ck, solver="hals")


# -- item 2: result stores are sealed too -------------------------------------------------


def saved_result(tmp_path: Path) -> Path:
    X = np.random.default_rng(3).poisson(2.0, (12, 40)).astype(float)
    out = tmp_path / "r.zarr"
    scalenmf.nmf(X, 3, max_iter=5, tol=0).save(out)
    return out


def test_result_store_round_trips(tmp_path: Path) -> None:
    out = saved_result(tmp_path)
    res = scalenmf.load(out)
    assert res.W.shape == (12, 3) and res.H.shape == (3, 40)


def test_flipped_value_in_a_result_is_refused_by_load_and_report(tmp_path: Path) -> None:
    out = saved_result(tmp_path)
    g = zarr.open_group(str(out), mode="r+")
    W = np.asarray(g["W"][...])
    W[0, 0] += 1.0
    g["W"][...] = W
    with pytest.raises(InputError, match=r"'W'.*checksum"):
        scalenmf.load(out)
    res = CliRunner().invoke(main, ["report", str(out), "-o", str(tmp_path / "r.html")])
    line = one_line_error(res)
    assert "'W'" in line and "checksum" in line
    assert not (tmp_path / "r.html").exists()


def test_edited_result_attrs_are_refused(tmp_path: Path) -> None:
    out = saved_result(tmp_path)
    g = zarr.open_group(str(out), mode="r+")
    g.attrs["relative_error"] = 0.0001
    with pytest.raises(InputError, match=r"attrs.*checksum"):
        scalenmf.load(out)


def test_missing_result_chunk_is_refused(tmp_path: Path) -> None:
    out = saved_result(tmp_path)
    chunk_keys(out / "H")[0].unlink()
    with pytest.raises(InputError, match=r"'H'.*missing"):
        scalenmf.load(out)
