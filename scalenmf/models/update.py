"""Incremental refit: a fitted basis refined on new samples, the old samples kept by statistics.

An update minimises the objective over the old and the new samples together, the old ones
through the sufficient statistics of the online W step (``models/online.py``) rebuilt
from the stored result alone (its X is not read again):

- **Frobenius**: the old data term ``½‖X_old − W H_old‖²`` is ``½ tr(W A Wᵀ) − tr(Wᵀ B)``
  plus a constant, with ``A = H_old H_oldᵀ`` exact from the stored H and ``B = X_old
  H_oldᵀ`` taken from the stationarity of the fitted W₀ (``W₀ A − B + l1_w + l2_w W₀ = 0``),
  i.e. ``B = W₀ A + l1_w + l2_w W₀``: exact for a converged fit;
- **KL**: the multiplicative-update statistics of the old samples at W₀, numerator
  ``W₀ ⊙ (H_old 1 + l1_w + l2_w W₀)`` and denominator ``H_old 1``, as they stand at
  the fixed point of the multiplicative update.

In both cases the old samples alone leave W₀ where it is (a W step of their statistics
returns W₀), and ``weight`` scales them (1: the old samples count as much as they did in
the fit; 0: the basis is refit on the new samples alone, from W₀).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalenmf.models.nmf import NMFModel
from scalenmf.models.online import batch_statistics, w_from_statistics
from scalenmf.models.step import NMFConfig


def anchor_statistics(
    config: NMFConfig, W0: np.ndarray, H_old: np.ndarray, weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The old samples' statistics ``(A, B)`` for the W step, scaled by ``weight``.

    Parameters
    ----------
    config : NMFConfig
        The loss and the W penalties.
    W0 : ndarray, shape (m, k)
        The fitted basis.
    H_old : ndarray, shape (k, n_old)
        The fitted coefficients of the old samples.
    weight : float
        Share of the old samples' statistics kept.

    Returns
    -------
    A, B : ndarray
        Frobenius: (k, k) and (m, k); KL: (m, k) and (k,); float64, as
        ``models.online.batch_statistics``.
    """
    W64 = W0.astype(np.float64)
    H64 = np.asarray(H_old, dtype=np.float64)
    pen = config.l1_w + config.l2_w * W64  # the W penalties' gradient at W₀
    if config.loss == "kl":
        hsum = H64.sum(axis=1)
        return weight * W64 * (hsum[None, :] + pen), weight * hsum
    A = H64 @ H64.T
    return weight * A, weight * (W64 @ A + pen)


class AnchoredModel(NMFModel):
    """One fit on the new samples whose W step adds the old samples' statistics.

    Parameters
    ----------
    config : NMFConfig
    W0 : ndarray, shape (m, k)
        Start (the fitted basis).
    h_start : float
        Constant start of H (KL).
    xx : float
        ‖X_new‖².
    anchor : tuple of ndarray
        ``anchor_statistics`` of the old samples.
    """

    def __init__(
        self,
        config: NMFConfig,
        W0: np.ndarray,
        h_start: float,
        xx: float,
        anchor: tuple[np.ndarray, np.ndarray],
    ):
        super().__init__(config, [W0], [h_start], xx)
        self.anchor = anchor

    def flush(self) -> None:
        """The deferred W step: the new samples' statistics plus the old ones."""
        if not self._pending:
            return
        ci, a = self._where[0]
        part: dict[str, Any] = self._partials["groups"][ci][0]
        W = self.Ws[0]
        A_b, B_b = batch_statistics(self.config, W, part, a)
        A, B = self.anchor[0] + A_b, self.anchor[1] + B_b
        self.Ws[0] = np.ascontiguousarray(w_from_statistics(self.config, W, A, B))
        self._pending = []


def matched_cosines(W0: np.ndarray, W1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair the columns of two bases by the Hungarian assignment of their cosines.

    Parameters
    ----------
    W0, W1 : ndarray, shape (m, k)

    Returns
    -------
    match : ndarray of int, shape (k,)
        ``match[i]``: the column of W1 assigned to column i of W0 (the assignment that
        maximises the summed cosine).
    cosine : ndarray, shape (k,)
        The cosine of every pair (a zero column has cosine 0 with everything).
    """
    from scipy.optimize import linear_sum_assignment

    a = W0.astype(np.float64)
    b = W1.astype(np.float64)
    na = np.linalg.norm(a, axis=0)
    nb = np.linalg.norm(b, axis=0)
    C = (a.T @ b) / np.maximum(np.outer(na, nb), np.finfo(float).tiny)
    rows, cols = linear_sum_assignment(C, maximize=True)
    match = np.empty(a.shape[1], dtype=np.int64)
    match[rows] = cols
    return match, C[np.arange(a.shape[1]), match]


__all__ = ["AnchoredModel", "anchor_statistics", "matched_cosines"]
