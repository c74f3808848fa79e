"""The Zarr matrix layout: write_matrix / open_matrix / open_zarr round-trips, AnnData stores,
reblocking, pickling, corrupt chunks, atomic output."""

from __future__ import annotations

import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from scalenmf.io import InputError, OutputExistsError, open_matrix, write_matrix
from scalenmf.io.source import DenseArraySource
from scalenmf.io.zarr_store import ZarrDenseSource, ZarrSparseSource, open_zarr


def dense(src) -> np.ndarray:
    block = src.read_columns(0, src.shape[1])
    return block.toarray() if sp.issparse(block) else np.asarray(block)


def blocks_concat(src) -> np.ndarray:
    parts = [src.read_block(j) for j in range(src.n_blocks)]
    parts = [p.toarray() if sp.issparse(p) else np.asarray(p) for p in parts]
    return np.hstack(parts)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# -- round trips --------------------------------------------------------------------------------
def test_dense_round_trip_with_labels_and_chunks(tmp_path, rng):
    X = rng.poisson(3.0, size=(7, 23)).astype(np.float64)
    rows = [f"g{i}" for i in range(7)]
    cols = [f"s,{i} ü" for i in range(23)]
    path = write_matrix(tmp_path / "x.zarr", X, block_cols=5, row_labels=rows, col_labels=cols)
    src = open_matrix(path)
    assert isinstance(src, ZarrDenseSource)
    assert src.shape == (7, 23) and not src.is_sparse and src.dtype == np.float64
    assert zarr.open_array(str(tmp_path / "x.zarr"), path="X", mode="r").chunks == (7, 5)
    np.testing.assert_array_equal(dense(src), X)
    np.testing.assert_array_equal(blocks_concat(src), X)
    assert list(src.row_labels) == rows and list(src.col_labels) == cols
    # Every block is made of whole storage chunks.
    assert all(a % 5 == 0 for a, _ in src.block_bounds)


def test_sparse_round_trip(tmp_path, rng):
    X = sp.random(30, 50, density=0.1, format="csr", random_state=1) * 10
    path = write_matrix(tmp_path / "s.zarr", X, block_cols=7)
    src = open_matrix(path)
    assert isinstance(src, ZarrSparseSource)
    assert src.is_sparse and src.shape == (30, 50) and src.nnz == X.nnz
    assert sp.issparse(src.read_block(0)) and src.read_block(0).format == "csc"
    np.testing.assert_array_equal(blocks_concat(src), X.toarray())
    g = zarr.open_group(str(path), mode="r")
    assert g["X"].attrs["encoding-type"] == "csc_matrix"
    assert list(g["X"].attrs["shape"]) == [30, 50]


def test_sparse_write_spanning_many_chunks_in_uneven_blocks(tmp_path, monkeypatch):
    """Entries are stored in whole chunks (1,048,576 entries) whatever the block sizes;
    the blocks' entries carried between chunks all land in place."""
    rng = np.random.default_rng(3)
    parts = [
        sp.random(500, 3000, density=d, format="csc", random_state=rng, dtype=np.float32)
        for d in (0.9, 0.01, 0.5)
    ]
    X = sp.hstack(parts, format="csc")  # blocks of 1000 columns: 450k, 5k, 250k entries
    from scalenmf.io.zarr_store import _ChunkFiles

    writes = []
    put = _ChunkFiles.put

    def spy(self, start, values):
        if self.arr.path.endswith("data"):
            writes.append((start, start + len(values)))
        return put(self, start, values)

    monkeypatch.setattr(_ChunkFiles, "put", spy)
    src = write_matrix(tmp_path / "x.zarr", X, block_cols=1000)
    monkeypatch.undo()
    back = open_matrix(src)
    assert back.nnz == X.nnz and X.nnz > 2 * 2**20
    got = back.read_columns(0, X.shape[1])
    assert (got != X).nnz == 0
    assert all(a % 2**20 == 0 for a, _ in writes) and writes[-1][1] == X.nnz


