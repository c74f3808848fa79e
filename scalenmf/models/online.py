"""Online (mini-batch) NMF on the one block step: W updated after every batch of blocks.

An epoch visits the column blocks once, in a seeded random order, in batches of about
``batch_cols`` columns. A batch's blocks solve their H with the current W (the block step,
warm-started at their previous H), then W is updated from sufficient statistics:

- **Frobenius** keeps ``A = Σ_j H_j H_jᵀ`` and ``B = Σ_j X_j H_jᵀ`` exact for the current H
  of every block: a block returns the *change* of its statistics (``X_j (H_j − H_j')ᵀ``,
  ``H_j H_jᵀ − H_j' H_j'ᵀ``, from the previous H it holds), so no statistic goes stale
  and no forgetting factor is needed. The W step is then the full-batch W step of the
  current H: every batch decreases the full objective, and the full-batch optimum is a
  fixed point. Until every block has been seen once, the W penalties are scaled to the
  share of the columns seen.
- **KL** keeps the multiplicative-update statistics ``A = Σ W ⊙ (X ⊘ WH) Hᵀ`` and
  ``B = Σ 1 Hᵀ`` with a forgetting factor ``ρ = forget_factor ** (batch / n)`` per batch
  (Lefèvre, Bach & Févotte 2011; scikit-learn's MiniBatchNMF), and ``W = A / (B + l1 +
  l2·W)``: the numerator depends on the W a block was seen with, so it cannot be exact.

Every epoch's objective is the sum of its batches' objectives (each with the W it saw), a
pass of X at no extra cost; the fit stops when it decreases by less than ``tol`` or after
``max_epochs``. One last pass solves every H with the final W and measures the objective
exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from scalenmf.engine.loop import IterationInfo, LoopTrace
from scalenmf.kernels.mu import EPS
from scalenmf.models.fits import FitsModel, objective, penalty, squared_error, update_w
from scalenmf.models.step import NMFConfig, fit_step, initial_states

#: Columns per mini-batch by default (whole blocks are batched until they reach it).
BATCH_COLS = 4096
#: scikit-learn's default forgetting of the KL statistics per pass over the data.
FORGET_FACTOR = 0.7
#: KL multiplicative H steps per visit of a block (a block is seen once per epoch).
ONLINE_MU_STEPS = 10


def block_batches(widths: list[int], batch_cols: int, rng: np.random.Generator) -> list[list[int]]:
    """The blocks of one epoch in a random order, cut into batches of ≥ ``batch_cols``."""
    out: list[list[int]] = []
    current: list[int] = []
    cols = 0
    for j in rng.permutation(len(widths)):
        current.append(int(j))
        cols += widths[j]
        if cols >= batch_cols:
            out.append(sorted(current))
            current, cols = [], 0
    if current:
        out.append(sorted(current))
    return out


def batch_statistics(
    config: NMFConfig, W: np.ndarray, part: dict[str, Any], a: int
) -> tuple[np.ndarray, np.ndarray]:
    """One batch's share ``(A_b, B_b)`` of the sufficient statistics of the W step.

    Parameters
    ----------
    config : NMFConfig
    W : ndarray, shape (m, k)
        The basis the batch's H was solved with.
    part, a : dict, int
        The batch's summed block-step statistics and the fit's slot in them.

    Returns
    -------
    A_b, B_b : ndarray
        Frobenius: ``H Hᵀ`` (k, k) and ``X Hᵀ`` (m, k); KL: ``W ⊙ (X ⊘ WH) Hᵀ`` (m, k)
        and ``H 1`` (k,), all float64.
    """
    if config.loss == "kl":
        return W.astype(np.float64) * part["numer"][a], np.asarray(part["hsum"][a], np.float64)
    return np.asarray(part["HHt"][a]), np.asarray(part["XHt"][a])


def w_from_statistics(config: NMFConfig, W: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The W step from accumulated statistics ``A``, ``B`` (as ``batch_statistics``).

    Frobenius: ``argmin_{W ≥ 0} ½ tr(W A Wᵀ) − tr(Wᵀ B)`` plus the W penalties (exact
    NNLS, warm-started at ``W``); KL: ``W = A ⊘ (B + l1_w + l2_w·W)``, the multiplicative
    step of the accumulated numerator and denominator. Returns W's shape (m, k) and dtype.
    """
    if config.loss == "kl":
        denom = B[None, :] + (config.l1_w + EPS)
        if config.l2_w:
            denom = denom + config.l2_w * W
        return (A / np.maximum(denom, EPS)).astype(W.dtype)
    return update_w(config, W, {"XHt": B, "HHt": A})


