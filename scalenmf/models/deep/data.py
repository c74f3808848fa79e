"""Column-block ("shard") data loading for DNMF training.

The matrix is read by column blocks from whatever :func:`scalenmf.io.open_matrix` opens (a
Zarr store, a numpy array, a scipy.sparse matrix). Each epoch the blocks are shuffled with a
seed shared by all processes and dealt round-robin to the ``world_size × num_workers``
readers, so every DataLoader worker of every rank reads its own blocks and the readers
together read every column exactly once. Within a block the columns are shuffled and cut
into mini-batches; sparse blocks are densified one mini-batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scalenmf.io import InputError, MatrixSource, open_matrix


class Batch(NamedTuple):
    """One mini-batch of columns.

    Attributes
    ----------
    V : Tensor, shape (m, b)
    H : Tensor, shape (k, b) or (0, b)
        Known coefficients (supervised) or an empty tensor.
    cols : Tensor, shape (b,), int64
        Global column indices of the batch.
    """

    V: torch.Tensor
    H: torch.Tensor
    cols: torch.Tensor


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its tensors on ``device`` (the same object when they are there).

    From pinned memory the copies are asynchronous (``non_blocking``); the kernels that
    read the tensors are queued on the same stream, so they see the copied values.
    """
    if batch.V.device == device:
        return batch
    return Batch(
        batch.V.to(device, non_blocking=True),
        batch.H.to(device, non_blocking=True),
        batch.cols.to(device, non_blocking=True),
    )


def open_source(obj: Any, block_cols: int | None = None) -> MatrixSource:
    """Open ``obj`` (path, array, sparse matrix or an already opened source) for block reads.

    A thin wrapper over :func:`scalenmf.io.open_matrix`.

    Returns
    -------
    MatrixSource
    """
    return open_matrix(obj, block_cols=block_cols)


def check_block(block: Any, where: str) -> None:
    """Raise ``InputError`` (a ``ValueError``) naming the columns if a block has NaN, inf
    or negative entries."""
    data = block.data if sp.issparse(block) else np.asarray(block)
    if data.size == 0:
        return
    if not np.all(np.isfinite(data)):
        raise InputError(f"input has NaN or infinite values in {where}")
    if data.min() < 0:
        raise InputError(f"input has negative values in {where}; DNMF needs non-negative data")


def dense_columns(block: Any, idx: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """Columns ``idx`` of a dense or sparse block as a dense C-contiguous array."""
    if idx is not None:
        block = block[:, idx]
    if sp.issparse(block):
        block = block.toarray()
    return np.ascontiguousarray(block, dtype=dtype)


@dataclass(frozen=True)
class ShardPlan:
    """Which blocks one reader (rank, worker) handles in one epoch."""

    blocks: tuple[int, ...]


def plan_shards(
    n_blocks: int, epoch: int, seed: int, shuffle: bool, reader: int, n_readers: int
) -> ShardPlan:
    """Blocks of ``reader`` (``rank * num_workers + worker``) among ``n_readers`` readers.

    The block permutation depends only on ``(seed, epoch)``, so every process computes the
    same one and the readers' shares are disjoint and cover all blocks.
    """
    order = np.arange(n_blocks)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n_blocks)
    return ShardPlan(tuple(int(b) for b in order[reader::n_readers]))


