"""Online (mini-batch) NMF on the one block step: W updated after every batch of blocks.

An epoch visits the column blocks once, in a seeded random order, in batches of about
``batch_cols`` columns. A batch's blocks solve their H with the current W (the block step,
warm-started at their previous H), then W is updated from sufficient statistics:

- **Frobenius** keeps ``A = Σ_j ω_j H_j H_jᵀ``, ``B = Σ_j ω_j X_j H_jᵀ`` over the *latest*
  H of every block, ``ω_j`` its weight: a block returns the change of its statistics
  (``X_j (H_j − ω_j H_j')ᵀ``, ``H_j H_jᵀ − ω_j H_j' H_j'ᵀ``, from the previous H it holds),
  so a revisited block replaces its old share and nothing goes stale. Before each batch
  the weights decay by ρ: in the first epoch ``exp(−b / window)``, the window one batch at
  first and a quarter of the columns read later (W follows the improving H quickly, as
  Mairal et al.'s ``(1 − 1/t)^β``), then 1: from the end of the second epoch every weight
  is 1, the statistics are exact, the W step is the full-batch W step of the current H and
  the full-batch optimum is a fixed point. A ``forget_factor`` f sets ρ = f^(b/n)
  throughout. The W penalties are scaled to the weighted share of the columns.
- **KL** keeps, per row i of W, the second-order model of the loss at the W each batch was
  solved with: the Hessian ``Q_i = Σ_j x_ij / (w_iᵀh_j)² h_j h_jᵀ`` (k × k) and the linear
  term ``g_i − Q_i w_i`` (``g`` the gradient ``Σ_j h_j − (X ⊘ WH) Hᵀ``), and sets W to the
  non-negative minimiser of their sum, row by row (``newton_w``: a batched NNLS with a
  Gram per row). Newton on ``t − x·log t`` overshoots towards 0 where W·H is far above the
  data, so a row moves along its step only until an entry has lost ``SHRINK_LIMIT`` of
  its value. The models depend on the W a block was solved with, so the driver keeps,
  per block, that W (the blocks of a batch share one array: m·k floats a batch, no
  more than the MU statistics kept) and sends it with the block's weight; the block
  returns its new model less its weighted old one (recomputed from its previous H),
  as Frobenius blocks return the change of their statistics, so the sums hold every
  block once (m·k·(k + 1) floats in all) with the weights and schedule of Frobenius.
  At the full-batch optimum the models add up to its gradient and Hessian, so it is a
  fixed point. This replaced one multiplicative step of W from the accumulated
  MU statistics (Lefèvre, Bach & Févotte 2011; scikit-learn's MiniBatchNMF), which is
  what full-batch MU does a few hundred times: on the 96 × 10⁵ catalogue it was 98 %
  above the converged objective after one epoch, the Newton step 0.35 %.
  (``NMF.partial_fit``, which forgets without replacing, keeps the MU statistics: stale
  Newton models there drifted away from the optimum after a few epochs.)

**The first epoch's schedule.** Before the first epoch the fit is started and warmed up on
a seeded sample of blocks (about ``WARMUP_SHARE`` of the columns): the initialisation
(NNDSVDa or random) reads only the sample, and the same batch step is iterated on the
sample until its objective decreases by less than ``WARMUP_TOL`` or the warm-up has read
``WARMUP_PASSES`` passes' worth of columns. A mini-batch W learnt from the first batches
alone is poor and is paid for with whole epochs later; a few iterations on 2 % of X cost
a fraction of one. For Frobenius the sample's statistics are exact like every block's, so
they carry on into the first epoch. Where the sample would be more than a quarter of X
(small data) there is no warm-up and the initialisation reads all of X.

**The H step (Frobenius)** is ``ONLINE_SWEEPS`` coordinate (HALS) sweeps, warm-started at
the block's previous H; a block seen for the first time starts at the clipped
unconstrained solution (``StepCast.ls_start``), from which the sweeps come within 1e-6 of
exact NNLS at 0.4× the cost of pivoting from 0. The W step is the same sweeps on the statistics,
warm-started at W (an exact solve per batch costs as much as the batch where m is large).
**The H step (KL)** is coordinate descent with Newton steps (the compiled
``kernels.fixed.solve_fixed_basis_kl``), at most ``ONLINE_KL_SWEEPS`` sweeps, each column
stopping at the ``ONLINE_KL_TOL`` projected-gradient test, warm-started at the block's
previous H; on a GPU backend it is ``ONLINE_MU_STEPS`` multiplicative steps.

**Stopping.** Where the Frobenius statistics are exact the end-of-epoch objective is the *full*
objective of the current W and of every block's current H, read off the statistics at no
cost: ``½(‖X‖² − 2⟨W, B⟩ + ⟨WᵀW, A⟩)`` plus the penalties. Otherwise (the first epoch,
KL) it is the sum of the batches' objectives, each with the W the batch saw. The fit
stops when it decreases by less than ``tol`` from one epoch to the next, or after
``max_epochs`` epochs; then one last pass (the only extra one) solves every H with the
final W and measures the objective exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from scalenmf.engine.loop import IterationInfo, LoopTrace
from scalenmf.io.errors import InputError
from scalenmf.kernels.mu import EPS
from scalenmf.kernels.nnls import nnls_bpp
from scalenmf.models.fits import FitsModel, objective, penalty, squared_error, update_w
from scalenmf.models.step import NMFConfig, fit_step, initial_states

#: Columns per mini-batch by default (whole blocks are batched until they reach it).
BATCH_COLS = 4096
#: KL multiplicative H steps per visit of a block where coordinate descent is not
#: available (a GPU backend; a block is seen once per epoch).
ONLINE_MU_STEPS = 10
#: KL coordinate (Newton) sweeps of H per visit of a block, and their stopping test.
ONLINE_KL_SWEEPS = 20
ONLINE_KL_TOL = 1e-4
#: KL Newton W step: no entry of W falls below this share of its value in one step.
SHRINK_LIMIT = 0.5
#: The online KL configuration: H by coordinate descent, W by the Newton step.
ONLINE_KL: dict[str, Any] = {
    "kl_h": "cd",
    "kl_hessian": True,
    "inner_sweeps": ONLINE_KL_SWEEPS,
    "inner_tol": ONLINE_KL_TOL,
    "mu_steps": ONLINE_MU_STEPS,
}
#: Frobenius coordinate (HALS) sweeps of H per visit of a block.
ONLINE_SWEEPS = 5
#: Share of the columns in the warm-up sample.
WARMUP_SHARE = 0.02
#: The warm-up reads at most this many passes' worth of columns.
WARMUP_PASSES = 0.5
#: The warm-up stops when the sample's objective decreases by less than this (relative).
WARMUP_TOL = 1e-4
#: Frobenius, first epoch: the statistics forget with a window of this many batches...
WINDOW_BATCHES = 1
#: ... and the window grows to this share of the columns read so far.
WINDOW_GROWTH = 0.25


def block_batches(
    widths: list[int],
    batch_cols: int,
    rng: np.random.Generator,
    groups: list[int] | None = None,
) -> list[list[int]]:
    """The blocks of one epoch in a random order, cut into batches of ≥ ``batch_cols``.

    ``groups``: the storage chunk of each block, where blocks are narrower than a chunk.
    The chunks are then visited in a random order and the blocks of one chunk one after
    another (in a random order): a chunk is decoded once per epoch instead of once per
    block (16 times at 4,096-column batches of 65,536-column chunks).
    """
    order = rng.permutation(len(widths))
    if groups is not None and len(set(groups)) < len(groups):
        members: dict[int, list[int]] = {}
        for j, g in enumerate(groups):
            members.setdefault(g, []).append(j)
        keys = sorted(members)
        order = np.array(
            [
                members[keys[g]][i]
                for g in rng.permutation(len(keys))
                for i in rng.permutation(len(members[keys[g]]))
            ]
        )
    out: list[list[int]] = []
    current: list[int] = []
    cols = 0
    for j in order:
        current.append(int(j))
        cols += widths[j]
        if cols >= batch_cols:
            out.append(sorted(current))
            current, cols = [], 0
    if current:
        out.append(sorted(current))
    return out


def warmup_sample(block_bounds: list[tuple[int, int]], seed: int | None) -> list[int] | None:
    """The seeded sample of blocks the online fit starts and warms up on, or None.

    Blocks in a random order until they hold ``WARMUP_SHARE`` of the columns; None where
    that sample would leave the warm-up fewer than two iterations within its budget of
    ``WARMUP_PASSES`` (then the start reads all of X and there is no warm-up).
    """
    widths = [b - a for a, b in block_bounds]
    n = sum(widths)
    rng = np.random.default_rng(None if seed is None else [int(seed), 15])
    sample: list[int] = []
    cols = 0
    for j in rng.permutation(len(widths)):
        if cols >= WARMUP_SHARE * n:
            break
        sample.append(int(j))
        cols += widths[j]
    if cols == 0 or WARMUP_PASSES * n / cols < 2:
        return None
    return sorted(sample)


def init_passes(init: str, block_bounds: list[tuple[int, int]], sample: list[int] | None) -> float:
    """Passes over X (in columns read ÷ n) the initialisation makes on ``sample`` or all."""
    widths = [b - a for a, b in block_bounds]
    share = 1.0 if sample is None else sum(widths[j] for j in sample) / max(1, sum(widths))
    return (1.0 if init == "random" else 2.0) * share


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
        Frobenius: ``H Hᵀ`` (k, k) and ``X Hᵀ`` (m, k). KL with ``kl_hessian`` (the
        Newton W step): the rows' Hessians ``Q`` (m, k, k) and ``g − Q w`` (m, k), ``g`` the
        rows' gradients at the W the batch saw, so that ``½ wᵀ Q w + (g − Q w_b)ᵀ w`` is
        the batch's second-order model of its loss in each row. KL by MU:
        ``W ⊙ (X ⊘ WH) Hᵀ`` (m, k) and ``H 1`` (k,). All float64.
    """
    if config.loss == "kl" and config.kl_hessian:
        return np.asarray(part["rowQ"][a], np.float64), np.asarray(part["rowLin"][a], np.float64)
    if config.loss == "kl":
        return W.astype(np.float64) * part["numer"][a], np.asarray(part["hsum"][a], np.float64)
    return np.asarray(part["HHt"][a]), np.asarray(part["XHt"][a])