def test_sparse_chunk_written_in_the_background_that_fails_leaves_nothing(tmp_path, monkeypatch):
    """Chunks are encoded and written by threads: a failed write (here a full disk) still
    stops the write with the one-line error, and nothing is left at the output."""
    import errno

    from scalenmf.io.atomic import OutputError
    from scalenmf.io.zarr_store import _ChunkFiles

    calls = []

    def full(self, key, piece):
        calls.append(key)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, key, piece)

    write = _ChunkFiles._write
    monkeypatch.setattr(_ChunkFiles, "_write", full)
    X = sp.random(500, 9000, density=0.5, format="csc", random_state=1, dtype=np.float32)
    with pytest.raises(OutputError, match="no space left on device"):
        write_matrix(tmp_path / "x.zarr", X, block_cols=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_integer_and_float32_dtypes(tmp_path, rng):
    X = rng.integers(0, 9, size=(4, 9), dtype=np.int32)
    src = open_matrix(write_matrix(tmp_path / "i.zarr", X))
    assert src.dtype == np.float64  # integer counts are read as float64
    np.testing.assert_array_equal(dense(src), X)
    src32 = open_matrix(write_matrix(tmp_path / "f.zarr", X, dtype=np.float32))
    assert src32.dtype == np.float32 and dense(src32).dtype == np.float32


def test_reblocking(tmp_path, rng):
    X = rng.random((3, 20))
    src = open_matrix(write_matrix(tmp_path / "x.zarr", X, block_cols=4))
    assert src.reblock(6).block_bounds == [(0, 6), (6, 12), (12, 18), (18, 20)]
    assert src.reblock([5, 15]).block_bounds == [(0, 5), (5, 20)]
    odd = src.reblock([(0, 1), (1, 20)])
    np.testing.assert_array_equal(blocks_concat(odd), X)
    np.testing.assert_array_equal(dense(open_matrix(src, block_cols=3)), X)
    with pytest.raises(ValueError, match="cover"):
        src.reblock([5, 5])
    with pytest.raises(ValueError, match="contiguous"):
        src.reblock([(0, 5), (6, 20)])


@pytest.mark.parametrize("sparse", [False, True])
def test_sources_pickle_by_path(tmp_path, rng, sparse):
    X = rng.random((5, 12)) * (rng.random((5, 12)) < 0.5)
    data = sp.csc_matrix(X) if sparse else X
    src = open_matrix(
        write_matrix(tmp_path / "p.zarr", data, block_cols=4, col_labels=list("abcdefghijkl"))
    )
    src.read_block(0)  # opens and caches the handle, which must not travel
    payload = pickle.dumps(src)
    assert len(payload) < 4000
    back = pickle.loads(payload)
    np.testing.assert_array_equal(blocks_concat(back), X)
    assert list(back.col_labels) == list("abcdefghijkl")


def test_npy_memmap_integer_stays_out_of_core(tmp_path, rng):
    X = rng.integers(0, 5, size=(6, 10)).astype(np.int64)
    np.save(tmp_path / "x.npy", X)
    src = open_matrix(tmp_path / "x.npy")
    assert isinstance(src, DenseArraySource) and not src.in_memory
    assert src.dtype == np.float64 and src.read_block(0).dtype == np.float64
    np.testing.assert_array_equal(dense(src), X)


# -- AnnData stores ------------------------------------------------------------------------------
def _anndata(X, n_obs, n_var):
    ad = pytest.importorskip("anndata")
    a = ad.AnnData(X=X)
    a.obs_names = [f"cell-{i}" for i in range(n_obs)]
    a.var_names = [f"gene/{i}" for i in range(n_var)]
    return a


@pytest.mark.parametrize("kind", ["csr", "dense", "csc"])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_anndata_zarr_is_read_genes_by_cells(tmp_path, rng, kind, zarr_format):
    ad = pytest.importorskip("anndata")
    cells = (rng.random((12, 5)) < 0.4) * rng.integers(1, 9, size=(12, 5)).astype(np.float32)
    X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[kind](cells)
    a = _anndata(X, 12, 5)
    old = ad.settings.zarr_write_format
    ad.settings.zarr_write_format = zarr_format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.write_zarr(tmp_path / "a.zarr")
    finally:
        ad.settings.zarr_write_format = old
    src = open_matrix(tmp_path / "a.zarr")
    assert src.shape == (5, 12)
    assert src.is_sparse == (kind != "dense")
    np.testing.assert_array_equal(dense(src), cells.T)
    np.testing.assert_array_equal(blocks_concat(src), cells.T)
    assert list(src.row_labels) == [f"gene/{i}" for i in range(5)]
    assert list(src.col_labels) == [f"cell-{i}" for i in range(12)]


# -- errors --------------------------------------------------------------------------------------
def _first_chunk_file(store: Path, array: str) -> Path:
    chunks = sorted(p for p in (store / array / "c").rglob("*") if p.is_file())
    assert chunks
    return chunks[0]


def test_corrupt_dense_chunk_names_array_and_columns(tmp_path, rng):
    path = Path(write_matrix(tmp_path / "x.zarr", rng.random((4, 20)), block_cols=5))
    _first_chunk_file(path, "X").write_bytes(b"not a blosc frame at all")
    src = open_matrix(path).reblock(5)
    with pytest.raises(InputError, match=r"columns 0:5 of array 'X'.*x\.zarr"):
        src.read_block(0)
    np.testing.assert_array_equal(src.read_block(1).shape, (4, 5))  # other chunks still fine


def test_corrupt_sparse_chunk(tmp_path):
    X = sp.random(10, 10, density=0.5, format="csc", random_state=2)
    path = Path(write_matrix(tmp_path / "s.zarr", X))
    _first_chunk_file(path, "X/data").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match=r"X/data"):
        open_matrix(path).read_block(0)