def run_online(
    model: FitsModel,
    executor: Any,
    *,
    max_epochs: int,
    tol: float,
    batch_cols: int = BATCH_COLS,
    forget_factor: float = FORGET_FACTOR,
    seed: int | None = 0,
    progress: Any = None,
    callback: Any = None,
    warm_start: bool = False,
) -> LoopTrace:
    """Fit ``model`` (one fit) by mini-batches; its ``Ws[0]`` is updated in place.

    ``warm_start``: W is already good (a previous fit): solve every block's H with it
    first, one extra pass, so that the statistics are complete from the start.

    Returns
    -------
    LoopTrace
        One run: the epochs' objectives and relative errors, then the exact ones of the
        final pass; ``n_iter`` counts epochs.
    """
    config = model.config
    kl = config.loss == "kl"
    exact = not kl and forget_factor >= 1.0
    # Exact statistics start from H = 0 in every block (an initialisation's H is dropped;
    # its W is kept): then A = B = 0 are the statistics of the blocks' H.
    executor.set_states(initial_states([0] * executor.source.n_blocks))
    bounds = executor.source.block_bounds
    widths = [b - a for a, b in bounds]
    n = sum(widths)
    rng = np.random.default_rng(seed)
    W = model.Ws[0]
    m, k = W.shape
    A = np.zeros((m, k) if kl else (k, k))
    B = np.zeros(k if kl else (m, k))
    seen = np.zeros(len(widths), dtype=bool)
    if exact and warm_start:
        # One H step of every block with the starting W: the statistics are then those of
        # all of X from the first batch on, and a start at the optimum stays there. (From a
        # rough start, blocks at H = 0 that add nothing converge faster: the default.)
        bc = replace(model.broadcast([0], first=False), delta=True)
        part, a0 = model.part(executor.map_reduce(fit_step, bc), 0)
        A += part["HHt_change"][a0]
        B += part["XHt"][a0]
        seen[:] = True
    trace = LoopTrace(objectives=[[]], relative_errors=[[]])
    t0 = time.perf_counter()
    converged = False
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        total_obj = total_sq = total_xx = 0.0
        for batch in block_batches(widths, batch_cols, rng):
            bc = replace(model.broadcast([0], first=False), validate=True, delta=exact)
            partials = executor.map_reduce(fit_step, bc, blocks=batch)
            part, a = model.part(partials, 0)
            xx_b = float(partials["xx"])
            G = bc.groups[0].grams[0][a]
            sq = squared_error(xx_b, part, a, G)
            h_sq = float(np.trace(part["HHt"][a]))
            total_obj += (float(part["div"][a]) if kl else 0.5 * sq) + penalty(
                replace(config, l1_w=0.0, l2_w=0.0), W, float(part["hsum"][a].sum()), h_sq
            )
            total_sq += sq
            total_xx += xx_b
            seen[batch] = True
            if exact:
                A += part["HHt_change"][a]
                B += part["XHt"][a]
                share = float(sum(w for w, s in zip(widths, seen, strict=True) if s)) / n
                cfg = replace(config, l1_w=config.l1_w * share, l2_w=config.l2_w * share)
                W = w_from_statistics(cfg, W, A, B)
            else:
                rho = forget_factor ** (sum(widths[j] for j in batch) / n)
                A_b, B_b = batch_statistics(config, W, part, a)
                A, B = rho * A + A_b, rho * B + B_b
                W = w_from_statistics(config, W, A, B)
            model.Ws[0] = W
            if progress is not None:
                progress.update(0)
        total_obj += penalty(replace(config, l1_h=0.0, l2_h=0.0), W, 0.0, 0.0)
        rel = math.sqrt(total_sq / total_xx) if total_xx > 0 else 0.0
        history = trace.objectives[0]
        history.append(total_obj)
        trace.relative_errors[0].append(rel)
        trace.iter_times.append(time.perf_counter() - t0)
        if progress is not None:
            progress.set_postfix_str(f"rel.err {rel:.4g}")
            progress.update(1)
        if callback is not None:
            callback(IterationInfo(epoch, [total_obj], [rel], time.perf_counter() - t0, (0,)))
        if len(history) > 1 and tol > 0:
            prev = history[-2]
            if abs(prev - total_obj) <= tol * max(abs(prev), 1e-300):
                converged = True
                break
    # The last pass: every H with the final W, and the exact objective of the result.
    bc = replace(model.broadcast([0], first=False), delta=False)
    partials = executor.map_reduce(fit_step, bc)
    part, a = model.part(partials, 0)
    obj, rel = objective(config, model.xx, part, a, bc.groups[0].grams[0][a], W)
    trace.objectives[0].append(obj)
    trace.relative_errors[0].append(rel)
    trace.iter_times.append(time.perf_counter() - t0)
    trace.n_iter = [epoch]
    trace.converged = [converged]
    trace.total_s = time.perf_counter() - t0
    return trace