def w_from_statistics(config: NMFConfig, W: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The W step from accumulated statistics ``A``, ``B`` (as ``batch_statistics``).

    Frobenius: ``argmin_{W ≥ 0} ½ tr(W A Wᵀ) − tr(Wᵀ B)`` plus the W penalties by the
    config's solver, warm-started at ``W`` (online: HALS sweeps, which keep the cost of a
    batch's W step small where m is large); KL: ``W = A ⊘ (B + l1_w + l2_w·W)``, the
    multiplicative step of the accumulated numerator and denominator. Returns W's shape
    (m, k) and dtype.
    """
    if config.loss == "kl" and config.kl_hessian:
        return newton_w(config, W, A, B)
    if config.loss == "kl":
        denom = B[None, :] + (config.l1_w + EPS)
        if config.l2_w:
            denom = denom + config.l2_w * W
        return (A / np.maximum(denom, EPS)).astype(W.dtype)
    return update_w(config, W, {"XHt": B, "HHt": A})


def newton_w(config: NMFConfig, W: np.ndarray, Q: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """KL: the W minimising the accumulated second-order model, row by row, exactly.

    Each row solves ``min_{w ≥ 0} ½ wᵀ(Q_i + l2_w·I)w + (lin_i + l1_w)ᵀ w`` (a batched NNLS
    with one Gram per row, warm-started at W's passive set). The batches' models are
    those of the loss at the W each batch saw; at the full-batch optimum they add up to
    its gradient and Hessian, so the optimum is their minimiser (a fixed point). Entries
    are kept above ``EPS`` times W's largest, so that ``W H`` stays positive where there
    is data (a zero row of W would make the loss of its data infinite).

    Parameters
    ----------
    W : ndarray, shape (m, k)
    Q : ndarray, shape (m, k, k)
    lin : ndarray, shape (m, k)

    Returns
    -------
    ndarray, shape (m, k), W's dtype
    """
    k = W.shape[1]
    G = Q + config.l2_w * np.eye(k)[None]
    # A ridge far below any curvature keeps rows without data (Q_i = 0) solvable: their
    # linear term Σh > 0 then sets them to 0.
    scale = float(np.trace(G, axis1=1, axis2=2).max()) / k if G.size else 0.0
    G = G + (1e-12 * scale + 1e-300) * np.eye(k)[None]
    rhs = -(lin + config.l1_w)
    W64 = W.astype(np.float64)
    Wn = nnls_bpp(G[None], rhs.T[None], W64.T[None])[0][0].T
    # Newton on t − x·log t overshoots towards 0 where the model's W·H is far above the
    # data (small curvature, long step): each row moves along its step only so far that
    # no entry falls below SHRINK_LIMIT of its value (the fraction-to-the-boundary rule
    # of interior-point methods). The model falls all along the segment (it is convex
    # and Wn its minimiser), and at a fixed point the step is 0.
    step = Wn - W64
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(step < 0, (1.0 - SHRINK_LIMIT) * W64 / -step, np.inf)
    t = np.minimum(1.0, room.min(axis=1, initial=np.inf))[:, None]
    Wn = W64 + t * step
    return np.maximum(Wn, EPS * max(float(Wn.max()), EPS)).astype(W.dtype)


def statistics_objective(
    config: NMFConfig, xx: float, W: np.ndarray, A: np.ndarray, B: np.ndarray, hsum: np.ndarray
) -> tuple[float, float]:
    """The full Frobenius objective and relative error of W and the H behind ``A``, ``B``.

    ``A = Σ_j H_j H_jᵀ`` (k, k), ``B = Σ_j X_j H_jᵀ`` (m, k) and ``hsum = Σ_j H_j 1`` (k,)
    exact for every block's current H, ``xx = ‖X‖²``: ``‖X − WH‖² = xx − 2⟨W, B⟩ +
    ⟨WᵀW, A⟩`` with no pass over X.
    """
    W64 = W.astype(np.float64, copy=False)
    sq = max(
        xx
        - 2.0 * float(np.einsum("ij,ij->", W64, B))
        + float(np.einsum("ij,ij->", W64.T @ W64, A)),
        0.0,
    )
    obj = 0.5 * sq + penalty(config, W, float(hsum.sum()), float(np.trace(A)))
    return obj, (math.sqrt(sq / xx) if xx > 0 else 0.0)


class _Online:
    """The driver's state of one online fit: W, the statistics, the columns read.

    Frobenius: ``A = Σ_j ω_j H_j H_jᵀ``, ``B = Σ_j ω_j X_j H_jᵀ``, ``hsum = Σ_j ω_j H_j 1``
    over every block's latest H, ``ω_j`` its weight: 1 when it is solved, times ``ρ`` per
    batch since. KL: the decayed sums of every batch's statistics (``batch_statistics``).
    """

    def __init__(self, model: FitsModel, executor: Any, forget_factor: float | None) -> None:
        self.model, self.executor = model, executor
        self.config = model.config
        self.kl = self.config.loss == "kl"
        self.forget_factor = forget_factor
        self.widths = np.array([b - a for a, b in executor.source.block_bounds])
        self.n = int(self.widths.sum())
        m, k = model.Ws[0].shape
        if self.kl and self.config.kl_hessian:
            self.A, self.B = np.zeros((m, k, k)), np.zeros((m, k))
        else:
            self.A = np.zeros((m, k) if self.kl else (k, k))
            self.B = np.zeros(k if self.kl else (m, k))
        self.hsum = np.zeros(k)
        self.weight = np.zeros(len(self.widths))
        #: KL: each batch's latest statistics and their weight, by the batch's blocks (the
        #: batches are the same every epoch, so a revisit replaces its batch's share).
        self.kl_parts: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self.kl_weight: dict[tuple[int, ...], float] = {}
        self.cols_read = 0
        #: KL Newton: per block, the W its latest H was solved with (the blocks of one
        #: batch share one array), so that a revisit takes its old share out. In memory,
        #: or, once the executor keeps block states in a scratch store, there: one m × k
        #: array per batch grows with n (19 MB at 96 × 10⁷ in batches of 4,096), and
        #: ``seen_version`` names each block's (-1: in ``W_seen`` or none yet).
        self.newton = self.kl and self.config.kl_hessian
        self.W_seen: dict[int, np.ndarray] = {}
        self.seen_version = np.full(len(self.widths), -1, dtype=np.int64)
        self._versions = 0

    @property
    def W(self) -> np.ndarray:
        return self.model.Ws[0]

    @property
    def exact(self) -> bool:
        """Every block's latest statistics are in the sums with weight 1 (Frobenius)."""
        return not self.kl and bool(np.all(self.weight == 1.0))

    def drop(self, key: tuple[int, ...]) -> None:
        """KL: take a batch's share out of the sums (the warm-up sample's, once every batch
        of the epoch has its own)."""
        if key in self.kl_parts:
            A_old, B_old = self.kl_parts.pop(key)
            w = self.kl_weight.pop(key)
            self.A -= w * A_old
            self.B -= w * B_old

    def rho(self, cols: int, epoch: int, window: float) -> float:
        """The decay of the statistics before a batch of ``cols`` columns in ``epoch``."""
        if self.forget_factor is not None:
            return float(self.forget_factor ** (cols / self.n))
        if epoch > 1:
            return 1.0
        # The first epoch's schedule: a window of ``window`` columns at first, growing with
        # the columns read (Mairal et al.'s (1 − 1/t)^β with β = 1 / WINDOW_GROWTH).
        return math.exp(-cols / max(window, WINDOW_GROWTH * self.cols_read))

    def share_config(self, cols: float) -> NMFConfig:
        """The config with the W penalties scaled to ``cols`` of the n columns."""
        share = cols / self.n
        return replace(self.config, l1_w=self.config.l1_w * share, l2_w=self.config.l2_w * share)

    def step(
        self, blocks: list[int] | None, final: bool = False
    ) -> tuple[Any, dict[str, Any], int, Any]:
        """The block step of ``blocks`` (None: all) with the current W; ``final``: the
        last pass, which needs no W-step statistics."""
        bc = replace(self.model.broadcast([0], first=False), validate=True)
        if self.newton and final:
            bc = replace(bc, config=replace(bc.config, kl_hessian=False))
        elif self.newton:
            chosen = range(len(self.widths)) if blocks is None else blocks
            bc = replace(
                bc,
                delta=True,
                old_weight={int(j): float(self.weight[j]) for j in chosen},
                old_W=self._old_W(chosen),
            )
            self._remember_W(chosen)
        elif not self.kl:
            chosen = range(len(self.widths)) if blocks is None else blocks
            bc = replace(
                bc,
                delta=True,
                ls_start=True,
                old_weight={int(j): float(self.weight[j]) for j in chosen},
            )
        partials = self.executor.map_reduce(fit_step, bc, blocks=blocks)
        self.cols_read += self.n if blocks is None else int(self.widths[blocks].sum())
        part, a = self.model.part(partials, 0)
        return bc, part, a, partials

    def _old_W(self, blocks: Any) -> dict[int, np.ndarray]:
        """The W each of ``blocks`` was last solved with (blocks not yet solved: absent)."""
        spill = getattr(self.executor, "spill", None)
        out: dict[int, np.ndarray] = {}
        loaded: dict[int, np.ndarray] = {}
        for j in map(int, blocks):
            v = int(self.seen_version[j])
            if v >= 0 and spill is not None:
                if v not in loaded:
                    loaded[v] = spill.read(v, "W_seen")
                out[j] = loaded[v]
            elif j in self.W_seen:
                out[j] = self.W_seen[j]
        return out

    def _remember_W(self, blocks: Any) -> None:
        """``blocks`` are solved with the current W: kept as their last (one copy)."""
        spill = getattr(self.executor, "spill", None)
        chosen = [int(j) for j in blocks]
        if spill is None:
            for j in chosen:
                self.W_seen[j] = self.W
            return
        # A new version each step: blocks solved before keep theirs until revisited.
        version, self._versions = self._versions, self._versions + 1
        spill.write(version, self.W, "W_seen")
        self.seen_version[chosen] = version
        for j in chosen:
            self.W_seen.pop(j, None)

    def batch_objective(
        self, bc: Any, part: dict[str, Any], a: int, xx_b: float
    ) -> tuple[float, float]:
        """A batch's data term plus H penalties (with the W it saw), and its ‖X − WH‖²."""
        sq = squared_error(xx_b, part, a, bc.groups[0].grams[0][a])
        h_sq = float(np.trace(part["HHt"][a]))
        data = float(part["div"][a]) if self.kl else 0.5 * sq
        pen = penalty(
            replace(self.config, l1_w=0.0, l2_w=0.0), self.W, float(part["hsum"][a].sum()), h_sq
        )
        return data + pen, sq

    def decay(self, rho: float) -> None:
        if rho != 1.0:
            self.A *= rho
            self.B *= rho
            self.hsum *= rho
            self.weight *= rho
            for key in self.kl_weight:
                self.kl_weight[key] *= rho

    def add(
        self, blocks: list[int] | None, part: dict[str, Any], a: int, w_step: bool = True
    ) -> None:
        """Add a step's statistics (already decayed by ``decay``), then the W step."""
        # The blocks just solved are in the sums with weight 1 (their latest H).
        if blocks is None:
            self.weight[:] = 1.0
        else:
            self.weight[blocks] = 1.0
        if self.newton:
            # As Frobenius: each block returned its new share less its weighted old one.
            self.A += part["rowQ"][a]
            self.B += part["rowLin"][a]
            cfg = self.share_config(float(self.weight @ self.widths))
        elif self.kl:
            key = tuple(range(len(self.widths))) if blocks is None else tuple(blocks)
            self.drop(key)  # the batch's previous share leaves with the weight it had
            A_b, B_b = batch_statistics(self.config, self.W, part, a)
            self.A += A_b
            self.B += B_b
            self.kl_parts[key], self.kl_weight[key] = (A_b, B_b), 1.0
            cols = sum(w * float(self.widths[list(k)].sum()) for k, w in self.kl_weight.items())
            cfg = self.share_config(min(cols, float(self.n)))
        else:
            # The blocks' previous statistics leave with the weight they had: each block is
            # in the sums once, with its latest H.
            self.A += part["HHt_change"][a]
            self.B += part["XHt"][a]
            self.hsum += part["hsum_change"][a]
            cfg = self.share_config(float(self.weight @ self.widths))
        if w_step:
            self.model.Ws[0] = w_from_statistics(cfg, self.W, self.A, self.B)


def _warm_up(fit: _Online, sample: list[int]) -> int:
    """Iterate the batch step on the sample blocks (see the module notes); iterations run."""
    cols = float(fit.widths[sample].sum())
    budget = max(1, int(WARMUP_PASSES * fit.n // cols))
    prev = math.inf
    for it in range(1, budget + 1):
        bc, part, a, partials = fit.step(sample)
        obj, _ = fit.batch_objective(bc, part, a, float(partials["xx"]))
        obj += penalty(replace(fit.share_config(cols), l1_h=0.0, l2_h=0.0), fit.W, 0.0, 0.0)
        fit.add(sample, part, a)  # replaces the sample's previous share (KL and Frobenius)
        if math.isfinite(prev) and prev - obj <= WARMUP_TOL * abs(prev):
            return it
        prev = obj
    return budget


def run_online(
    model: FitsModel,
    executor: Any,
    *,
    max_epochs: int,
    tol: float,
    batch_cols: int = BATCH_COLS,
    forget_factor: float | None = None,
    seed: int | None = 0,
    progress: Any = None,
    callback: Any = None,
    warm_start: bool = False,
    sample: list[int] | None = None,
    info: dict[str, Any] | None = None,
) -> LoopTrace:
    """Fit ``model`` (one fit) by mini-batches; its ``Ws[0]`` is updated in place.

    ``forget_factor``: the share of the statistics one pass over X keeps (each batch of b
    columns decays them by ``forget_factor ** (b / n)``); None: the schedule of the module
    notes (a growing window in the first epoch, then none). ``warm_start``: W is already
    good (a previous fit): solve every block's H with it first, one extra pass, so that
    the statistics are complete from the start, and forget nothing. ``sample``: the blocks
    of the warm-up (``warmup_sample``; the start was computed on them, so ``model.xx`` may
    be theirs only: the first epoch sets it to ‖X‖²). ``info``, if given, receives
    ``passes`` (columns read ÷ n, the start excluded), ``passes_at_epoch``,
    ``warmup_iterations`` and ``warmup_cols``.

    Returns
    -------
    LoopTrace
        One run: the epochs' objectives and relative errors, then the exact ones of the
        final pass; ``n_iter`` counts epochs.
    """
    kl = model.config.loss == "kl"
    if warm_start and forget_factor is None:
        forget_factor = 1.0
    fit = _Online(model, executor, forget_factor)
    # Every block starts at H = 0 (an initialisation's H is dropped; its W is kept): the
    # statistics of those H are A = B = 0.
    executor.set_states(initial_states([0] * executor.source.n_blocks))
    widths = [int(w) for w in fit.widths]
    window = float(WINDOW_BATCHES * max(batch_cols, max(widths)))
    rng = np.random.default_rng(seed)
    # KL keeps one share per batch: the same batches every epoch, in a new order each.
    chunk = getattr(executor.source, "chunk_cols", None)
    groups = None if not chunk else [a // chunk for a, _ in executor.source.block_bounds]
    kl_batches = block_batches(widths, batch_cols, rng, groups) if kl else None
    warm_iters = 0
    if warm_start and kl_batches is not None:
        # Every batch's H with the starting W, then one W step: a start at the fixed point
        # of full-batch MU stays there.
        for batch in kl_batches:
            _, part, a0, _ = fit.step(batch)
            fit.add(batch, part, a0, w_step=False)
        fit.model.Ws[0] = w_from_statistics(fit.config, fit.W, fit.A, fit.B)
    elif warm_start:
        # One H step of every block with the starting W: the statistics are then those of
        # all of X from the first batch on, and a start at the optimum stays there.
        _, part, a0, _ = fit.step(None)
        fit.add(None, part, a0)
    elif sample:
        warm_iters = _warm_up(fit, sample)
    trace = LoopTrace(objectives=[[]], relative_errors=[[]])
    passes_at_epoch: list[float] = []
    t0 = time.perf_counter()
    converged = False
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        total_obj = total_sq = total_xx = 0.0
        if kl_batches is not None and epoch == 2 and sample:
            if tuple(sample) not in {tuple(b) for b in kl_batches}:
                fit.drop(tuple(sample))  # every batch has its own share now
        batches = (
            block_batches(widths, batch_cols, rng, groups)
            if kl_batches is None
            else [kl_batches[i] for i in rng.permutation(len(kl_batches))]
        )
        for batch in batches:
            fit.decay(fit.rho(sum(widths[j] for j in batch), epoch, window))
            bc, part, a, partials = fit.step(batch)
            xx_b = float(partials["xx"])
            obj_b, sq_b = fit.batch_objective(bc, part, a, xx_b)
            total_obj += obj_b
            total_sq += sq_b
            total_xx += xx_b
            fit.add(batch, part, a)
            if progress is not None:
                progress.update(0)
        if epoch == 1 and total_xx == 0:
            raise InputError("X is all zeros; there is nothing to factorize")
        model.xx = total_xx  # ‖X‖², whatever the start read
        if fit.exact:
            # Every block's latest H is in the sums with weight 1: the full objective.
            total_obj, rel = statistics_objective(
                fit.config, total_xx, fit.W, fit.A, fit.B, fit.hsum
            )
        else:
            total_obj += penalty(replace(fit.config, l1_h=0.0, l2_h=0.0), fit.W, 0.0, 0.0)
            rel = math.sqrt(total_sq / total_xx) if total_xx > 0 else 0.0
        passes_at_epoch.append(fit.cols_read / fit.n)
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
    bc, part, a, _ = fit.step(None, final=True)
    obj, rel = objective(fit.config, model.xx, part, a, bc.groups[0].grams[0][a], fit.W)
    trace.objectives[0].append(obj)
    trace.relative_errors[0].append(rel)
    trace.iter_times.append(time.perf_counter() - t0)
    trace.n_iter = [epoch]
    trace.converged = [converged]
    trace.total_s = time.perf_counter() - t0
    if info is not None:
        info.update(
            passes=fit.cols_read / fit.n,
            passes_at_epoch=passes_at_epoch,
            warmup_iterations=warm_iters,
            warmup_cols=int(fit.widths[sample].sum()) if sample and warm_iters else 0,
        )
    return trace
