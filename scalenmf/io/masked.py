"""Missing values: which entries of X a fit may look at.

A mask marks entries as *missing*: True (any non-zero) in a mask array, or NaN in X itself.
Masked fits minimise the loss over the observed entries only, so changing a missing entry
never changes the fit. The mask travels with X: ``MaskedSource`` wraps any matrix source
and yields ``FitBlock`` objects — the block with its missing entries set to zero, the
pattern of those entries, and the block's first global column (counter-based randomness
such as held-out patterns is keyed on global positions, see ``kernels.hashing``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._typing import Block
from scalenmf.io.errors import InputError
from scalenmf.io.matrix import as_source
from scalenmf.io.source import MatrixSource


@dataclass
class FitBlock:
    """One column block as the multi-fit step sees it.

    Attributes
    ----------
    X : ndarray or csc_matrix, shape (m, n_j)
        The block; missing entries are 0 (and not stored, when sparse).
    missing : csc_matrix (m, n_j) of bool, or None
        The missing entries (None: none are missing).
    start : int
        Global index of the block's first column.
    """

    X: Block
    missing: sp.csc_matrix | None
    start: int


def block_matrix(block: Any) -> Block:
    """The matrix of a block, whether it comes as a ``FitBlock`` or bare."""
    return block.X if isinstance(block, FitBlock) else block


def _nan_pattern(X: Block) -> tuple[Block, sp.csc_matrix | None]:
    """Split NaN entries out of a block: (block with NaN → 0, pattern of the NaN)."""
    if sp.issparse(X):
        csc = sp.csc_matrix(X, copy=True)
        bad = np.isnan(csc.data)
        if not bad.any():
            return csc, None
        pattern = sp.csc_matrix((bad, csc.indices, csc.indptr), shape=csc.shape)
        pattern.eliminate_zeros()
        csc.data[bad] = 0
        csc.eliminate_zeros()
        return csc, pattern
    arr = np.asarray(X)
    bad = np.isnan(arr)
    if not bad.any():
        return arr, None
    return np.where(bad, 0, arr).astype(arr.dtype, copy=False), sp.csc_matrix(bad)


def _as_pattern(block: Block, shape: tuple[int, int]) -> sp.csc_matrix:
    if block.shape != shape:
        raise InputError(f"mask block has shape {block.shape}, X block has {shape}")
    if sp.issparse(block):
        pattern = sp.csc_matrix(block != 0)
    else:
        arr = np.asarray(block)
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            raise InputError("the mask contains NaN; use 0 (observed) and 1 (missing)")
        pattern = sp.csc_matrix(arr != 0)
    pattern.eliminate_zeros()
    return pattern


def _union(a: sp.csc_matrix | None, b: sp.csc_matrix | None) -> sp.csc_matrix | None:
    if a is None:
        return b
    if b is None:
        return a
    out = sp.csc_matrix((a + b) != 0)
    out.eliminate_zeros()
    return out


def _zero_at(X: Block, pattern: sp.csc_matrix) -> Block:
    if sp.issparse(X):
        csc = sp.csc_matrix(X)
        ones = pattern.astype(csc.dtype)
        out = sp.csc_matrix(csc - csc.multiply(ones), dtype=X.dtype)
        out.eliminate_zeros()
        return out
    out = np.array(X, copy=True)
    out[pattern.nonzero()] = 0
    return out


class MaskedSource(MatrixSource):
    """A matrix source whose blocks are ``FitBlock`` (missing entries split out).

    Parameters
    ----------
    base : MatrixSource
    mask : MatrixSource, optional
        Same shape as ``base``; non-zero entries are missing. NaN entries of X are missing
        in any case (``mask=None``: only those).
    nan_missing : bool
        Treat NaN in X as missing (True) or reject it when blocks are checked (False).
    """

    def __init__(
        self, base: MatrixSource, mask: MatrixSource | None = None, nan_missing: bool = True
    ):
        super().__init__()
        if mask is not None and tuple(mask.shape) != tuple(base.shape):
            raise InputError(
                f"the mask has shape {tuple(mask.shape)} but X has shape {tuple(base.shape)}"
            )
        self.base = base
        self.mask = mask
        self.nan_missing = nan_missing
        self.shape = base.shape
        self.dtype = base.dtype
        self.is_sparse = base.is_sparse
        self.block_bounds = list(base.block_bounds)
        self._row_labels = base.row_labels
        self._col_labels = base.col_labels

    @property
    def has_missing(self) -> bool:
        return self.mask is not None or self.nan_missing

    @property
    def in_memory(self) -> bool:
        return self.base.in_memory and (self.mask is None or self.mask.in_memory)

    @property
    def nnz(self) -> int:
        return self.base.nnz

    @property
    def nbytes(self) -> int:
        return self.base.nbytes

    def describe(self) -> dict[str, Any]:
        out = self.base.describe()
        out["mask"] = "array" if self.mask is not None else ("nan" if self.nan_missing else None)
        return out

    def _read(self, start: int, stop: int) -> FitBlock:
        X = self.base.read_columns(start, stop)
        missing = None
        if self.nan_missing:
            X, missing = _nan_pattern(X)
        if self.mask is not None:
            user = _as_pattern(self.mask.read_columns(start, stop), X.shape)
            if user.nnz:
                X = _zero_at(X, user)
                missing = _union(missing, user)
        return FitBlock(X, missing, start)


def as_mask_source(mask: Any, shape: tuple[int, int]) -> MatrixSource | None:
    """Open a mask given as an array, sparse matrix, path, source, or the string ``"nan"``.

    ``None`` and ``"nan"`` mean: no mask array (NaN in X are still the missing entries).
    """
    if mask is None or (isinstance(mask, str) and mask.lower() == "nan"):
        return None
    if isinstance(mask, (str, os.PathLike)):
        from scalenmf.io.readers import open_path

        src = open_path(mask)
    elif isinstance(mask, np.ndarray) and mask.dtype == bool:
        src = as_source(mask.astype(np.float32))
    else:
        src = as_source(mask)
    if tuple(src.shape) != tuple(shape):
        raise InputError(f"the mask has shape {tuple(src.shape)} but X has shape {tuple(shape)}")
    return src


def fit_source(source: MatrixSource, mask: Any = None, *, missing: bool = False) -> MaskedSource:
    """Wrap ``source`` for the multi-fit engine.

    Parameters
    ----------
    mask : array, sparse matrix, path, MatrixSource or ``"nan"``, optional
        Missing entries. Any mask (``"nan"`` included) makes NaN in X missing too.
    missing : bool
        Treat NaN as missing even without a mask.
    """
    mask_src = as_mask_source(mask, source.shape)
    nan_missing = missing or mask is not None
    return MaskedSource(source, mask_src, nan_missing=nan_missing)
