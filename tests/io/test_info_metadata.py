"""``scalenmf info`` from a store's metadata (json, no zarr) says what zarr's road says.

Every store is described twice: by ``describe`` (which reads a local Zarr v3 store's
``zarr.json`` files itself) and by ``describe`` with that reader switched off (the store
opened with zarr, the reference). Both dicts and both printed descriptions must be equal;
a damaged store must give the same error either way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import scalenmf
from scalenmf.io import InputError, write_matrix, zarr_json
from scalenmf.io import info as info_mod
from scalenmf.io.info import describe, format_description


def _by_zarr(path: Path, monkeypatch: pytest.MonkeyPatch):
    """``describe(path)`` with the metadata reader switched off (zarr opens the store)."""

    def refuse(p: Path):
        raise zarr_json.Unsupported("switched off for the reference")

    with monkeypatch.context() as m:
        m.setattr(info_mod, "_from_metadata", refuse)
        return describe(path)


def _outcome(path: Path, monkeypatch: pytest.MonkeyPatch, reference: bool):
    try:
        d = _by_zarr(path, monkeypatch) if reference else describe(path)
    except Exception as exc:
        return type(exc), str(exc)
    return d, format_description(d)


def _dense_store(d: Path) -> Path:
    X = np.arange(12 * 50, dtype=np.float32).reshape(12, 50)
    rows = [f"gene{i}" for i in range(12)]
    return Path(write_matrix(d / "dense.zarr", X, row_labels=rows, block_cols=7))


def _sparse_store(d: Path) -> Path:
    # More columns than one label chunk (65,536), so the column labels span two chunks.
    n = 70_000
    X = sp.random(30, n, density=0.001, format="csc", random_state=3)
    cols = [f"cell-{j}" for j in range(n)]
    return Path(write_matrix(d / "sparse.zarr", X, col_labels=cols, block_cols=9000))


def _counts_store(d: Path) -> Path:
    X = sp.random(40, 300, density=0.05, format="csc", random_state=4)
    X.data = np.ceil(X.data * 9).astype(np.int32)
    rows = [f"g{i}" for i in range(40)]
    cols = [f"c{j}" for j in range(300)]
    return Path(write_matrix(d / "counts.zarr", X, row_labels=rows, col_labels=cols))


def _bare_array(d: Path) -> Path:
    arr = zarr.create_array(str(d / "bare.zarr"), shape=(6, 20), chunks=(6, 5), dtype="i4")
    arr[...] = np.arange(120, dtype=np.int32).reshape(6, 20)
    return d / "bare.zarr"


def _result_store(d: Path) -> Path:
    X = np.random.default_rng(0).random((15, 25)) + 0.1
    labelled = write_matrix(d / "for-result.zarr", X, row_labels=[f"r{i}" for i in range(15)])
    res = scalenmf.nmf(labelled, 2, max_iter=5, tol=0)
    return Path(res.save(d / "result.zarr"))


def _linked_store(d: Path) -> Path:
    rng = np.random.default_rng(1)
    A, B = rng.random((10, 12)) + 0.1, rng.random((10, 8)) + 0.1
    return Path(scalenmf.lnmf([A, B], 2, 1, max_iter=5, tol=0).save(d / "linked.zarr"))


STORES = {
    "dense": _dense_store,
    "sparse": _sparse_store,
    "integer counts": _counts_store,
    "bare array": _bare_array,
    "result": _result_store,
    "linked result": _linked_store,
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stores")
    return {name: make(d) for name, make in STORES.items()}


@pytest.mark.parametrize("name", list(STORES))
def test_metadata_and_zarr_describe_a_store_alike(stores, name, monkeypatch):
    path = stores[name]
    fast = info_mod._from_metadata(path)  # described without falling back
    assert fast == describe(path)
    assert fast == _by_zarr(path, monkeypatch)
    assert format_description(fast) == format_description(_by_zarr(path, monkeypatch))


def test_the_metadata_reader_reads_labels_across_chunks(stores):
    d = describe(stores["sparse"])
    assert d["has_col_labels"] and d["first_col_labels"] == [f"cell-{j}" for j in range(5)]
    labels = zarr_json.read_1d(
        zarr_json.array_meta(
            stores["sparse"] / "col_labels",
            zarr_json.read_node(stores["sparse"] / "col_labels"),
        )
    )
    assert labels.shape == (70_000,) and labels[-1] == "cell-69999"
    assert labels[65_536] == "cell-65536"


def _copy(stores: dict[str, Path], name: str, tmp_path: Path) -> Path:
    out = tmp_path / stores[name].name
    shutil.copytree(stores[name], out)
    return out


def _garble(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 3)


DAMAGE = {
    "root metadata not JSON": ("dense", lambda p: (p / "zarr.json").write_text("{not json")),
    "X metadata missing": ("dense", lambda p: (p / "X" / "zarr.json").unlink()),
    "X metadata not JSON": ("sparse", lambda p: (p / "X" / "zarr.json").write_text("[")),
    "a chunk of X missing": ("dense", lambda p: (p / "X" / "c" / "0" / "3").unlink()),
    "indptr chunk missing": ("sparse", lambda p: (p / "X" / "indptr" / "c" / "0").unlink()),
    "indptr chunk corrupt": ("sparse", lambda p: _garble(p / "X" / "indptr" / "c" / "0")),
    "data chunk missing": ("counts", lambda p: (p / "X" / "data" / "c" / "0").unlink()),
    "labels chunk corrupt": ("sparse", lambda p: _garble(p / "col_labels" / "c" / "1")),
    "result W metadata corrupt": ("result", lambda p: (p / "W" / "zarr.json").write_text("{")),
    "no X": ("dense", lambda p: shutil.rmtree(p / "X")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_gives_the_same_error_either_way(stores, damage, tmp_path, monkeypatch):
    name, spoil = DAMAGE[damage]
    path = _copy(stores, "integer counts" if name == "counts" else name, tmp_path)
    spoil(path)
    fast = _outcome(path, monkeypatch, reference=False)
    reference = _outcome(path, monkeypatch, reference=True)
    assert fast == reference
    kind, message = fast
    assert isinstance(kind, type) and issubclass(kind, Exception), fast
    assert str(path) in message or "W" in message, message


def test_a_labels_folder_without_metadata_is_read_as_zarr_reads_it(stores, tmp_path, monkeypatch):
    """Zarr v3 sees no member where a folder has no ``zarr.json``: the metadata reader
    does not guess, so both say the same (no row labels)."""
    path = _copy(stores, "integer counts", tmp_path)
    (path / "row_labels" / "zarr.json").unlink()
    fast = _outcome(path, monkeypatch, reference=False)
    assert fast == _outcome(path, monkeypatch, reference=True)
    assert isinstance(fast[0], dict) and not fast[0]["has_row_labels"]


def test_a_store_the_reader_does_not_know_is_described_by_zarr(tmp_path, monkeypatch):
    """A Zarr v2 store and a v3 one with a codec this reader does not decode (crc32c)."""
    v2 = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    v2.attrs["scalenmf"] = {"kind": "matrix", "format_version": 1}
    v2.create_array("X", shape=(3, 4), chunks=(3, 2), dtype="f8")[...] = np.ones((3, 4))
    odd = tmp_path / "crc.zarr"
    shutil.copytree(_dense_store(tmp_path), odd)
    meta = json.loads((odd / "X" / "zarr.json").read_text())
    # Describing a dense X decodes no chunk, so zarr reads this metadata as it is.
    meta["codecs"].append({"name": "crc32c"})
    (odd / "X" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(zarr_json.Unsupported):
        info_mod._from_metadata(odd)
    for path in (tmp_path / "v2.zarr", odd):
        assert describe(path) == _by_zarr(path, monkeypatch)
    assert describe(tmp_path / "v2.zarr")["shape"] == [3, 4]


def test_labels_of_the_wrong_length_are_refused_either_way(stores, tmp_path, monkeypatch):
    path = _copy(stores, "dense", tmp_path)
    shutil.rmtree(path / "row_labels")
    g = zarr.open_group(str(path), mode="a")
    g.create_array("row_labels", shape=(3,), dtype=str, chunks=(3,))[:] = np.array(["a", "b", "c"])
    with pytest.raises(InputError, match="row labels have length 3, expected 12"):
        describe(path)
    assert _outcome(path, monkeypatch, False) == _outcome(path, monkeypatch, True)