def test_missing_and_non_stores(tmp_path):
    with pytest.raises(InputError, match="no such"):
        open_matrix(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="cannot tell the format"):
        open_matrix(tmp_path / "plain")
    # A bare 2-D array is X itself; a bare array of any other rank is not a matrix.
    bare = zarr.create_array(str(tmp_path / "bare.zarr"), shape=(2, 3), dtype="f8")
    bare[:] = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(open_zarr(tmp_path / "bare.zarr").read_columns(0, 3), bare[:])
    zarr.create_array(str(tmp_path / "bare1.zarr"), shape=(4,), dtype="f8")
    with pytest.raises(InputError, match="bare Zarr array"):
        open_zarr(tmp_path / "bare1.zarr")
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(InputError, match="no array 'X'"):
        open_matrix(tmp_path / "empty.zarr")
    g = zarr.open_group(str(tmp_path / "r.zarr"), mode="w")
    g.attrs["scalenmf"] = {"kind": "result"}
    with pytest.raises(InputError, match="result store"):
        open_matrix(tmp_path / "r.zarr")


def test_write_is_atomic(tmp_path, rng):
    X = rng.random((3, 4))
    with pytest.raises(InputError, match="labels"):
        write_matrix(tmp_path / "x.zarr", X, row_labels=["only", "two"])
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temporary
    write_matrix(tmp_path / "x.zarr", X)
    with pytest.raises(OutputExistsError):
        write_matrix(tmp_path / "x.zarr", X * 2)
    write_matrix(tmp_path / "x.zarr", X * 2, overwrite=True)
    np.testing.assert_array_equal(dense(open_matrix(tmp_path / "x.zarr")), X * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["x.zarr"]


# -- properties ----------------------------------------------------------------------------------
label_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=8,
)


@st.composite
def matrices(draw):
    m = draw(st.integers(1, 6))
    n = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.0, 0.3, 1.0]))
    X = rng.integers(0, 50, size=(m, n)) * (rng.random((m, n)) < density)
    X = X.astype(draw(st.sampled_from([np.float32, np.float64])))
    rows = draw(st.none() | st.lists(label_text, min_size=m, max_size=m))
    cols = draw(st.none() | st.lists(label_text, min_size=n, max_size=n))
    return X, rows, cols, draw(st.booleans()), draw(st.integers(1, 5))


@settings(max_examples=25, deadline=None)
@given(matrices())
def test_round_trip_property(case):
    X, rows, cols, sparse, block_cols = case
    data = sp.csc_matrix(X) if sparse else X
    with tempfile.TemporaryDirectory() as tmp:
        path = write_matrix(
            Path(tmp) / "x.zarr", data, block_cols=block_cols, row_labels=rows, col_labels=cols
        )
        src = open_matrix(path)
        assert src.shape == X.shape and src.is_sparse == sparse and src.dtype == X.dtype
        np.testing.assert_array_equal(dense(src), X)
        np.testing.assert_array_equal(blocks_concat(src.reblock(block_cols)), X)
        assert (src.row_labels is None) == (rows is None)
        if rows is not None:
            assert list(src.row_labels) == rows
        if cols is not None:
            assert list(src.col_labels) == cols


@pytest.mark.parametrize("transposed", [False, True])
def test_blocks_narrower_than_a_chunk_decode_each_chunk_once(tmp_path, monkeypatch, transposed):
    """Parts of one storage chunk read in turn (a memory plan's narrow blocks, the online
    solver's batches) decode the chunk once, and every part is the stored slice."""
    import zarr

    from scalenmf.io.zarr_store import ZarrDenseSource

    X = np.random.default_rng(0).random((6, 250)).astype(np.float32)
    arr = X.T if transposed else X
    chunks = (100, 6) if transposed else (6, 100)
    z = zarr.create_array(
        store=str(tmp_path / "x.zarr"), shape=arr.shape, chunks=chunks, dtype="f4"
    )
    z[...] = arr
    source = ZarrDenseSource(str(tmp_path / "x.zarr"), array="", transposed=transposed)
    source = source.reblock(30)
    decoded: list[tuple[int, int]] = []
    real = ZarrDenseSource._decode
    monkeypatch.setattr(
        ZarrDenseSource, "_decode", lambda self, a, b: decoded.append((a, b)) or real(self, a, b)
    )
    for j, (a, b) in enumerate(source.block_bounds):
        block = source.read_block(j)
        np.testing.assert_array_equal(block, X[:, a:b])
        block[...] = -1  # the caller's copy: the kept chunk is not touched
    np.testing.assert_array_equal(source.read_block(0), X[:, :30])
    # Blocks crossing a chunk border (90-120, 180-210) are read directly.
    assert [d for d in decoded if d[1] - d[0] == 100 or d[1] == 250][:3] == [
        (0, 100),
        (100, 200),
        (200, 250),
    ]
    assert len([d for d in decoded if d == (0, 100)]) == 2  # again after other chunks
    # One chunk per process, not per object: a pickled copy (a Dask task's) shares it...
    before = len(decoded)
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy.read_block(1), X[:, 30:60])
    assert len(decoded) == before
    # ... and a new opening of the store (which may have been rewritten) does not.
    z[...] = arr * 2
    again = ZarrDenseSource(str(tmp_path / "x.zarr"), array="", transposed=transposed).reblock(30)
    np.testing.assert_array_equal(again.read_block(1), 2 * X[:, 30:60])
    assert len(decoded) == before + 1
