"""Column-block planning: how many samples go in one block, from sizes and a memory budget."""

from __future__ import annotations

import itertools

import numpy as np

#: Decoded bytes of one block when nothing else constrains it. Large enough that BLAS runs
#: at full speed, small enough that a few blocks in flight fit any laptop.
DEFAULT_BLOCK_BYTES = 32 * 2**20
#: Blocks narrower than this waste time in per-block overhead.
MIN_BLOCK_COLS = 64
#: X is spread over several blocks (one per thread or worker) only when each of them
#: still holds at least this many stored values. A smaller block step takes tens of
#: microseconds, less than handing it to a thread and back, so the local executor runs
#: such blocks one after another anyway; split, they only add a step, a partial and a
#: reduction per iteration (a 96 × 560 fit in two blocks ran 1.6× slower than in one).
#: Measured in benchmarks/bench_small.py: the crossover on 2–16 cores is near 2¹⁷ values.
MIN_SPREAD_VALUES = 1 << 17


def plan_block_cols(
    m: int,
    n: int,
    itemsize: int,
    *,
    density: float = 1.0,
    target_bytes: int = DEFAULT_BLOCK_BYTES,
    min_blocks: int = 1,
) -> int:
    """Number of columns per block.

    Parameters
    ----------
    m, n : int
        Shape of X.
    itemsize : int
        Bytes per stored value (sparse: value + index, about itemsize + 4).
    density : float
        Fraction of non-zeros (1 for dense).
    target_bytes : int
        Aim for blocks of about this many decoded bytes.
    min_blocks : int
        Ask for at least this many blocks (to keep that many threads or workers busy) when
        that leaves each block at least ``MIN_BLOCK_COLS`` wide and ``MIN_SPREAD_VALUES``
        stored values large.
    """
    if n <= 0:
        return 1
    col_bytes = max(1.0, m * itemsize * max(density, 1e-9))
    cols = max(1, int(target_bytes // col_bytes))
    if min_blocks > 1:
        spread = -(-n // min_blocks)
        values = spread * m * max(density, 1e-9)
        if spread >= MIN_BLOCK_COLS and values >= MIN_SPREAD_VALUES:
            cols = min(cols, spread)
    return int(min(cols, n))


def bounds_from_cols(n: int, block_cols: int) -> list[tuple[int, int]]:
    """Regular column ranges ``[(0, b), (b, 2b), ...]`` covering ``0..n``."""
    if block_cols <= 0:
        raise ValueError(f"block_cols must be positive, got {block_cols}")
    return [(a, min(a + block_cols, n)) for a in range(0, n, block_cols)] or [(0, 0)]


def bounds_from_sizes(sizes: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
    """Column ranges from a list of block widths (irregular blocking)."""
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def align_bounds(chunk: int, n: int, block_cols: int) -> list[tuple[int, int]]:
    """Column ranges made of whole storage chunks of width ``chunk``, about ``block_cols`` wide."""
    per = max(1, round(block_cols / chunk))
    return bounds_from_cols(n, per * chunk)


def bounds_by_nnz(indptr: np.ndarray, target_nnz: int) -> list[tuple[int, int]]:
    """Column ranges of a CSC matrix holding about ``target_nnz`` non-zeros each."""
    n = len(indptr) - 1
    if n <= 0:
        return [(0, 0)]
    target_nnz = max(1, int(target_nnz))
    cuts = [0]
    while cuts[-1] < n:
        start = cuts[-1]
        want = indptr[start] + target_nnz
        stop = int(np.searchsorted(indptr, want, side="right")) - 1
        cuts.append(min(n, max(stop, start + 1)))
    return [(a, b) for a, b in itertools.pairwise(cuts)]
