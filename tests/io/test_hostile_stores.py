"""Hostile stores, generated: every damaged or lying store is one line on stderr, exit 1.

Dense and sparse matrix stores are written correctly, then damaged in one way drawn by
hypothesis: a chunk deleted or overwritten, a shape or dtype in the metadata that lies,
an ``indptr`` or ``indices`` that breaks the CSC rules. ``scalenmf fit`` must refuse each
with one ``Error:`` line (exit 1), never a traceback, a crash or a result.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import zarr
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scalenmf
from scalenmf.cli.main import main

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

shapes = st.tuples(st.integers(4, 14), st.integers(6, 30), st.integers(2, 7))
seeds = st.integers(0, 2**31 - 1)


def matrix(m: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.poisson(1.5, (m, n)).astype(float)
    X[0, :] += 1  # no all-zero column: every column has an entry
    return X


def chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json")


def edit_meta(array_dir: Path, change: Callable[[dict], None]) -> None:
    path = array_dir / "zarr.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def rewrite(group_dir: Path, part: str, values: np.ndarray) -> None:
    g = zarr.open_group(str(group_dir), mode="r+")
    del g[part]
    arr = g.create_array(part, shape=values.shape, dtype=values.dtype, chunks=values.shape)
    arr[...] = values


def assert_refused(store: Path, workdir: Path) -> str:
    out = workdir / "o.zarr"
    res = CliRunner().invoke(
        main, ["fit", str(store), "-k", "2", "-o", str(out), "--no-progress", "--max-iter", "3"]
    )
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.output
    assert not out.exists()
    return lines[0]


# -- dense ------------------------------------------------------------------------------

DENSE_DAMAGE = ["delete chunk", "garbage chunk", "truncate chunk", "more columns", "dtype"]


@SETTINGS
@given(
    shape=shapes,
    seed=seeds,
    damage=st.sampled_from(DENSE_DAMAGE),
    which=st.floats(0, 0.999),
    factor=st.integers(2, 10**6),
    dtype=st.sampled_from(["float32", "int8", "uint16", "bool", "complex128", "float16"]),
)
def test_hostile_dense_store(shape, seed, damage, which, factor, dtype) -> None:
    m, n, cols = shape
    workdir = Path(tempfile.mkdtemp())
    try:
        store = workdir / "x.zarr"
        scalenmf.write_matrix(store, matrix(m, n, seed), block_cols=cols)
        arr = store / "X"
        chunks = chunk_files(arr)
        victim = chunks[int(which * len(chunks))]
        if damage == "delete chunk":
            victim.unlink()
        elif damage == "garbage chunk":
            victim.write_bytes(b"\x07not a chunk" * 5)
        elif damage == "truncate chunk":
            victim.write_bytes(victim.read_bytes()[:5])
        elif damage == "more columns":
            edit_meta(arr, lambda meta: meta.__setitem__("shape", [m, n + cols * factor]))
        else:
            # Another element size or kind than the bytes hold.
            edit_meta(arr, lambda meta: meta.__setitem__("data_type", dtype))
            if dtype == "bool":
                edit_meta(arr, lambda meta: meta.__setitem__("fill_value", False))
        assert_refused(store, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- sparse ------------------------------------------------------------------------------

SPARSE_DAMAGE = [
    "delete chunk",
    "garbage chunk",
    "index out of range",
    "negative index",
    "indptr not monotone",
    "indptr start",
    "indptr end",
    "indptr length",
    "fewer rows",
    "float indices",
    "data shorter",
]


def damage_sparse(group: Path, damage: str, m: int, which: float, amount: int) -> None:
    g = zarr.open_group(str(group), mode="r")
    data, idx, ip = (np.asarray(g[p][:]) for p in ("data", "indices", "indptr"))
    nnz = len(idx)
    at = int(which * nnz)
    if damage in ("delete chunk", "garbage chunk"):
        part = ["data", "indices", "indptr"][int(which * 3)]
        victim = chunk_files(group / part)[0]
        if damage == "delete chunk":
            victim.unlink()
        else:
            victim.write_bytes(b"\x00garbage" * 9)
    elif damage == "index out of range":
        idx = idx.astype(np.int64)
        idx[at] = m + amount
        rewrite(group, "indices", idx)
    elif damage == "negative index":
        idx = idx.astype(np.int64)
        idx[at] = -amount
        rewrite(group, "indices", idx)
    elif damage == "indptr not monotone":
        j = 1 + int(which * (len(ip) - 2))
        ip[j] = ip[j - 1] - amount
        rewrite(group, "indptr", ip)
    elif damage == "indptr start":
        ip = ip + amount
        rewrite(group, "indptr", ip)
    elif damage == "indptr end":
        ip[-1] += amount
        rewrite(group, "indptr", ip)
    elif damage == "indptr length":
        rewrite(group, "indptr", ip[:-1])
    elif damage == "fewer rows":
        shape = list(zarr.open_group(str(group), mode="r").attrs["shape"])
        zarr.open_group(str(group), mode="r+").attrs["shape"] = [max(1, int(idx.max())), shape[1]]
    elif damage == "float indices":
        rewrite(group, "indices", idx.astype(np.float64))
    else:
        rewrite(group, "data", data[: max(0, nnz - amount)])


@SETTINGS
@given(
    shape=shapes,
    seed=seeds,
    damage=st.sampled_from(SPARSE_DAMAGE),
    which=st.floats(0, 0.999),
    amount=st.integers(1, 10**9),
)
def test_hostile_sparse_store(shape, seed, damage, which, amount) -> None:
    m, n, cols = shape
    workdir = Path(tempfile.mkdtemp())
    try:
        store = workdir / "x.zarr"
        X = matrix(m, n, seed)
        X[m - 1, 0] = 1.0  # the last row is used: fewer rows is a lie
        scalenmf.write_matrix(store, sp.csc_matrix(X), block_cols=cols)
        damage_sparse(store / "X", damage, m, which, amount)
        assert_refused(store, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
