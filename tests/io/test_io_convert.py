"""convert (streaming, bounded memory, atomic) and describe / format_description."""

from __future__ import annotations

import csv
import gzip
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from scalenmf.io import InputError, OutputExistsError, open_matrix, write_matrix
from scalenmf.io.convert import convert, parse_bytes
from scalenmf.io.info import describe, format_description
from scalenmf.io.zarr_store import ZarrDenseSource, ZarrSparseSource

#: Small real data shipped with the tests (tests/data/README.md says where it comes from).
DATA = Path(__file__).parent.parent / "data"
CATALOG = DATA / "synsig" / "syn.2.7a.7b.abst_sp.sp" / "ground.truth.syn.catalog.csv"


def dense(src) -> np.ndarray:
    block = src.read_columns(0, src.shape[1])
    return block.toarray() if sp.issparse(block) else np.asarray(block)


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    """Names in ``directory`` other than ``keep``: temporaries that should have gone."""
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def write_csv(path: Path, X: np.ndarray, rows: list[str], cols: list[str], delim=",") -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh, delimiter=delim)
        w.writerow(["feature", *cols])
        for label, values in zip(rows, X, strict=True):
            w.writerow([label, *[f"{v:g}" for v in values]])
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# -- in-memory inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ndarray", "sparse", "dask", "source"])
@pytest.mark.parametrize("transpose", [False, True])
def test_convert_in_memory_inputs(tmp_path, rng, kind, transpose):
    X = rng.poisson(1.0, size=(9, 31)).astype(np.float64)
    given_ = X.T if transpose else X
    obj = {
        "ndarray": lambda A: A,
        "sparse": sp.csr_matrix,
        "dask": lambda A: da.from_array(A, chunks=(4, 5)),
        "source": lambda A: open_matrix(A),
    }[kind](given_)
    out = convert(obj, tmp_path / "x.zarr", transpose=transpose, block_cols=8)
    src = open_matrix(out)
    assert src.shape == (9, 31)
    assert src.is_sparse == (kind == "sparse")
    np.testing.assert_array_equal(dense(src), X)
    assert leftovers(tmp_path, {"x.zarr"}) == []


def test_convert_dtype_and_kind(tmp_path, rng):
    X = rng.integers(0, 4, size=(5, 12))
    s = open_matrix(convert(X, tmp_path / "a.zarr", sparse=True, dtype="float32"))
    assert isinstance(s, ZarrSparseSource) and s.dtype == np.float32
    assert s.nnz == np.count_nonzero(X)
    np.testing.assert_array_equal(dense(s), X)
    d = open_matrix(convert(sp.csc_matrix(X), tmp_path / "b.zarr", sparse=False))
    assert isinstance(d, ZarrDenseSource) and d.dtype == np.float64
    np.testing.assert_array_equal(dense(d), X)


def test_convert_plans_blocks_from_memory_limit(tmp_path, rng):
    X = rng.random((50, 400))
    convert(X, tmp_path / "small.zarr", memory_limit="80KB")
    convert(X, tmp_path / "big.zarr")
    small = zarr.open_array(str(tmp_path / "small.zarr"), path="X", mode="r").chunks
    big = zarr.open_array(str(tmp_path / "big.zarr"), path="X", mode="r").chunks
    assert small == (50, 25)  # 80 kB / 8 per block → 10 kB → 25 columns of 50 float64
    assert big == (50, 400)


# -- files, streamed -----------------------------------------------------------------------------
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("limit", ["64KB", None])
def test_convert_csv_streaming_matches_reading(tmp_path, rng, transpose, limit):
    X = rng.poisson(2.0, size=(37, 53)).astype(np.float64)
    rows = [f"f{i}" for i in range(37)]
    cols = [f"s{i}" for i in range(53)]
    if transpose:
        path = write_csv(tmp_path / "x.tsv.gz", X.T, cols, rows, delim="\t")
    else:
        path = write_csv(tmp_path / "x.tsv.gz", X, rows, cols, delim="\t")
    out = convert(path, tmp_path / "x.zarr", memory_limit=limit, transpose=transpose)
    src = open_matrix(out)
    np.testing.assert_array_equal(dense(src), X)
    assert list(src.row_labels) == rows and list(src.col_labels) == cols
    assert leftovers(tmp_path, {"x.zarr", "x.tsv.gz"}) == []


