"""Deterministic tree reduction of per-block partial sums.

Both executors merge block partials in exactly the same pairing, so they produce the same
floating-point sums (not merely close ones). The pairing is that of a binary counter over
the blocks in order: push each block's partial; while the two newest entries cover equally
many blocks, merge them; at the end merge what is left from the newest down. Locally this
needs only O(log n_blocks) partials in memory; on Dask it is a tree of depth O(log n_blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


def add_partials(a: Any, b: Any) -> Any:
    """Sum two partial-statistics structures (nested dicts / lists / arrays / numbers).

    Dicts are summed key by key over the union of their keys, a key missing on one side
    counting as zero: blocks may contribute to different entries (blocks of different
    datasets, or correction terms that only blocks with hidden entries have). The result
    lists ``a``'s keys first, then ``b``'s others, so a fixed pairing gives a fixed order.
    """
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict):
        keys = list(a) + [key for key in b if key not in a]
        return {key: add_partials(a.get(key), b.get(key)) for key in keys}
    if isinstance(a, (list, tuple)):
        return type(a)(add_partials(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return a + b
    return a + b


class TreeReducer(Generic[T]):
    """Merge items pushed in block order with a fixed binary-counter pairing.

    Parameters
    ----------
    merge : callable (T, T) -> T
        Combines two adjacent partials (left, right). It may return a future; the reducer
        never looks inside.
    """

    def __init__(self, merge: Callable[[T, T], T]):
        self._merge = merge
        self._stack: list[tuple[int, T]] = []

    def push(self, item: T) -> None:
        size = 1
        while self._stack and self._stack[-1][0] == size:
            left_size, left = self._stack.pop()
            item = self._merge(left, item)
            size += left_size
        self._stack.append((size, item))

    def result(self) -> T:
        if not self._stack:
            raise ValueError("nothing to reduce")
        size, item = self._stack.pop()
        while self._stack:
            left_size, left = self._stack.pop()
            item = self._merge(left, item)
            size += left_size
        return item
