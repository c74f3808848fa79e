"""Penalty folding and the batch shapes every NNLS / MU kernel accepts.

Every sub-problem is, column by column, ``min_{x ≥ 0} ½ xᵀ G x − bᵀ x + l1·Σx + ½ l2·‖x‖²``;
the penalties fold into ``G + l2·I`` and ``B − l1``. ``B`` (and ``X``) is (k, n) or (R, k, n)
for R fits; ``G`` is (k, k) shared, (R, k, k) one per fit, or (R, n, k, k) one per fit and
column (masked fits, ``G_j = Wᵀ diag(o_j) W``).
"""

from __future__ import annotations

import numpy as np


def float_dtype(A: np.ndarray) -> np.dtype:
    """The dtype of A when it is a float type, else float64 (integer counts)."""
    dt = np.dtype(A.dtype)
    return dt if dt.kind == "f" else np.dtype(np.float64)


def fold_penalties(
    G: np.ndarray, B: np.ndarray, l1: float = 0.0, l2: float = 0.0, dtype: np.dtype | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(G + l2·I, B − l1)`` for G of shape (k, k), (R, k, k) or (R, n, k, k).

    ``dtype`` defaults to B's (float64 for integers). ``Gp`` is always a fresh array;
    ``Bp`` is B itself when it has the dtype and ``l1`` is 0.
    """
    dtype = float_dtype(B) if dtype is None else np.dtype(dtype)
    Gp = np.array(G, dtype=dtype, copy=True)
    if l2:
        idx = np.arange(Gp.shape[-1])
        Gp[..., idx, idx] += dtype.type(l2)
    Bp = np.asarray(B, dtype=dtype)
    if l1:
        Bp = Bp - dtype.type(l1)
    return Gp, Bp


def as_batch(G: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``G (R, k, k) | (R, n, k, k)``, ``B (R, k, n)`` as views where possible, and whether
    B was (k, n) (``single``: callers drop the leading axis again). ValueError when the
    shapes do not fit."""
    single = B.ndim == 2
    Bb = B[None] if single else B
    if Bb.ndim != 3:
        raise ValueError(f"B must be (k, n) or (R, k, n), got shape {B.shape}")
    R, k, n = Bb.shape
    if G.ndim == 2:
        Gb = np.broadcast_to(G, (R, k, k))
    elif G.ndim == 3 and single and G.shape == (n, k, k):
        Gb = G[None]  # one fit with per-column Grams given as (n, k, k)
    else:
        Gb = G
    ok = Gb.shape == (R, k, k) or Gb.shape == (R, n, k, k)
    if not ok:
        raise ValueError(f"G of shape {G.shape} does not fit B of shape {B.shape}")
    return Gb, Bb, single