def test_convert_csv_memory_is_bounded(tmp_path, rng):
    m, n = 200, 1500  # 300k cells, ~1 MB of text, 2.4 MB as float64
    X = rng.poisson(3.0, size=(m, n)).astype(np.float64)
    path = write_csv(
        tmp_path / "big.csv", X, [f"g{i}" for i in range(m)], [f"c{i}" for i in range(n)]
    )
    budget = 1_000_000
    convert(X[:3, :3], tmp_path / "warm.zarr")  # lazy imports and caches are not the test's
    tracemalloc.start()
    try:
        convert(path, tmp_path / "big.zarr", memory_limit=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * budget, f"peak traced memory {peak} over budget {budget}"
    assert peak < X.nbytes / 2  # nowhere near holding the matrix
    np.testing.assert_array_equal(dense(open_matrix(tmp_path / "big.zarr")), X)


@pytest.mark.parametrize("transpose", [False, True])
def test_convert_csv_fast_reader_streamed(tmp_path, rng, transpose):
    # Big enough for the budget to stream it, and for batches to go through pandas' reader.
    m, n = 300, 1500
    X = rng.poisson(3.0, size=(m, n)).astype(np.float64) / 4
    rows, cols = [f"g{i}" for i in range(m)], [f"c{i}" for i in range(n)]
    data, r, c = (X.T, cols, rows) if transpose else (X, rows, cols)
    path = write_csv(tmp_path / "big.tsv.gz", data, r, c, delim="\t")
    budget = 16_000_000
    warm = write_csv(tmp_path / "warm.csv", X[:2, :2], rows[:2], cols[:2])
    convert(warm, tmp_path / "warm.zarr")  # imports (pandas) are not the test's
    tracemalloc.start()
    try:
        convert(path, tmp_path / "big.zarr", memory_limit=budget, transpose=transpose)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * budget
    src = open_matrix(tmp_path / "big.zarr")
    np.testing.assert_array_equal(dense(src), X)
    assert list(src.row_labels) == rows and list(src.col_labels) == cols
    assert leftovers(tmp_path, {"big.zarr", "big.tsv.gz", "warm.csv", "warm.zarr"}) == []


@pytest.mark.parametrize(
    ("cell", "match"),
    [
        ("-2", r"line 251, column 8 \('c6'\): negative value '-2'"),
        ("x", r"line 251, column 8 \('c6'\): 'x' is not a number"),
        ("", r"line 251, column 8 \('c6'\): '' is not a number"),
        ("1\t2", r"line 251: 1502 fields, expected 1501"),
    ],
)
def test_convert_csv_fast_reader_errors_name_line_and_column(tmp_path, rng, cell, match):
    m, n = 300, 1500
    X = rng.poisson(3.0, size=(m, n)).astype(np.float64)
    path = write_csv(
        tmp_path / "big.tsv",
        X,
        [f"g{i}" for i in range(m)],
        [f"c{i}" for i in range(n)],
        delim="\t",
    )
    lines = path.read_text().split("\n")
    fields = lines[250].split("\t")
    fields[7] = cell
    lines[250] = "\t".join(fields)
    path.write_text("\n".join(lines))
    with pytest.raises(InputError, match=match):
        convert(path, tmp_path / "big.zarr", memory_limit="16MB")
    assert leftovers(tmp_path, {"big.tsv"}) == []


@pytest.mark.parametrize("transpose", [False, True])
def test_convert_mtx_streaming_buckets(tmp_path, rng, transpose):
    X = sp.random(40, 300, density=0.05, format="coo", random_state=3)
    X.data = np.ceil(X.data * 10)
    stored = X.T if transpose else X
    scipy.io.mmwrite(tmp_path / "matrix.mtx", stored, field="integer")
    (tmp_path / "features.tsv").write_text("".join(f"g{i}\tG\n" for i in range(stored.shape[0])))
    (tmp_path / "barcodes.tsv").write_text("".join(f"b{i}\n" for i in range(stored.shape[1])))
    out = convert(
        tmp_path / "matrix.mtx", tmp_path / "x.zarr", memory_limit="20KB", transpose=transpose
    )
    src = open_matrix(out)
    assert src.is_sparse and src.shape == (40, 300) and src.nnz == X.nnz
    np.testing.assert_array_equal(dense(src), X.toarray())
    labels = (src.col_labels, src.row_labels) if transpose else (src.row_labels, src.col_labels)
    assert labels[0][1] == "g1" and labels[1][2] == "b2"
    assert leftovers(tmp_path, {"x.zarr", "matrix.mtx", "features.tsv", "barcodes.tsv"}) == []


def _sorted_mtx(path: Path, X: sp.spmatrix, extra: str = "") -> Path:
    """X written by column (as 10x does), then ``extra`` lines appended to the body."""
    coo = sp.coo_matrix(X)
    order = np.lexsort((coo.row, coo.col))
    lines = [
        f"{r + 1} {c + 1} {int(v)}\n"
        for r, c, v in zip(coo.row[order], coo.col[order], coo.data[order], strict=True)
    ]
    body = "".join(lines) + extra
    count = len(lines) + extra.count("\n")
    banner = "%%MatrixMarket matrix coordinate integer general\n"
    path.write_text(f"{banner}{X.shape[0]} {X.shape[1]} {count}\n{body}")
    return path


class _NoBuckets:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a column-sorted file must stream without staging")


def test_convert_sorted_mtx_streams_in_one_pass(tmp_path, monkeypatch):
    import scalenmf.io.formats.mtx as mtx

    X = sp.random(300, 2000, density=0.05, format="csc", random_state=4)
    X.data = np.ceil(X.data * 30)
    # A repeated entry (summed) and a column whose rows are out of order.
    extra_dup = f"5 {X.shape[1]} 2\n3 {X.shape[1]} 1\n5 {X.shape[1]} 4\n"
    path = _sorted_mtx(tmp_path / "matrix.mtx", X, extra_dup)
    expected = X.toarray()
    expected[4, -1] += 6
    expected[2, -1] += 1
    (tmp_path / "features.tsv").write_text("".join(f"g{i}\tG\n" for i in range(300)))
    (tmp_path / "barcodes.tsv").write_text("".join(f"b{j}\n" for j in range(2000)))
    monkeypatch.setattr(mtx, "BucketStage", _NoBuckets)
    reads = []
    read = mtx.SortedStream._read
    monkeypatch.setattr(mtx.SortedStream, "_read", lambda s, a, b: reads.append(a) or read(s, a, b))
    # 200 kB: chunks of 64 kB (about 6 of them) and blocks of about 25 kB.
    out = convert(path, tmp_path / "x.zarr", memory_limit="200KB")
    src = open_matrix(out)
    assert src.is_sparse and len(reads) > 5 and reads == sorted(reads)
    np.testing.assert_array_equal(dense(src), expected)
    assert src.row_labels[7] == "g7" and src.col_labels[1999] == "b1999"
    assert leftovers(tmp_path, {"x.zarr", "matrix.mtx", "features.tsv", "barcodes.tsv"}) == []


def test_sorted_mtx_stream_shows_byte_progress_to_the_end(tmp_path, capsys):
    X = sp.random(50, 400, density=0.2, format="csc", random_state=8)
    X.data = np.ceil(X.data * 30)
    path = _sorted_mtx(tmp_path / "x.mtx", X)
    convert(path, tmp_path / "x.zarr", progress=True, memory_limit="200KB")
    err = capsys.readouterr().err
    assert f"reading {path.name}" in err and "B/s" in err and "100%" in err
    np.testing.assert_array_equal(dense(open_matrix(tmp_path / "x.zarr")), X.toarray())


def test_convert_mtx_found_unsorted_late_is_staged_again(tmp_path, monkeypatch):
    import scalenmf.io.formats.mtx as mtx

    staged = []
    bucket_stage = mtx.BucketStage
    monkeypatch.setattr(
        mtx, "BucketStage", lambda *a, **k: staged.append(1) or bucket_stage(*a, **k)
    )
    X = sp.random(200, 1500, density=0.05, format="csc", random_state=5)
    X.data = np.ceil(X.data * 30)
    # An entry of column 1 at the very end: found only after most blocks are written.
    path = _sorted_mtx(tmp_path / "x.mtx", X, "7 1 9\n")
    expected = X.toarray()
    expected[6, 0] += 9
    out = convert(path, tmp_path / "x.zarr", memory_limit="200KB")
    np.testing.assert_array_equal(dense(open_matrix(out)), expected)
    assert staged == [1]
    assert leftovers(tmp_path, {"x.zarr", "x.mtx"}) == []


@pytest.mark.parametrize(
    ("extra", "fix_count", "match"),
    [
        ("12 1499 -3\n", True, r"entry line \d+: value -3.0 is negative"),
        ("12 1499\n", True, r"line \d+: expected 3 number"),
        ("12 1499 3\n", False, r"has \d+ entries, more than the"),
        ("", False, r"truncated: the header promises"),
    ],
)
def test_convert_sorted_mtx_bad_late_line_leaves_nothing(tmp_path, extra, fix_count, match):
    X = sp.random(200, 1500, density=0.05, format="csc", random_state=6)
    X.data = np.ceil(X.data * 30)
    path = _sorted_mtx(tmp_path / "x.mtx", X, extra)
    if not fix_count:
        # The header says one entry fewer (extra line) or one more (no extra line).
        text = path.read_text().split("\n", 2)
        m, n, k = text[1].split()
        shift = -1 if extra else 1
        text[1] = f"{m} {n} {int(k) + shift}"
        path.write_text("\n".join(text))
    with pytest.raises(InputError, match=match):
        convert(path, tmp_path / "x.zarr", memory_limit="200KB")
    assert leftovers(tmp_path, {"x.mtx"}) == []


@pytest.mark.parametrize("transpose", [False, True])
def test_convert_mtx_array_format(tmp_path, rng, transpose):
    A = rng.integers(0, 9, size=(6, 25)).astype(float)
    scipy.io.mmwrite(tmp_path / "a.mtx", A.T if transpose else A)
    out = convert(tmp_path / "a.mtx", tmp_path / "a.zarr", memory_limit="4KB", transpose=transpose)
    np.testing.assert_array_equal(dense(open_matrix(out)), A)


def test_convert_zarr_stores_transposed(tmp_path, rng):
    X = rng.poisson(1.0, size=(7, 30)).astype(float)
    write_matrix(tmp_path / "d.zarr", X.T, col_labels=[f"g{i}" for i in range(7)])
    write_matrix(tmp_path / "s.zarr", sp.csc_matrix(X.T), block_cols=4)
    d = open_matrix(convert(tmp_path / "d.zarr", tmp_path / "d2.zarr", transpose=True))
    s = open_matrix(
        convert(tmp_path / "s.zarr", tmp_path / "s2.zarr", transpose=True, memory_limit="8KB")
    )
    np.testing.assert_array_equal(dense(d), X)
    assert list(d.row_labels) == [f"g{i}" for i in range(7)]
    np.testing.assert_array_equal(dense(s), X)
    assert s.is_sparse


def test_convert_npy_transposed(tmp_path, rng):
    X = rng.integers(0, 9, size=(5, 14))
    np.save(tmp_path / "x.npy", X.T.copy())
    np.testing.assert_array_equal(
        dense(open_matrix(convert(tmp_path / "x.npy", tmp_path / "x.zarr", transpose=True))), X
    )


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_convert_gene_major_anndata(tmp_path, rng, fmt):
    ad = pytest.importorskip("anndata")
    cells = (rng.random((60, 8)) < 0.3) * rng.integers(1, 9, size=(60, 8)).astype(float)
    a = ad.AnnData(X=sp.csc_matrix(cells))
    a.obs_names = [f"c{i}" for i in range(60)]
    a.var_names = [f"g{i}" for i in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "h5ad":
            a.write_h5ad(tmp_path / "a.h5ad")
        else:
            a.write_zarr(tmp_path / "a.zarr")
    src_path = tmp_path / f"a.{fmt}"
    out = open_matrix(convert(src_path, tmp_path / "x.zarr", memory_limit="16KB"))
    assert out.shape == (8, 60) and out.is_sparse
    np.testing.assert_array_equal(dense(out), cells.T)
    assert out.row_labels[3] == "g3" and out.col_labels[59] == "c59"


def _write_cells_h5ad(path: Path, cells: np.ndarray) -> Path:
    ad = pytest.importorskip("anndata")
    a = ad.AnnData(X=sp.csr_matrix(cells))
    a.obs_names = [f"c{i}" for i in range(cells.shape[0])]
    a.var_names = [f"g{i}" for i in range(cells.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(path)
    return path


def _read_ahead_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("read-ahead") and t.is_alive()]


def test_convert_h5ad_reads_the_next_block_ahead(tmp_path, rng, monkeypatch):
    # An h5ad X is read block by block in a thread one block ahead of the writer; the
    # store is the same as reading in order, and no reader thread is left behind.
    from scalenmf.io.formats.h5ad import H5adSource

    cells = (rng.random((90, 7)) < 0.4) * rng.integers(1, 9, size=(90, 7)).astype(float)
    path = _write_cells_h5ad(tmp_path / "a.h5ad", cells)
    import threading

    reads: list[tuple[int, int]] = []
    where: set[str] = set()
    read = H5adSource._read

    def spy(self, a, b):
        reads.append((a, b))
        where.add(threading.current_thread().name.split("_")[0])
        return read(self, a, b)

    monkeypatch.setattr(H5adSource, "_read", spy)
    out = convert(path, tmp_path / "x.zarr", block_cols=8)
    assert where == {"read-ahead"}
    assert reads == [(a, min(a + 8, 90)) for a in range(0, 90, 8)]  # in order, once each
    out = open_matrix(out)
    np.testing.assert_array_equal(dense(out), cells.T)
    assert out.col_labels[89] == "c89" and out.row_labels[6] == "g6"
    assert _read_ahead_threads() == []


def test_convert_h5ad_bad_value_late_stops_the_read_ahead(tmp_path, rng):
    cells = (rng.random((90, 7)) < 0.4) * rng.integers(1, 9, size=(90, 7)).astype(float)
    cells[61, 3] = -2.0
    path = _write_cells_h5ad(tmp_path / "a.h5ad", cells)
    with pytest.raises(InputError, match=r"-2\.0 at row 3 \('g3'\), column 61 \('c61'\)"):
        convert(path, tmp_path / "x.zarr", block_cols=8)
    assert _read_ahead_threads() == []
    assert leftovers(tmp_path, {"a.h5ad"}) == []


def _entry_reads(monkeypatch) -> list[tuple[int, int]]:
    """Spy on the entry-range reads of a CSR h5ad X, with chunks of 16 entries so that
    columns straddle ranges."""
    import scalenmf.io.zarr_store as zs
    from scalenmf.io.formats.h5ad import H5adSource

    monkeypatch.setattr(zs, "_SPARSE_CHUNK", 16)
    reads: list[tuple[int, int]] = []
    read = H5adSource.read_entries

    def spy(self, lo, hi):
        reads.append((lo, hi))
        return read(self, lo, hi)

    monkeypatch.setattr(H5adSource, "read_entries", spy)
    return reads


def test_convert_h5ad_csr_is_written_by_entry_ranges(tmp_path, rng, monkeypatch):
    # Without block_cols, a CSR X (our CSC as stored) is copied in ranges of one chunk of
    # entries each, in order, labels kept; the store is the one the block writer makes.
    reads = _entry_reads(monkeypatch)
    cells = (rng.random((40, 9)) < 0.4) * rng.integers(1, 9, size=(40, 9)).astype(np.float32)
    path = _write_cells_h5ad(tmp_path / "a.h5ad", cells)
    nnz = int((cells != 0).sum())
    out = open_matrix(convert(path, tmp_path / "x.zarr"))
    assert reads == [(lo, min(lo + 16, nnz)) for lo in range(0, nnz, 16)]
    assert out.is_sparse and out.dtype == np.float32
    np.testing.assert_array_equal(dense(out), cells.T)
    assert out.col_labels[39] == "c39" and out.row_labels[8] == "g8"
    blockwise = open_matrix(convert(path, tmp_path / "y.zarr", block_cols=5))
    np.testing.assert_array_equal(dense(blockwise), dense(out))
    out64 = open_matrix(convert(path, tmp_path / "z.zarr", dtype="float64"))
    assert out64.dtype == np.float64
    np.testing.assert_array_equal(dense(out64), cells.T)
    assert _read_ahead_threads() == []


@pytest.mark.parametrize("bad", [-2.0, np.nan, np.inf])
def test_convert_h5ad_entry_ranges_refuse_bad_values(tmp_path, rng, monkeypatch, bad):
    reads = _entry_reads(monkeypatch)
    cells = (rng.random((40, 9)) < 0.4) * rng.integers(1, 9, size=(40, 9)).astype(float)
    cells[31, 4] = bad
    path = _write_cells_h5ad(tmp_path / "a.h5ad", cells)
    with pytest.raises(InputError, match=rf"found {bad!r} at row 4 \('g4'\), column 31 \('c31'\)"):
        convert(path, tmp_path / "x.zarr")
    assert len(reads) > 1  # refused in a later range, not the first
    assert leftovers(tmp_path, {"a.h5ad"}) == []


def test_convert_h5ad_float32_overflow_is_refused(tmp_path, monkeypatch):
    _entry_reads(monkeypatch)
    cells = np.ones((30, 4))
    cells[20, 2] = 1e300
    path = _write_cells_h5ad(tmp_path / "a.h5ad", cells)
    with pytest.raises(InputError, match=r"found inf at row 2 \('g2'\), column 20 \('c20'\)"):
        convert(path, tmp_path / "x.zarr", dtype="float32")


def _rewrite_indices(path: Path, change) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        idx = f["X/indices"][:]
        change(idx)
        f["X/indices"][:] = idx


def test_convert_h5ad_unsorted_rows_fall_back_to_blocks(tmp_path, rng, monkeypatch):
    # Rows out of order, or repeated, in a cell (here the last ranges): the entry copy
    # gives up and the block writer sorts and sums them.
    reads = _entry_reads(monkeypatch)
    cells = np.zeros((30, 6))
    cells[:, :] = rng.integers(1, 9, size=(30, 6))
    path = _write_cells_h5ad(tmp_path / "a.h5ad", cells)
    # cell 25 has genes 0..5 at entries 150..155: swap two, then repeat one in cell 28.
    _rewrite_indices(path, lambda idx: idx.__setitem__(slice(150, 152), [1, 0]))
    out = open_matrix(convert(path, tmp_path / "x.zarr"))
    assert reads and reads[-1][1] < 180  # gave up before the end
    np.testing.assert_array_equal(dense(out), cells.T)
    _rewrite_indices(path, lambda idx: idx.__setitem__(169, 0))  # cell 28: gene 0 twice
    out = open_matrix(convert(path, tmp_path / "y.zarr"))
    want = cells.T.copy()
    want[0, 28] += want[1, 28]
    want[1, 28] = 0
    np.testing.assert_array_equal(dense(out), want)
    # A column continuing into the next range: rows must go on increasing across it.
    _rewrite_indices(path, lambda idx: idx.__setitem__(slice(None), np.tile(np.arange(6), 30)))
    _rewrite_indices(path, lambda idx: idx.__setitem__(16, 0))  # cell 2 starts at 12
    got = dense(open_matrix(convert(path, tmp_path / "z.zarr")))
    want = cells.T.copy()
    want[0, 2] += want[4, 2]
    want[4, 2] = 0
    np.testing.assert_array_equal(got, want)


def test_convert_h5ad_entry_ranges_refuse_bad_rows(tmp_path, monkeypatch):
    _entry_reads(monkeypatch)
    path = _write_cells_h5ad(tmp_path / "a.h5ad", np.ones((30, 6)))
    _rewrite_indices(path, lambda idx: idx.__setitem__(100, 7))
    with pytest.raises(InputError, match=r"gene index 7 of cell 16 is outside 0\.\.5"):
        convert(path, tmp_path / "x.zarr")
    assert leftovers(tmp_path, {"a.h5ad"}) == []


def _chunk_bytes(array_dir: Path) -> list[bytes]:
    """The stored chunk files of a 1-D Zarr array (v2 keys 0, 1, …; v3 keys c/0, c/1, …)."""
    base = array_dir / "c" if (array_dir / "c").is_dir() else array_dir
    keys = sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [p.read_bytes() for p in keys]


def _csr_group(path: Path, cells: sp.csr_matrix, compressor, chunk: int = 7) -> Path:
    """An AnnData-style cells × genes CSR group X in a Zarr v2 store, with ``compressor``."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    g = root.create_group("X")
    g.attrs.update(
        {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": list(cells.shape)}
    )
    for name, values in (("data", cells.data), ("indices", cells.indices)):
        arr = g.create_array(
            name, shape=values.shape, chunks=(chunk,), dtype=values.dtype, compressor=compressor
        )
        arr[:] = values
    g.create_array("indptr", shape=cells.indptr.shape, dtype=np.int64)[:] = cells.indptr
    return path


def _no_encoding(monkeypatch) -> None:
    import scalenmf.io.zarr_store as zarr_store

    def refuse(*args, **kwargs):
        raise AssertionError("a chunk was encoded: the copy was not taken")

    monkeypatch.setattr(zarr_store._ChunkFiles, "put", refuse)


def test_convert_anndata_zarr_copies_sparse_chunks_without_reencoding(tmp_path, rng, monkeypatch):
    # AnnData's cells × genes CSR is our genes × cells CSC: its data and indices chunks
    # go to the store byte for byte (values still checked); indptr and labels are new.
    ad = pytest.importorskip("anndata")
    _no_encoding(monkeypatch)
    cells = (rng.random((80, 9)) < 0.3) * rng.integers(1, 9, size=(80, 9))
    a = ad.AnnData(X=sp.csr_matrix(cells.astype(np.float32)))
    a.obs_names = [f"c{i}" for i in range(80)]
    a.var_names = [f"g{i}" for i in range(9)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_zarr(tmp_path / "a.zarr")
    out = convert(tmp_path / "a.zarr", tmp_path / "x.zarr")
    for name in ("data", "indices"):
        assert _chunk_bytes(tmp_path / "x.zarr" / "X" / name) == _chunk_bytes(
            tmp_path / "a.zarr" / "X" / name
        )
    src = open_matrix(out)
    assert src.is_sparse and src.shape == (9, 80) and src.dtype == np.float32
    np.testing.assert_array_equal(dense(src), cells.T)
    assert src.row_labels[8] == "g8" and src.col_labels[79] == "c79"
    # A store of ours is copied the same way.
    again = convert(out, tmp_path / "y.zarr")
    assert _chunk_bytes(tmp_path / "y.zarr" / "X" / "data") == _chunk_bytes(
        tmp_path / "x.zarr" / "X" / "data"
    )
    np.testing.assert_array_equal(dense(open_matrix(again)), cells.T)


@pytest.mark.parametrize("codec", ["zstd", "gzip", "none"])
def test_convert_sparse_zarr_copy_reads_other_compressors(tmp_path, codec, monkeypatch):
    from numcodecs import GZip, Zstd

    _no_encoding(monkeypatch)

    compressor = {"zstd": Zstd(level=3), "gzip": GZip(level=5), "none": None}[codec]
    cells = sp.random(40, 6, density=0.4, format="csr", random_state=3, dtype=np.float64)
    cells.data = np.ceil(cells.data * 9)
    path = _csr_group(tmp_path / "a.zarr", cells, compressor)
    out = convert(path, tmp_path / "x.zarr")
    assert _chunk_bytes(tmp_path / "x.zarr" / "X" / "data") == _chunk_bytes(
        tmp_path / "a.zarr" / "X" / "data"
    )
    np.testing.assert_array_equal(dense(open_matrix(out)), cells.toarray().T)


def test_convert_sparse_zarr_that_needs_rewriting_is_rewritten(tmp_path):
    from numcodecs import Blosc

    # Rows out of order and repeated in a cell (summed), integer values (cast): not copied.
    cells = sp.csr_matrix(
        (np.array([2, 1, 4, 3]), np.array([3, 1, 1, 0]), np.array([0, 3, 3, 4])), shape=(3, 5)
    )
    path = _csr_group(tmp_path / "a.zarr", cells, Blosc(cname="lz4", clevel=5), chunk=2)
    out = open_matrix(convert(path, tmp_path / "x.zarr"))
    expected = np.zeros((5, 3))
    expected[3, 0], expected[1, 0], expected[0, 2] = 2, 5, 3
    np.testing.assert_array_equal(dense(out), expected)
    assert out.nnz == 3 and out.dtype == np.float64
    floats = sp.csr_matrix(cells, dtype=np.float64)
    path = _csr_group(tmp_path / "b.zarr", floats, Blosc(cname="lz4", clevel=5), chunk=2)
    np.testing.assert_array_equal(dense(open_matrix(convert(path, tmp_path / "y.zarr"))), expected)


def test_convert_sparse_zarr_copy_refuses_bad_values_leaving_nothing(tmp_path):
    from numcodecs import Blosc

    cells = sp.csr_matrix(np.array([[0.0, 1.0], [2.0, 0.0], [0.0, -3.0]]))
    path = _csr_group(tmp_path / "a.zarr", cells, Blosc(cname="lz4", clevel=5), chunk=2)
    with pytest.raises(InputError, match=r"-3\.0 at row 1, column 2"):
        convert(path, tmp_path / "x.zarr")
    assert leftovers(tmp_path, {"a.zarr"}) == []


def test_convert_real_catalog(tmp_path):
    out = convert(CATALOG, tmp_path / "cat.zarr", memory_limit="256KB")
    src = open_matrix(out)
    assert src.shape[0] == 96
    assert src.row_labels[0] == "A[C>A]A" and src.row_labels[-1] == "T[T>G]T"
    np.testing.assert_array_equal(dense(src), dense(open_matrix(CATALOG)))


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparse", [False, True])
def test_bad_values_leave_nothing(tmp_path, rng, sparse):
    X = rng.random((4, 50))
    X[2, 37] = -1.0
    obj = sp.csc_matrix(X) if sparse else X
    with pytest.raises(InputError, match=r"-1\.0 at row 2 \('r2'\), column 37 \('c37'\)"):
        src = open_matrix(obj).set_labels([f"r{i}" for i in range(4)], [f"c{i}" for i in range(50)])
        convert(src, tmp_path / "x.zarr", block_cols=10)
    X[2, 37] = np.nan
    with pytest.raises(InputError, match=r"nan at row 2, column 37"):
        convert(X, tmp_path / "x.zarr", block_cols=10)
    assert leftovers(tmp_path, set()) == []


def test_float32_overflow_is_caught(tmp_path):
    with pytest.raises(InputError, match="inf"):
        convert(np.array([[1.0, 1e300]]), tmp_path / "x.zarr", dtype="float32")


def test_csv_error_mid_stream_leaves_nothing(tmp_path):
    lines = ["g,a,b"] + [f"r{i},1,2" for i in range(2000)] + ["bad,1,-5"]
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"line 2002, column 3 \('b'\): negative"):
        convert(tmp_path / "x.csv", tmp_path / "x.zarr", memory_limit="32KB")
    assert leftovers(tmp_path, {"x.csv"}) == []


def test_output_rules(tmp_path, rng):
    X = rng.random((2, 3))
    convert(X, tmp_path / "x.zarr")
    with pytest.raises(OutputExistsError):
        convert(X * 2, tmp_path / "x.zarr")
    convert(X * 2, tmp_path / "x.zarr", overwrite=True)
    np.testing.assert_array_equal(dense(open_matrix(tmp_path / "x.zarr")), X * 2)
    with pytest.raises(FileNotFoundError):
        convert(X, tmp_path / "no" / "such" / "x.zarr")
    with pytest.raises(InputError, match="no such file"):
        convert(tmp_path / "missing.csv", tmp_path / "y.zarr")
    with pytest.raises(InputError, match="empty"):
        convert(np.zeros((3, 0)), tmp_path / "y.zarr")
    with pytest.raises(ValueError, match="dtype"):
        convert(X, tmp_path / "y.zarr", dtype="int32")
    with pytest.raises(ValueError, match="block_cols"):
        convert(X, tmp_path / "y.zarr", block_cols=0)
    with pytest.raises(ValueError, match="memory_limit"):
        convert(X, tmp_path / "y.zarr", memory_limit="lots")
    assert leftovers(tmp_path, {"x.zarr"}) == []


def test_parse_bytes():
    assert parse_bytes(1000) == 1000
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("2 GiB") == 2 * 2**30
    assert parse_bytes("1.5MiB") == 3 * 2**19
    assert parse_bytes("1e6") == 10**6
    assert parse_bytes("64kb") == 64_000
    for bad in ("", "GB", "-1GB", "2 parsecs", "0", None):
        with pytest.raises(ValueError):
            parse_bytes(bad)  # type: ignore[arg-type]


def test_progress_bar_goes_to_stderr(tmp_path, rng, capsys):
    convert(rng.random((3, 40)), tmp_path / "x.zarr", block_cols=5, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "960/960" in captured.err  # 3 × 40 float64 values


@pytest.mark.parametrize("fmt", ["mtx", "tsv"])
def test_progress_bar_reports_bytes_per_second(tmp_path, rng, capsys, fmt):
    X = rng.poisson(1.0, size=(30, 40)).astype(float)
    if fmt == "mtx":
        path = tmp_path / "x.mtx"
        scipy.io.mmwrite(path, sp.coo_matrix(X), field="integer")
    else:
        path = write_csv(
            tmp_path / "x.tsv",
            X,
            [f"g{i}" for i in range(30)],
            [f"s{j}" for j in range(40)],
            delim="\t",
        )
    convert(path, tmp_path / "x.zarr", progress=True, memory_limit="64KB")
    err = capsys.readouterr().err
    assert f"reading {path.name}" in err and "B/s" in err
    size = path.stat().st_size
    assert f"{size}/{size}" in err.replace(".0", "") or "100%" in err


@pytest.mark.parametrize("fmt", ["h5ad", "npy", "mtx"])
def test_progress_bar_of_the_writer_reports_bytes_per_second(tmp_path, rng, capsys, fmt):
    # Inputs without a text reader (h5ad, npy, stores) show their rate too: the writer's
    # bar counts the bytes of the matrix it writes, and ends at its size.
    X = rng.poisson(1.0, size=(30, 40)).astype(float)
    if fmt == "h5ad":
        path = _write_cells_h5ad(tmp_path / "x.h5ad", X.T)
    elif fmt == "npy":
        path = tmp_path / "x.npy"
        np.save(path, X)
    else:
        path = tmp_path / "x.mtx"
        scipy.io.mmwrite(path, sp.coo_matrix(X), field="integer")
    convert(path, tmp_path / "x.zarr", progress=True, memory_limit="64KB")
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("writing")]
    assert lines and all("B/s" in line for line in lines[1:])
    assert "100%" in lines[-1]  # the bytes written add up to the matrix's size


# -- properties ----------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 7),
    st.integers(1, 20),
    st.integers(0, 2**31 - 1),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(1, 6),
    st.sampled_from([None, "2KB", "1MB"]),
)
def test_convert_round_trip_property(m, n, seed, sparse, transpose, block_cols, limit):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 30, size=(m, n)) * (rng.random((m, n)) < 0.4)
    X = X.astype(float)
    given_ = X.T if transpose else X
    with tempfile.TemporaryDirectory() as tmp:
        stored = write_matrix(Path(tmp) / "in.zarr", sp.csc_matrix(given_) if sparse else given_)
        out = convert(
            stored,
            Path(tmp) / "out.zarr",
            transpose=transpose,
            block_cols=block_cols,
            memory_limit=limit,
        )
        src = open_matrix(out)
        assert src.is_sparse == sparse and src.shape == (m, n)
        np.testing.assert_array_equal(dense(src), X)


# -- describe ------------------------------------------------------------------------------------
def test_describe_matrix(tmp_path, rng):
    X = sp.random(20, 100, density=0.1, format="csc", random_state=0)
    path = write_matrix(
        tmp_path / "s.zarr", X, row_labels=[f"gene{i}" for i in range(20)], block_cols=30
    )
    d = describe(path)
    assert d["kind"] == "matrix" and d["format"] == "zarr"
    assert d["shape"] == [20, 100] and d["sparse"] and d["nnz"] == X.nnz
    assert d["density"] == pytest.approx(X.nnz / 2000)
    assert d["has_row_labels"] and not d["has_col_labels"]
    assert d["first_row_labels"] == [f"gene{i}" for i in range(5)]
    assert d["n_blocks"] >= 1 and d["disk_bytes"] > 0
    text = format_description(d)
    assert "20 features × 100 samples" in text and "gene0, gene1" in text
    assert "column labels : none" in text
    dd = describe(rng.random((3, 4)))
    assert dd["format"] == "in-memory ndarray" and not dd["sparse"]
    assert "storage       : dense" in format_description(dd)


def test_describe_csv(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("Mutation type,Trinucleotide,S1\nC>A,ACA,3\nC>A,ACC,0\n")
    d = describe(path)
    assert d["format"] == "csv" and d["first_row_labels"] == ["A[C>A]A", "A[C>A]C"]


def test_describe_result_store(tmp_path):
    root = zarr.open_group(str(tmp_path / "r.zarr"), mode="w")
    root.attrs["scalenmf"] = {"kind": "result", "format_version": 1}
    root.attrs.update(
        {
            "k": 3,
            "solver": "hals",
            "loss": "frobenius",
            "n_iter": 42,
            "relative_error": 0.123456789,
            "converged": True,
        }
    )
    root.create_array("W", shape=(96, 3), dtype="f8")
    root.create_array("H", shape=(3, 500), dtype="f8")
    d = describe(tmp_path / "r.zarr")
    assert d["kind"] == "result"
    assert (d["k"], d["solver"], d["loss"], d["n_iter"]) == (3, "hals", "frobenius", 42)
    assert d["W_shape"] == [96, 3] and d["H_shape"] == [3, 500]
    text = format_description(d)
    assert "relative error : 0.123457" in text and "W              : 96 × 3" in text


def test_describe_errors(tmp_path):
    with pytest.raises(InputError, match="no such"):
        describe(tmp_path / "nope")
    (tmp_path / "x.bin").write_bytes(b"\x00")
    with pytest.raises(InputError, match="cannot tell the format"):
        describe(tmp_path / "x.bin")


# -- Matrix Market parsed by the workers of a real Dask cluster -------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    from tests.procs import ProcCluster

    procs = ProcCluster(tmp_path_factory.mktemp("procs")).start(2)
    try:
        with procs.client() as client:
            yield procs, client
    finally:
        procs.stop()


def _gzip_copy(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_convert_sorted_mtx_on_dask_workers_matches_serial(tmp_path, cluster, gz):
    _, client = cluster
    X = sp.random(300, 2000, density=0.05, format="csc", random_state=11)
    X.data = np.ceil(X.data * 30)
    # A duplicate (summed) and rows out of order inside the last column.
    path = _sorted_mtx(tmp_path / "matrix.mtx", X, "5 2000 2\n3 2000 1\n5 2000 4\n")
    expected = X.toarray()
    expected[4, -1] += 6
    expected[2, -1] += 1
    (tmp_path / "features.tsv").write_text("".join(f"g{i}\tG\n" for i in range(300)))
    (tmp_path / "barcodes.tsv").write_text("".join(f"b{j}\n" for j in range(2000)))
    src_path = _gzip_copy(path) if gz else path

    def executed() -> int:
        return sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())

    before = executed()
    # 200 kB: chunks of 64 kB, so the file is parsed as several pieces by the workers.
    out = convert(src_path, tmp_path / "x.zarr", memory_limit="200KB", scheduler=client)
    src = open_matrix(out)
    np.testing.assert_array_equal(dense(src), expected)
    assert src.row_labels[7] == "g7" and src.col_labels[1999] == "b1999"
    size = path.stat().st_size
    assert executed() - before >= size // (64 << 10)  # one task per chunk ran on a worker
    serial = convert(src_path, tmp_path / "serial.zarr", memory_limit="200KB")
    assert dense(open_matrix(serial)).tolist() == dense(src).tolist()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("extra", "fix_count", "match"),
    [
        ("12 1499 -3\n", True, r"entry line {line}: value -3.0 is negative"),
        ("12 1499\n", True, r"line {line}: expected 3 number"),
        ("12 1499 3\n", False, r"has \d+ entries, more than the"),
        ("", False, r"truncated: the header promises"),
    ],
)
def test_convert_mtx_on_dask_workers_names_bad_lines_as_serial(
    tmp_path, cluster, gz, extra, fix_count, match
):
    _, client = cluster
    X = sp.random(200, 1500, density=0.05, format="csc", random_state=6)
    X.data = np.ceil(X.data * 30)
    path = _sorted_mtx(tmp_path / "x.mtx", X, extra)
    line = 2 + X.nnz + 1  # banner, size line, the entries, then the extra line
    if not fix_count:
        text = path.read_text().split("\n", 2)
        m, n, k = text[1].split()
        text[1] = f"{m} {n} {int(k) + (-1 if extra else 1)}"
        path.write_text("\n".join(text))
    src_path = _gzip_copy(path) if gz else path
    with pytest.raises(InputError, match=match.format(line=line)):
        convert(src_path, tmp_path / "x.zarr", memory_limit="200KB", scheduler=client)
    assert leftovers(tmp_path, {"x.mtx", "x.mtx.gz"}) == []


def test_convert_unsorted_mtx_on_dask_workers_is_staged_again(tmp_path, cluster):
    _, client = cluster
    X = sp.random(200, 1500, density=0.05, format="csc", random_state=5)
    X.data = np.ceil(X.data * 30)
    path = _sorted_mtx(tmp_path / "x.mtx", X, "7 1 9\n")  # column 1 again, at the end
    expected = X.toarray()
    expected[6, 0] += 9
    out = convert(path, tmp_path / "x.zarr", memory_limit="200KB", scheduler=client)
    np.testing.assert_array_equal(dense(open_matrix(out)), expected)
    assert leftovers(tmp_path, {"x.zarr", "x.mtx"}) == []


def test_cli_convert_on_a_scheduler(tmp_path, cluster):
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    procs, _ = cluster
    X = sp.random(100, 800, density=0.1, format="csc", random_state=3)
    X.data = np.ceil(X.data * 30)
    path = _gzip_copy(_sorted_mtx(tmp_path / "x.mtx", X))
    args = ["convert", str(path), str(tmp_path / "x.zarr"), "--scheduler", procs.address]
    res = CliRunner().invoke(main, [*args, "--memory-limit", "200KB"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(dense(open_matrix(tmp_path / "x.zarr")), X.toarray())
