"""Sources built from other sources: several datasets side by side, and rows put in order.

``ChainedSource`` places K datasets (same features, their own samples) next to each other
as one column-blocked matrix ``[A_1 | A_2 | … | A_K]``. Its blocks are the blocks of the
datasets, offset, so no block ever straddles two datasets: a block step can always tell
which dataset it works on. ``RowOrderedSource`` reads another source with its rows taken in
a given order (aligning features by label). Both pickle by their parts, so Dask workers
read their own blocks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.io.errors import InputError
from scalenmf.io.planning import MIN_BLOCK_COLS
from scalenmf.io.source import Bounds, MatrixSource, as_str_array, normalize_bounds

log = logging.getLogger(__name__)

#: How many mismatching labels an error message lists.
N_SHOWN = 3


def row_order(
    labels: np.ndarray | None,
    reference: np.ndarray | None,
    m_reference: int,
    *,
    what: str = "the data",
    drop_extra: bool = False,
) -> np.ndarray | None:
    """Row indices that put ``labels`` in the order of ``reference`` (None: already there).

    Parameters
    ----------
    labels : ndarray of str or None
        Feature labels of the data to align.
    reference : ndarray of str or None
        Feature labels in the wanted order.
    m_reference : int
        Number of features wanted.
    drop_extra : bool
        Features of the data absent from ``reference`` are dropped instead of refused.

    Raises
    ------
    InputError
        Unlabelled data of another length; labels that are duplicated, missing or extra.
    """
    if labels is None or reference is None:
        # Nothing to align by: the caller checks that the lengths agree.
        if labels is not None and reference is None and labels.shape[0] != m_reference:
            raise InputError(
                f"{what} has {labels.shape[0]} features but the reference has {m_reference} "
                "and no feature labels to align them by"
            )
        return None
    labels = as_str_array(labels)
    reference = as_str_array(reference)
    _no_duplicates(labels, what)
    _no_duplicates(reference, "the reference")
    index = {str(label): i for i, label in enumerate(labels)}
    missing = [str(r) for r in reference if str(r) not in index]
    if missing:
        raise InputError(
            f"{len(missing)} of {reference.shape[0]} features are missing from {what} "
            f"(first: {', '.join(missing[:N_SHOWN])})"
        )
    known = set(map(str, reference))
    extra = [str(x) for x in labels if str(x) not in known]
    if extra and not drop_extra:
        raise InputError(
            f"{what} has {len(extra)} features the reference does not know "
            f"(first: {', '.join(extra[:N_SHOWN])}); drop them first or pass drop_extra_features"
        )
    order = np.array([index[str(r)] for r in reference], dtype=np.int64)
    if order.shape[0] == labels.shape[0] and np.array_equal(order, np.arange(order.shape[0])):
        return None
    return order


def _no_duplicates(labels: np.ndarray, what: str) -> None:
    uniq, counts = np.unique(labels, return_counts=True)
    if uniq.shape[0] != labels.shape[0]:
        dup = [str(x) for x in uniq[counts > 1][:N_SHOWN]]
        raise InputError(f"feature labels of {what} are not unique (e.g. {', '.join(dup)})")


class RowOrderedSource(MatrixSource):
    """Another source read with its rows in the order ``rows`` (a selection or permutation)."""

    def __init__(self, source: MatrixSource, rows: np.ndarray):
        super().__init__()
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= source.shape[0])):
            raise ValueError("rows must be indices into the source's rows")
        self._source = source
        self._rows = rows
        self.shape = (int(rows.shape[0]), int(source.shape[1]))
        self.dtype = source.dtype
        self.is_sparse = source.is_sparse
        self.block_bounds = list(source.block_bounds)
        labels = source.row_labels
        self.set_labels(labels[rows] if labels is not None else None, source.col_labels)

    @property
    def in_memory(self) -> bool:
        return self._source.in_memory

    @property
    def nnz(self) -> int:
        if not self.is_sparse:
            return super().nnz
        # An estimate: the selected share of the rows (exact for a permutation).
        return int(self._source.nnz * self.shape[0] / max(1, self._source.shape[0]))

    def _read(self, start: int, stop: int) -> Block:
        block = self._source.read_columns(start, stop)
        if sp.issparse(block):
            return sp.csc_matrix(sp.csr_matrix(block)[self._rows])
        return np.asarray(block)[self._rows]


class ChainedSource(MatrixSource):
    """K sources with the same features side by side: ``[A_1 | … | A_K]``.

    Parameters
    ----------
    sources : sequence of MatrixSource
        The datasets, each features × its samples. All must have the same number of
        features; when every one has feature labels, rows are aligned to the first
        dataset's order by label.
    names : sequence of str, optional
        Dataset names (default ``dataset_1`` …).

    Attributes
    ----------
    dataset_bounds : list of (int, int)
        Column range of each dataset in the chained matrix.
    block_dataset : list of int
        The dataset of every block (blocks never straddle two datasets).
    """

    def __init__(self, sources: Sequence[MatrixSource], names: Sequence[str] | None = None):
        super().__init__()
        sources = list(sources)
        if not sources:
            raise InputError("no datasets given")
        self.names = _dataset_names(names, len(sources))
        first = sources[0]
        m = first.shape[0]
        aligned = []
        for name, src in zip(self.names, sources, strict=True):
            if src.shape[1] == 0:
                raise InputError(f"dataset {name!r} has no samples")
            order = row_order(
                src.row_labels if first.row_labels is not None else None,
                first.row_labels,
                m,
                what=f"dataset {name!r}",
            )
            if order is None and src.shape[0] != m:
                raise InputError(
                    f"dataset {name!r} has {src.shape[0]} features, dataset "
                    f"{self.names[0]!r} has {m}"
                )
            if order is not None:
                log.info("dataset %s: rows reordered to the first dataset's labels", name)
                src = RowOrderedSource(src, order)
            aligned.append(src)
        self._sources = aligned
        self.is_sparse = all(s.is_sparse for s in aligned)
        self.dtype = np.result_type(*[np.dtype(s.dtype) for s in aligned])
        widths = [s.shape[1] for s in aligned]
        self.shape = (int(m), int(sum(widths)))
        offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        self.dataset_bounds = [(int(a), int(b)) for a, b in itertools.pairwise(offsets)]
        self._set_bounds([_merge_tiny_tail(list(s.block_bounds)) for s in aligned])
        cols = [s.col_labels for s in aligned]
        col_labels = None
        if all(c is not None for c in cols):
            col_labels = np.concatenate([as_str_array(c) for c in cols])
        self.set_labels(first.row_labels, col_labels)

    # -- blocking ------------------------------------------------------------------------
    def _set_bounds(self, per_dataset: list[Bounds]) -> None:
        bounds: Bounds = []
        owner: list[int] = []
        for d, (off, _) in enumerate(self.dataset_bounds):
            for a, b in per_dataset[d]:
                bounds.append((off + a, off + b))
                owner.append(d)
        self.block_bounds = bounds
        self.block_dataset = owner

    def reblock(self, block_bounds: Bounds | int | Sequence[int]) -> ChainedSource:
        """Another blocking; an int re-blocks every dataset, explicit ranges must not straddle."""
        clone = self._clone()
        assert isinstance(clone, ChainedSource)
        if isinstance(block_bounds, (int, np.integer)):
            clone._set_bounds(
                [normalize_bounds(int(block_bounds), s.shape[1]) for s in self._sources]
            )
            return clone
        bounds = normalize_bounds(block_bounds, self.shape[1])
        per: list[Bounds] = [[] for _ in self._sources]
        for a, b in bounds:
            d = self.dataset_of_column(a)
            lo, hi = self.dataset_bounds[d]
            if b > hi:
                raise ValueError(
                    f"block {a}:{b} straddles datasets {self.names[d]!r} and "
                    f"{self.names[d + 1]!r} (boundary at column {hi})"
                )
            per[d].append((a - lo, b - lo))
        clone._set_bounds(per)
        return clone

    def dataset_of_column(self, col: int) -> int:
        for d, (a, b) in enumerate(self.dataset_bounds):
            if a <= col < b:
                return d
        raise IndexError(f"column {col} outside 0..{self.shape[1]}")

    # -- reading -------------------------------------------------------------------------
    @property
    def datasets(self) -> list[MatrixSource]:
        return list(self._sources)

    @property
    def n_datasets(self) -> int:
        return len(self._sources)

    @property
    def in_memory(self) -> bool:
        return all(s.in_memory for s in self._sources)

    @property
    def nnz(self) -> int:
        return int(sum(s.nnz for s in self._sources))

    def _piece(self, d: int, start: int, stop: int) -> Block:
        lo, _ = self.dataset_bounds[d]
        block = self._sources[d].read_columns(start - lo, stop - lo)
        if self.is_sparse:
            return sp.csc_matrix(block, dtype=self.dtype)
        dense = sp.csc_matrix(block).toarray() if sp.issparse(block) else np.asarray(block)
        return dense if dense.dtype == self.dtype else dense.astype(self.dtype)

    def _read(self, start: int, stop: int) -> Block:
        pieces = []
        for d, (a, b) in enumerate(self.dataset_bounds):
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                pieces.append(self._piece(d, lo, hi))
        if len(pieces) == 1:
            return pieces[0]
        if self.is_sparse:
            return sp.hstack(pieces, format="csc")
        return np.hstack(pieces)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["datasets"] = [
            {"name": name, "columns": [a, b]}
            for name, (a, b) in zip(self.names, self.dataset_bounds, strict=True)
        ]
        return out


def _merge_tiny_tail(bounds: Bounds) -> Bounds:
    """Fold a last block narrower than ``MIN_BLOCK_COLS`` into the one before it.

    Planned blockings can end in a sliver (one column after nnz-balanced cuts); chained,
    every dataset would add one, each a task with its own overhead.
    """
    if len(bounds) >= 2 and bounds[-1][1] - bounds[-1][0] < MIN_BLOCK_COLS:
        (a, _), (_, b) = bounds[-2], bounds[-1]
        return [*bounds[:-2], (a, b)]
    return bounds


def _dataset_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return [f"dataset_{i + 1}" for i in range(count)]
    out = [str(n) for n in names]
    if len(out) != count:
        raise ValueError(f"got {len(out)} dataset names for {count} datasets")
    if len(set(out)) != len(out):
        raise ValueError(f"dataset names must be unique; got {out}")
    return out
