"""Penalty folding and the batch shapes every NNLS / MU kernel accepts.

Every sub-problem of the package is, column by column and independently,

    min_{x ≥ 0}  ½ xᵀ G x − bᵀ x + l1·Σx + ½ l2·‖x‖²,

and the penalties fold into the statistics: ``G + l2·I`` and ``B − l1``. The kernels take

- ``B`` (and ``X``) of shape ``(k, n)`` (one fit) or ``(R, k, n)`` (R fits), and
- ``G`` of shape ``(k, k)`` (shared by every column of every fit), ``(R, k, k)`` (one per
  fit, shared by its columns) or ``(R, n, k, k)`` (one per fit and column: masked fits,
  where ``G_j = Wᵀ diag(o_j) W`` depends on the observed pattern of column j).
"""

from __future__ import annotations

import numpy as np


def float_dtype(A: np.ndarray) -> np.dtype:
    """The dtype of A when it is a float type, else float64 (integer counts)."""
    dt = np.dtype(A.dtype)
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float64)


def fold_penalties(
    G: np.ndarray, B: np.ndarray, l1: float = 0.0, l2: float = 0.0, dtype: np.dtype | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(G + l2·I, B − l1)`` for G of shape (k, k), (R, k, k) or (R, n, k, k).

    Parameters
    ----------
    G : ndarray, shape (k, k), (R, k, k) or (R, n, k, k)
    B : ndarray, shape (k, n) or (R, k, n)
    l1, l2 : float
        L1 and L2 penalties on the unknowns.
    dtype : dtype, optional
        Working dtype (default: that of B, float64 for integers).

    Returns
    -------
    Gp, Bp : ndarrays of the given shapes, in ``dtype``
        ``Gp`` is always a fresh array (safe to modify); ``Bp`` is B itself when it has
        the dtype already and ``l1`` is 0.
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
    """Bring (G, B) to the batch form ``G (R, k, k) | (R, n, k, k)``, ``B (R, k, n)``.

    Returns
    -------
    G, B : ndarrays
        Views where possible (a (k, k) G shared by R fits is broadcast, not copied).
    single : bool
        B was (k, n): callers drop the leading axis of their result again.

    Raises
    ------
    ValueError
        When the shapes do not fit together.
    """
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
