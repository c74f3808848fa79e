"""Exact medians of vectors too long to hold, read chunk by chunk.

``np.median`` sorts (partitions) a copy of the whole vector: for a per-sample figure of 10⁷
samples that is 80 MB and its copy. :func:`chunked_median` finds the same value from a
vector kept in storage by radix selection on the bits of the float64 values: every pass
reads the chunks once and keeps a histogram of 2⁸ counts (per rank sought), and eight
passes pin down the element of a given rank exactly, so memory is one chunk and a few
kilobytes whatever the length (wider digits would save passes but cost megabytes of
histograms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

_SIGN = np.uint64(1 << 63)
_BITS = 8
_PASSES = 64 // _BITS


def _keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys that sort as the float64 ``values`` do (the usual sign-flip mapping)."""
    u = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(u & _SIGN, ~u, u | _SIGN)


def _value(key: int) -> float:
    """The float64 whose key is ``key`` (the inverse of ``_keys``)."""
    k = np.uint64(key)
    u = k & ~_SIGN if k & _SIGN else ~k
    return float(np.array([u], dtype=np.uint64).view(np.float64)[0])


def _select(chunks: Callable[[], Iterable[np.ndarray]], ranks: list[int]) -> list[float]:
    """The elements of 0-based ``ranks`` among the values the chunks yield (all finite).

    Eight passes over the chunks whatever the number of ranks: each pass keeps, for every
    rank, a histogram of the next 8 bits of the keys that share the bits found so far.
    """
    prefixes = [0] * len(ranks)
    left = list(ranks)
    mask = np.uint64((1 << _BITS) - 1)
    for p in range(_PASSES):
        shift = np.uint64(64 - _BITS * (p + 1))
        counts = [np.zeros(1 << _BITS, dtype=np.int64) for _ in ranks]
        for chunk in chunks():
            keys = _keys(chunk)
            high = keys >> np.uint64(int(shift) + _BITS) if p else None
            digits = ((keys >> shift) & mask).astype(np.int64)
            seen: dict[int, np.ndarray] = {}
            for i, prefix in enumerate(prefixes):
                if prefix not in seen:
                    # Only the keys that share the digits found so far are still candidates.
                    part = digits if high is None else digits[high == np.uint64(prefix)]
                    seen[prefix] = np.bincount(part, minlength=1 << _BITS)
                counts[i] += seen[prefix]
        for i in range(len(ranks)):
            below = np.cumsum(counts[i])
            digit = int(np.searchsorted(below, left[i], side="right"))
            left[i] -= int(below[digit - 1]) if digit else 0
            prefixes[i] = (prefixes[i] << _BITS) | digit
    return [_value(prefix) for prefix in prefixes]


def chunked_median(chunks: Callable[[], Iterable[np.ndarray]]) -> float:
    """``np.median`` of the finite values of a vector given as chunks, bit for bit.

    Parameters
    ----------
    chunks : callable
        Each call returns a fresh iterable of 1-D float arrays (the vector in order, or in
        any order: the median does not depend on it). It is called nine times.

    Returns
    -------
    float
        The median of the finite values (the mean of the two middle ones for an even
        count, as ``np.median``); NaN when there are none.
    """

    def finite() -> Iterable[np.ndarray]:
        for chunk in chunks():
            c = np.asarray(chunk, dtype=np.float64).ravel()
            yield c[np.isfinite(c)]

    count = sum(int(c.size) for c in finite())
    if count == 0:
        return float("nan")
    if count % 2:
        return _select(finite, [count // 2])[0]
    lo, hi = _select(finite, [count // 2 - 1, count // 2])
    # As np.median: the mean of the two middle values, (a + b) / 2 in float64.
    return float(np.mean(np.array([lo, hi], dtype=np.float64)))