class ColumnShardDataset(IterableDataset):
    """Mini-batches of columns streamed from column blocks.

    Parameters
    ----------
    V : path, array (m, n), sparse matrix or MatrixSource
        The data, features × samples.
    H : path, array (k, n) or None
        Known coefficients for supervised training, read for the same columns.
    batch_size : int or None
        Columns per mini-batch for this process; ``None`` yields each block whole.
    block_cols : int, optional
        Block width when ``V`` is in memory (stores keep their own chunking).
    shuffle : bool
        Shuffle blocks and the columns inside each block every epoch.
    seed : int
    rank, world_size : int
        This process and the number of data-parallel processes.
    dtype : numpy dtype
        Dtype of the yielded tensors.
    validate : bool
        Check every block for NaN / negative values as it is read.
    """

    def __init__(
        self,
        V: Any,
        H: Any = None,
        *,
        batch_size: int | None = None,
        block_cols: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        dtype: Any = np.float32,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.V_obj, self.H_obj = V, H
        self.block_cols = block_cols
        self.batch_size = batch_size
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.dtype = np.dtype(dtype)
        self.validate = validate
        self.epoch = 0
        src = open_source(V, block_cols)
        self.shape: tuple[int, int] = tuple(src.shape)  # type: ignore[assignment]
        self.block_bounds: list[tuple[int, int]] = [tuple(b) for b in src.block_bounds]  # type: ignore[misc]
        self.n_components = 0
        if H is not None:
            hsrc = self._open_h()
            self.n_components = int(hsrc.shape[0])
            if hsrc.shape[1] != self.shape[1]:
                raise ValueError(
                    f"H has {hsrc.shape[1]} columns but V has {self.shape[1]}; "
                    "they must describe the same samples"
                )
        # The opened sources are cached per process (they are not sent to workers).
        self._src: Any = None
        self._hsrc: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_src"] = state["_hsrc"] = None
        return state

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle the next iteration follows."""
        self.epoch = epoch

    def _open_h(self) -> MatrixSource:
        return open_source(self.H_obj)

    def _sources(self) -> tuple[Any, Any]:
        if self._src is None:
            self._src = open_source(self.V_obj, self.block_cols)
            if self.H_obj is not None:
                self._hsrc = self._open_h()
        return self._src, self._hsrc

    def reader_blocks(self, worker: int = 0, n_workers: int = 1) -> tuple[int, ...]:
        """Blocks read this epoch by DataLoader worker ``worker`` of this rank."""
        reader = self.rank * n_workers + worker
        plan = plan_shards(
            len(self.block_bounds),
            self.epoch,
            self.seed,
            self.shuffle,
            reader,
            self.world_size * n_workers,
        )
        return plan.blocks

    def read_h_columns(self, start: int, stop: int) -> np.ndarray:
        """Known coefficients for columns ``start:stop``, shape (k, stop - start)."""
        _, hsrc = self._sources()
        return dense_columns(hsrc.read_columns(start, stop), None, self.dtype)

    def iter_block(self, j: int) -> Iterator[Batch]:
        """Mini-batches of block ``j`` (shuffled within the block when asked)."""
        src, _ = self._sources()
        a, b = self.block_bounds[j]
        block = src.read_block(j)
        if self.validate:
            check_block(block, f"columns {a}:{b}")
        H_block = self.read_h_columns(a, b) if self.H_obj is not None else None
        if H_block is not None and self.validate:
            check_block(H_block, f"H columns {a}:{b}")
        width = b - a
        order = np.arange(width)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, j]).permutation(width)
        size = width if not self.batch_size else self.batch_size
        for s in range(0, width, max(size, 1)):
            idx = np.sort(order[s : s + size])
            Vb = torch.from_numpy(dense_columns(block, idx, self.dtype))
            if H_block is not None:
                Hb = torch.from_numpy(np.ascontiguousarray(H_block[:, idx]))
            else:
                Hb = torch.empty((0, len(idx)), dtype=Vb.dtype)
            yield Batch(Vb, Hb, torch.from_numpy(idx + a))

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for j in self.reader_blocks(worker, n_workers):
            yield from self.iter_block(j)


def make_loader(
    dataset: ColumnShardDataset, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over already batched items (``batch_size=None``) with worker processes.

    Parameters
    ----------
    dataset : ColumnShardDataset
    num_workers : int
        Reader processes; 0 reads in this process.
    pin_memory : bool
        Yield batches in page-locked memory (training on a GPU: faster, asynchronous
        host-to-device copies).
    """
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
        multiprocessing_context=_reader_context() if num_workers > 0 else None,
    )


def _reader_context() -> Any:
    """Fork reader processes on Linux, whatever this process's default start method.

    A ``--nproc`` rank is itself started by ``spawn``, which makes spawn its default: every
    epoch's readers would then re-import torch and scalenmf (measured: 27 s per epoch for
    two ranks on a busy 2-core machine, against well under a second with fork). Readers
    only decode blocks, so forking is safe; elsewhere keep the platform's default.
    """
    import multiprocessing as mp
    import sys

    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return None


def load_all(dataset: ColumnShardDataset) -> Batch:
    """Read this rank's whole share of the data into one resident batch (full-batch mode)."""
    parts = [batch for j in dataset.reader_blocks() for batch in dataset.iter_block(j)]
    if not parts:
        m = dataset.shape[0]
        empty = torch.empty((m, 0), dtype=torch.from_numpy(np.zeros(0, dataset.dtype)).dtype)
        return Batch(empty, empty[:0], torch.empty(0, dtype=torch.int64))
    V = torch.cat([p.V for p in parts], dim=1)
    H = torch.cat([p.H for p in parts], dim=1)
    cols = torch.cat([p.cols for p in parts])
    order = torch.argsort(cols)
    return Batch(V[:, order].contiguous(), H[:, order].contiguous(), cols[order])
