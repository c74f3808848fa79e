"""Column-shard loading: coverage per epoch, sharding across ranks and workers, sparse/Zarr."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from scalenmf.io import write_matrix  # noqa: E402
from scalenmf.models.deep.data import (  # noqa: E402
    ColumnShardDataset,
    load_all,
    make_loader,
    plan_shards,
)


def _matrix(m: int = 7, n: int = 103, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, (m, n)).astype(np.float64)
    X[0] = np.arange(n)  # row 0 names the column, so batches can be traced back
    return X


def _epoch_columns(ds: ColumnShardDataset, workers: int) -> list[int]:
    cols: list[int] = []
    for batch in make_loader(ds, workers):
        # every batch's data must be the columns it claims to be
        np.testing.assert_array_equal(batch.V[0].numpy(), batch.cols.numpy())
        assert batch.V.shape[1] <= 4
        cols += batch.cols.tolist()
    return cols


@pytest.mark.parametrize("workers", [0, 2])
def test_readers_together_read_every_column_once_per_epoch(workers):
    X = _matrix()
    for epoch in range(2):
        seen: list[int] = []
        for rank in range(2):
            ds = ColumnShardDataset(
                X,
                batch_size=4,
                block_cols=10,
                shuffle=True,
                seed=3,
                rank=rank,
                world_size=2,
                dtype=np.float64,
            )
            ds.set_epoch(epoch)
            cols = _epoch_columns(ds, workers)
            seen += cols
        assert sorted(seen) == list(range(X.shape[1]))


def test_worker_processes_read_disjoint_blocks():
    X = _matrix()
    ds = ColumnShardDataset(X, batch_size=5, block_cols=10, seed=1, dtype=np.float64)
    shares = [set(ds.reader_blocks(w, 3)) for w in range(3)]
    assert set().union(*shares) == set(range(ds_n_blocks(ds)))
    assert sum(len(s) for s in shares) == ds_n_blocks(ds)
    # the batches really come from worker processes: the main process reads nothing
    ds2 = ColumnShardDataset(X, batch_size=5, block_cols=10, seed=1, dtype=np.float64)
    assert sorted(c for b in make_loader(ds2, 2) for c in b.cols.tolist()) == list(range(103))
    assert ds2._src is None  # the parent never opened the source; the workers did


def ds_n_blocks(ds: ColumnShardDataset) -> int:
    return len(ds.block_bounds)


def test_shard_plan_depends_on_epoch_and_partitions():
    a = [plan_shards(11, 0, 5, True, r, 4).blocks for r in range(4)]
    b = [plan_shards(11, 1, 5, True, r, 4).blocks for r in range(4)]
    assert sorted(x for s in a for x in s) == list(range(11))
    assert a != b


def test_sparse_and_zarr_inputs_give_the_same_batches(tmp_path):
    X = _matrix(n=40)
    X[2:, ::3] = 0
    store = tmp_path / "x.zarr"
    write_matrix(store, X, block_cols=8)
    full = [
        load_all(ColumnShardDataset(obj, block_cols=8, dtype=np.float64)).V
        for obj in (X, sp.csc_matrix(X), str(store))
    ]
    for V in full[1:]:
        torch.testing.assert_close(V, full[0])
    torch.testing.assert_close(full[0], torch.from_numpy(X))


def test_known_h_travels_with_its_columns():
    X = _matrix(n=30)
    H = np.vstack([np.arange(30.0), np.arange(30.0) * 2])
    ds = ColumnShardDataset(X, H, batch_size=4, block_cols=7, seed=2, dtype=np.float64)
    for batch in make_loader(ds, 0):
        np.testing.assert_array_equal(batch.H[0].numpy(), batch.cols.numpy())


@pytest.mark.parametrize("bad", ["neg", "nan"])
def test_bad_blocks_are_reported_with_their_columns(bad):
    X = _matrix(n=30)
    X[3, 17] = -1.0 if bad == "neg" else np.nan
    ds = ColumnShardDataset(X, batch_size=4, block_cols=10, shuffle=False, dtype=np.float64)
    with pytest.raises(ValueError, match="columns 10:20"):
        list(make_loader(ds, 0))
