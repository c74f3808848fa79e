"""Bad input over the command line, driven by hypothesis: a clear one-line error, exit
status 1, and nothing left behind (no result, no temporary, no checkpoint)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scalenmf
from scalenmf.cli.main import main

SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def fit(path: Path | str, out: Path, k: int = 2, *extra: str):
    args = ["fit", str(path), "-k", str(k), "-o", str(out), "--no-progress", *extra]
    return CliRunner().invoke(main, args)


def assert_clean_failure(res, out: Path, *needles: str) -> None:
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    low = lines[0].lower()
    assert any(n.lower() in low for n in needles), f"{needles} not in {lines[0]!r}"
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not leftovers, leftovers
    assert not Path(f"{out}.checkpoint").exists()


matrices = st.tuples(st.integers(3, 12), st.integers(3, 15), st.integers(0, 2**31 - 1)).map(
    lambda t: np.random.default_rng(t[2]).poisson(3.0, (t[0], t[1])).astype(float)
)
BAD_VALUES: dict[str, tuple[float, tuple[str, ...]]] = {
    "negative": (-1.5, ("negative",)),
    "nan": (np.nan, ("nan", "non-finite")),
    "inf": (np.inf, ("infinite", "non-finite")),
}


def write_as(fmt: str, X: np.ndarray, directory: Path) -> Path:
    if fmt == "npy":
        np.save(directory / "x.npy", X)
        return directory / "x.npy"
    if fmt == "csv":
        path = directory / "x.csv"
        rows = ["gene," + ",".join(f"s{j}" for j in range(X.shape[1]))]
        rows += [f"g{i}," + ",".join(repr(float(v)) for v in X[i]) for i in range(X.shape[0])]
        path.write_text("\n".join(rows) + "\n")
        return path
    path = directory / "x.zarr"
    data = sp.csc_matrix(X) if fmt == "zarr-sparse" else X
    scalenmf.write_matrix(path, data, block_cols=4)
    return path


@SETTINGS
@given(
    X=matrices,
    bad=st.sampled_from(sorted(BAD_VALUES)),
    fmt=st.sampled_from(["npy", "csv", "zarr", "zarr-sparse"]),
    where=st.tuples(st.floats(0, 0.999), st.floats(0, 0.999)),
)
def test_bad_values_any_format(X: np.ndarray, bad: str, fmt: str, where) -> None:
    value, needles = BAD_VALUES[bad]
    i, j = int(where[0] * X.shape[0]), int(where[1] * X.shape[1])
    X = X.copy()
    X[i, j] = value
    with tempfile.TemporaryDirectory() as d:
        path = write_as(fmt, X, Path(d))
        assert_clean_failure(fit(path, Path(d) / "o.zarr"), Path(d) / "o.zarr", *needles)


@SETTINGS
@given(X=matrices, k=st.one_of(st.integers(-5, 0), st.integers(16, 40)))
def test_rank_out_of_range(X: np.ndarray, k: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = write_as("npy", X, Path(d))
        res = fit(path, Path(d) / "o.zarr", k)
        assert_clean_failure(res, Path(d) / "o.zarr", "k must be")


@SETTINGS
@given(rows=st.integers(0, 4), cols=st.integers(0, 4))
def test_zero_rows_or_columns(rows: int, cols: int) -> None:
    if rows and cols:
        rows = 0
    with tempfile.TemporaryDirectory() as d:
        path = write_as("npy", np.zeros((rows, cols)), Path(d))
        res = fit(path, Path(d) / "o.zarr")
        assert_clean_failure(res, Path(d) / "o.zarr", "empty", "k must be", "2-d")


TEXT_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "empty file": ("", ("empty",)),
    "header only": ("gene,s1,s2\n", ("empty", "no data", "no rows")),
    "ragged": ("gene,s1,s2,s3\ng1,1,2,3\ng2,4,5\ng3,1,1,1\n", ("fields", "ragged", "columns")),
    "text in numbers": (
        "gene,s1,s2,s3\ng1,1,2,3\ng2,4,x,5\ng3,1,1,1\n",
        ("not a number", "numeric", "could not convert", "x"),
    ),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_broken_csv(tmp_path: Path, case: str) -> None:
    text, needles = TEXT_CASES[case]
    (tmp_path / "x.csv").write_text(text)
    assert_clean_failure(
        fit(tmp_path / "x.csv", tmp_path / "o.zarr"), tmp_path / "o.zarr", *needles
    )


WRONG_DTYPES: dict[str, Callable[[], np.ndarray]] = {
    "strings": lambda: np.array([["a", "b"], ["c", "d"], ["e", "f"]]),
    "complex": lambda: np.ones((3, 4), dtype=complex),
    "datetime": lambda: np.zeros((3, 4), dtype="datetime64[s]"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_DTYPES))
def test_wrong_dtype(tmp_path: Path, kind: str) -> None:
    np.save(tmp_path / "x.npy", WRONG_DTYPES[kind]())
    res = fit(tmp_path / "x.npy", tmp_path / "o.zarr")
    assert_clean_failure(res, tmp_path / "o.zarr", "dtype", "numbers")


def test_object_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([[1, None], [2, 3]], dtype=object), allow_pickle=True)
    res = fit(tmp_path / "x.npy", tmp_path / "o.zarr")
    assert_clean_failure(res, tmp_path / "o.zarr", "pickle", "object", "cannot read")


def test_missing_input(tmp_path: Path) -> None:
    res = fit(tmp_path / "nope.zarr", tmp_path / "o.zarr")
    assert_clean_failure(res, tmp_path / "o.zarr", "does not exist")


def test_missing_url_input(tmp_path: Path) -> None:
    res = fit(f"file://{tmp_path}/nope.zarr", tmp_path / "o.zarr")
    assert_clean_failure(res, tmp_path / "o.zarr", "does not exist")


def chunk_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "X").rglob("*") if p.is_file() and p.name != "zarr.json")


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_chunk_names_array_and_chunk(tmp_path: Path, kind: str, damage: str) -> None:
    X = np.random.default_rng(0).poisson(2.0, (10, 40)).astype(float) + 1
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, sp.csc_matrix(X) if kind == "sparse" else X, block_cols=10)
    if kind == "dense":
        victim = chunk_files(store)[2]
    else:
        data = store / "X" / "data"
        victim = sorted(p for p in data.rglob("*") if p.is_file() and p.name != "zarr.json")[0]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00garbage" * 7)
    res = fit(store, tmp_path / "o.zarr")
    assert_clean_failure(res, tmp_path / "o.zarr", "corrupt or truncated")
    line = res.output.strip().splitlines()[-1]
    assert "array 'X" in line and "chunk" in line
    if kind == "dense":
        assert "chunk (0, 2)" in line, line


def test_corrupt_metadata(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("{not json")
    res = fit(junk, tmp_path / "o.zarr")
    assert_clean_failure(res, tmp_path / "o.zarr", "junk.zarr")


def test_all_zero_matrix(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((5, 6)))
    res = fit(tmp_path / "x.npy", tmp_path / "o.zarr")
    assert_clean_failure(res, tmp_path / "o.zarr", "all zeros")


def test_input_store_is_not_modified(tmp_path: Path) -> None:
    X = np.random.default_rng(0).poisson(2.0, (10, 40)).astype(float)
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, X, block_cols=10)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    res = fit(store, tmp_path / "o.zarr", 2, "--max-iter", "5")
    assert res.exit_code == 0, res.output
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    assert after == before
    shutil.rmtree(tmp_path / "o.zarr")
