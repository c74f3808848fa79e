"""The driver side of the one block step: fits, the one W step and the one objective.

``FitsModel`` is what ``engine.loop.run_alternating`` iterates for plain, restarted and
masked NMF and model selection; ``LinkedModel`` and ``INMFModel`` (models/linked.py)
extend it with a basis per dataset. The objective, from the summed statistics alone in
float64, is ``½‖X − WH‖² + l1_w·ΣW + ½ l2_w·‖W‖² + l1_h·ΣH + ½ l2_h·‖H‖²`` (KL: data term
``Σ x·log(x / wh) − x + wh``), on the observed entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalenmf.engine.loop import run_alternating
from scalenmf.io.state_store import columns_array
from scalenmf.kernels import gram
from scalenmf.kernels.backend import NUMPY
from scalenmf.kernels.mu import EPS
from scalenmf.models.init import random_w
from scalenmf.models.memory import FitShape
from scalenmf.models.step import (
    VARIANTS,
    BlockState,
    Extract,
    GroupCast,
    GroupKey,
    NMFConfig,
    StepCast,
    backend_of,
    extract_step,
    fit_stats_step,
    fit_step,
    require_entries,
    solve_nnls,
)

#: Fits whose ranks are within this ratio share one group, W padded with zero columns:
#: fewer, larger vectorised solves (a zero column of W keeps its H row at 0 and back).
PAD_RATIO = 1.5


@dataclass(frozen=True)
class FitSpec:
    """One fit: rank, ``variant`` ("data", or "null": X with every column permuted),
    held-out replicate ``rep`` (−1: none) and restart number ``run`` (seeds its start)."""

    k: int
    variant: str = "data"
    rep: int = -1
    run: int = 0


def rank_buckets(ks: list[int]) -> dict[int, int]:
    """The padded rank of every k: consecutive ks within ``PAD_RATIO`` share a bucket."""
    out: dict[int, int] = {}
    bucket: list[int] = []
    for k in sorted(set(ks)):
        if bucket and k > PAD_RATIO * bucket[0]:
            out.update({b: bucket[-1] for b in bucket})
            bucket = []
        bucket.append(k)
    out.update({b: bucket[-1] for b in bucket})
    return out


def multifit_shape(
    fits: list[FitSpec], loss: str, work_itemsize: int, masked: bool = False
) -> FitShape:
    """The ``FitShape`` a memory plan sees for ``fits`` run together on one read of X.

    All fits share each read of X, so what the plan must hold is the sum of their block
    states: the padded rank of every fit (``rank_buckets``), summed. The shape is the
    largest padded rank times as many "runs" as make that total (rounded up), so that
    ``k × n_runs`` per column is never below the real state size, and the per-column
    solver temporaries are those of the largest rank (an upper bound for every group).
    Held-out replicates solve with hidden entries, as a masked fit does. The starts are
    random W (no NNDSVD pass).
    """
    padded = rank_buckets([s.k for s in fits])
    total = sum(padded[s.k] for s in fits)
    top = max(padded.values())
    return FitShape(
        k=top,
        n_runs=max(1, math.ceil(total / top)),
        loss=loss,
        init="random",
        work_itemsize=int(work_itemsize),
        masked=bool(masked or any(s.rep >= 0 for s in fits)),
    )


def _pad(W: np.ndarray, k: int) -> np.ndarray:
    if W.shape[1] == k:
        return W
    out = np.zeros((W.shape[0], k), dtype=W.dtype)
    out[:, : W.shape[1]] = W
    return out


# -- the one objective and the one W step --------------------------------------------------


def penalty(config: NMFConfig, W: np.ndarray, h_sum: float, h_sq: float) -> float:
    """``l1_w·ΣW + ½ l2_w‖W‖² + l1_h·ΣH + ½ l2_h‖H‖²``, given ``ΣH`` and ``‖H‖²``."""
    W64 = W.astype(np.float64, copy=False)
    total = config.l1_w * float(W64.sum()) if config.l1_w else 0.0
    if config.l2_w:
        total += 0.5 * config.l2_w * float(np.einsum("ij,ij->", W64, W64))
    return total + config.l1_h * h_sum + 0.5 * config.l2_h * h_sq


def squared_error(xx: float, part: dict[str, Any], a: int, G: np.ndarray) -> float:
    """``‖X − WH‖²`` on the observed entries of slot ``a``, by the Gram trick (float64)."""
    quad = float(np.vdot(G, part["HHt"][a]))  # Σ G ∘ HHᵀ (both C-ordered k × k)
    if "quad_removed" in part:
        quad -= float(part["quad_removed"][a])
    return max(xx - 2.0 * float(part["cross"][a]) + quad, 0.0)


def objective(
    config: NMFConfig, xx: float, part: dict[str, Any], a: int, G: np.ndarray, W: np.ndarray
) -> tuple[float, float]:
    """(objective, relative Frobenius error) of slot ``a`` of a group's summed statistics."""
    sq = squared_error(xx, part, a, G)
    data = float(part["div"][a]) if config.loss == "kl" else 0.5 * sq
    obj = data + penalty(config, W, float(part["hsum"][a].sum()), float(np.trace(part["HHt"][a])))
    return obj, (math.sqrt(sq / xx) if xx > 0 else 0.0)


def update_w(config: NMFConfig, W: np.ndarray, part: dict[str, Any]) -> np.ndarray:
    """The W step of one fit (m, k) or a stack (P, m, k), from summed statistics with
    W's leading axis: ``XHt`` (m, k), ``HHt`` (k, k) and with hidden entries
    ``rowG_removed`` (m, k, k); KL ``numer`` (m, k), ``hsum`` (k,), ``denomW_removed``.
    Returns the shape and dtype of W."""
    if W.ndim == 2:
        one = {key: np.asarray(v)[None] for key, v in part.items()}
        return update_w(config, W[None], one)[0]
    dtype = W.dtype
    W0 = W.transpose(0, 2, 1).astype(np.float64)  # (P, k, m): W's rows are the columns here
    if config.loss == "kl":
        denom = np.broadcast_to(part["hsum"][:, :, None], W0.shape)
        if "denomW_removed" in part:
            denom = denom - part["denomW_removed"].transpose(0, 2, 1)
        denom = denom + (config.l1_w + EPS)
        if config.l2_w:
            denom = denom + config.l2_w * W0
        new = W0 * part["numer"].transpose(0, 2, 1) / np.maximum(denom, EPS)
    else:
        G = part["HHt"]
        if "rowG_removed" in part:
            G = G[:, None] - part["rowG_removed"]
        B = part["XHt"].transpose(0, 2, 1)
        ops = NUMPY if "rowG_removed" in part else backend_of(config)
        args = (ops.array(G), ops.array(B), ops.array(W0), config.l1_w, config.l2_w, ops)
        new = ops.host(solve_nnls(config, *args), np.float64)
    return np.ascontiguousarray(new.transpose(0, 2, 1)).astype(dtype)


# -- many fits of one dataset --------------------------------------------------------------


class FitsModel:
    """Fits of plain, restarted, masked or many-rank NMF for ``run_alternating``; W steps
    wait for the next broadcast so that a group's fits share one vectorised solve.

    Parameters
    ----------
    fits : list of FitSpec
    Ws : list of ndarray, shape (m, k_f)
    xx : float
        ‖X‖² on the observed entries.
    h_start : list of float, optional
        Constant start of H per fit (MU, KL); default ``sqrt(mean / k)``.
    """

    step = staticmethod(fit_step)
    n_datasets = 1

    def __init__(
        self,
        config: NMFConfig,
        fits: list[FitSpec],
        Ws: list[np.ndarray],
        xx: float,
        h_start: list[float] | None = None,
        mean: float = 0.0,
    ):
        self.config = config
        self.fits = fits
        self.Ws = [np.ascontiguousarray(W) for W in Ws]
        self.xx = float(xx)
        self.n_runs = len(fits)
        if h_start is None:
            h_start = [float(np.sqrt(max(mean, 0.0) / s.k)) or 1.0 for s in fits]
        self.h_start = [float(v) for v in h_start]
        self.groups: dict[GroupKey, list[int]] = {}
        self.slot: list[tuple[GroupKey, int]] = []
        for f, spec in enumerate(fits):
            key = self.group_key(spec)
            members = self.groups.setdefault(key, [])
            self.slot.append((key, len(members)))
            members.append(f)
        self.test_errors = [math.nan] * len(fits)
        self._pending: list[int] = []
        self._casts: list[GroupCast] = []
        self._where: dict[int, tuple[int, int]] = {}
        self._partials: Any = None
        self._scores: dict[int, tuple[float, float]] | None = None

    def group_key(self, spec: FitSpec) -> GroupKey:
        padded = rank_buckets([s.k for s in self.fits])[spec.k]
        return (spec.variant, (padded,), self.config.masked_data or spec.rep >= 0)

    def bases(self, key: GroupKey, fits: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per dataset: the fits' stacked bases (m, A·k_d) and their Grams (A, k_d, k_d)."""
        Wa = [_pad(self.Ws[f], key[1][0]) for f in fits]
        W = np.ascontiguousarray(np.hstack(Wa)) if len(Wa) > 1 else Wa[0]
        return [W], [gram(W)[None] if len(Wa) == 1 else np.stack([gram(w) for w in Wa])]

    # -- broadcast and deferred W steps ----------------------------------------------------
    def broadcast(self, active: list[int], first: bool) -> StepCast:
        self.flush()
        by_group: dict[GroupKey, list[int]] = {}
        for f in active:
            by_group.setdefault(self.slot[f][0], []).append(f)
        casts: list[GroupCast] = []
        where: dict[int, tuple[int, int]] = {}
        for key, members in by_group.items():
            for a, f in enumerate(members):
                where[f] = (len(casts), a)
            W, grams = self.bases(key, members)
            everyone = self.groups[key]
            casts.append(
                GroupCast(
                    key=key,
                    members=tuple(everyone),
                    slots=np.array([self.slot[f][1] for f in members], dtype=np.int64),
                    reps=tuple(self.fits[f].rep for f in members),
                    W=W,
                    grams=grams,
                    h_start=np.array([self.h_start[f] for f in everyone]),
                )
            )
        self._casts, self._where, self._scores = casts, where, None
        return StepCast(self.config, casts, validate=first)

    def part(self, partials: Any, f: int) -> tuple[dict[str, Any], int]:
        """The summed statistics of fit f's group (dataset 0) and its position there."""
        ci, a = self._where[f]
        return partials["groups"][ci][0], a

    def flush(self) -> None:
        """Apply the deferred W steps, one vectorised solve per group."""
        if not self._pending:
            return
        by_cast: dict[int, list[int]] = {}
        for f in self._pending:
            by_cast.setdefault(self._where[f][0], []).append(f)
        for ci, fits in by_cast.items():
            part = self._partials["groups"][ci][0]
            where = [self._where[f][1] for f in fits]
            k = self._casts[ci].key[1][0]
            if where == list(range(len(self._casts[ci].slots))):
                stats = part  # every fit of the cast, in order: no gather
            else:
                pos = np.array(where)
                stats = {key: np.asarray(v)[pos] for key, v in part.items()}
            Ws = [_pad(self.Ws[f], k) for f in fits]
            new = update_w(self.config, Ws[0][None] if len(Ws) == 1 else np.stack(Ws), stats)
            for f, W in zip(fits, new, strict=True):
                self.Ws[f] = np.ascontiguousarray(W[:, : self.fits[f].k])
        self._pending = []

    # -- scores ----------------------------------------------------------------------------
    def _score_all(self, partials: Any) -> dict[int, tuple[float, float]]:
        scores = {}
        for f, (ci, a) in self._where.items():
            part = partials["groups"][ci][0]
            xx_ho = float(part["xx_ho"][a]) if "xx_ho" in part else 0.0
            G = self._casts[ci].grams[0][a]
            scores[f] = objective(self.config, self.xx - xx_ho, part, a, G, self.Ws[f])
            if self.fits[f].rep >= 0 and xx_ho > 0:
                self.test_errors[f] = math.sqrt(float(part["sse_test"][a]) / xx_ho)
        return scores

    def score(self, run: int, partials: Any, index: int) -> tuple[float, float]:
        if self._scores is None:
            self._partials = partials
            self._scores = self._score_all(partials)
        return self._scores[run]

    def advance(self, run: int, partials: Any, index: int) -> None:
        if not self.config.fixed_w:
            self._pending.append(run)

    # -- results and checkpoints -------------------------------------------------------------
    def block_h(self, state: Any, f: int) -> np.ndarray:
        """Fit f's H block (k_d × n_j) from a block state or an extracted one."""
        key, slot = self.slot[f]
        d = state.dataset if isinstance(state, BlockState) else state["dataset"]
        k = key[1][d] if len(key[1]) > 1 else self.fits[f].k
        H = state.H[key][slot] if isinstance(state, BlockState) else state["H"][key][slot]
        return H[:k]

    def extract_request(self, keep: list[int], labels: bool = True) -> Extract:
        wsum = {}
        for key, members in self.groups.items():
            k = max(key[1])
            wsum[key] = np.stack(
                [_pad(self.Ws[f], k).astype(np.float64).sum(axis=0) for f in members]
            )
        request: dict[GroupKey, list[int]] = {}
        for f in keep:
            key, slot = self.slot[f]
            request.setdefault(key, []).append(slot)
        return Extract(wsum=wsum, keep=request, labels=labels)

    def get_state(self) -> dict[str, Any]:
        """The global factors (deferred W steps applied), for a checkpoint."""
        self.flush()
        return {"Ws": list(self.Ws), "h_start": list(self.h_start), "xx": float(self.xx)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.Ws = [np.ascontiguousarray(W) for W in state["Ws"]]
        self.h_start = [float(v) for v in state["h_start"]]
        self.xx = float(state["xx"])

    def pack_states(self, states: Iterable[Any]) -> tuple[Iterator[Any], dict[str, Any]]:
        """Block states as lists of arrays (what a checkpoint stores) and their layout.

        Lazy, so that a checkpoint takes the states one at a time: the layout's
        ``datasets`` is filled as the packed states are read (the checkpoint writer
        stores the model state, this layout in it, after the block states).
        """
        keys = list(self.groups)
        datasets: list[int | None] = []

        def packed() -> Iterator[Any]:
            for s in states:
                datasets.append(None if s is None else int(s.dataset))
                yield None if s is None else [s.H.get(key) for key in keys]

        layout = {"keys": [[v, list(ks), bool(mk)] for v, ks, mk in keys], "datasets": datasets}
        return packed(), layout

    def unpack_states(self, packed: Iterable[Any], layout: dict[str, Any]) -> Iterator[Any]:
        """The block states of ``pack_states``' output, one at a time."""
        keys = [(v, tuple(int(x) for x in ks), bool(mk)) for v, ks, mk in layout["keys"]]
        for j, (arrays, d) in enumerate(zip(packed, layout["datasets"], strict=True)):
            if arrays is None:
                yield None
                continue
            H = {key: a for key, a in zip(keys, arrays, strict=True) if a is not None}
            yield BlockState(int(d), H, index=j)


def start_factors(
    fits: list[FitSpec], m: int, mean: float, seed: int | None, dtype: np.dtype
) -> list[np.ndarray]:
    """A random W per fit, seeded by (seed, k, variant, rep, run) alone."""
    base = 0 if seed is None else int(seed)
    out = []
    for spec in fits:
        key = [base, spec.k, VARIANTS.index(spec.variant), spec.rep + 1, spec.run]
        out.append(random_w(m, spec.k, mean, np.random.default_rng(key), dtype))
    return out


@dataclass
class MultiFitOutcome:
    """Everything a multi-fit leaves: per fit scores, W, labels, and the kept H."""

    fits: list[FitSpec]
    Ws: list[np.ndarray]
    objectives: list[list[float]]
    relative_errors: list[list[float]]
    n_iter: list[int]
    converged: list[bool]
    test_errors: list[float]
    labels: dict[int, Any]  # fit index -> (n,) int16, or ``StoredLabels`` (one row)
    H: dict[int, np.ndarray]  # fit index -> (k, n) for the kept fits
    xx: float
    n_obs: float
    n_missing: float
    total_s: float
    iter_times: list[float] = field(default_factory=list)


def best_fits(fits: list[FitSpec], finals: list[float]) -> list[int]:
    """The lowest-objective fit of every (variant, k) among the fits of all entries."""
    best: dict[tuple[str, int], int] = {}
    for f, spec in enumerate(fits):
        vk = (spec.variant, spec.k)
        if spec.rep < 0 and (vk not in best or finals[f] < finals[best[vk]]):
            best[vk] = f
    return sorted(best.values())


def collect(
    executor: Any, model: FitsModel, keep: list[int], labels: bool = True, dtype: Any = None
):
    """Bring back the kept fits' H (k × n) and, when asked, every fit's sample labels.

    When the executor keeps its block states in a scratch store (``spill``), each H is
    written block by block to a scratch Zarr array (in ``dtype``, default the states') and
    returned as that array: no k × n is assembled in memory.
    """
    executor.map_reduce(extract_step, model.extract_request(keep, labels), read_x=False)
    if getattr(executor, "stream_states", False):
        return _collect_to_storage(executor, model, keep, labels, dtype)
    states = list(executor.states())
    H = {f: np.hstack([model.block_h(s, f) for s in states]) for f in keep}
    lab: dict[int, np.ndarray] = {}
    if labels:
        for f, spec in enumerate(model.fits):
            key, slot = model.slot[f]
            if spec.rep < 0:
                lab[f] = np.concatenate([s["labels"][key][slot] for s in states])
    return H, lab


class StoredLabels:
    """Rows of a scratch array of sample labels, read like an (R, n) array by columns.

    What a multi-fit leaves for the labels of its runs when its block states were kept
    out of memory: ``labels[:, a:b]`` reads columns a..b of every row (an (R, b − a)
    ndarray), ``row(i)`` one run's (n,) labels; nothing of size R × n is held.
    """

    def __init__(self, array: Any, rows: list[int]):
        self.array = array
        self.rows = [int(r) for r in rows]
        self.shape = (len(self.rows), int(array.shape[1]))
        self.dtype = np.dtype(array.dtype)

    def take(self, rows: list[int]) -> StoredLabels:
        """The labels of ``rows`` (positions in this one) as stored labels."""
        return StoredLabels(self.array, [self.rows[r] for r in rows])

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        every, cols = key
        if every != slice(None):
            raise IndexError("stored labels are read by columns: labels[:, a:b]")
        rows = self.rows
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return np.asarray(self.array[rows[0] : rows[0] + len(rows), cols])
        return np.asarray(self.array.oindex[rows, cols])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


def label_matrix(labels: dict[int, Any], fits: list[int]) -> Any:
    """The (R, n) labels of ``fits``: an ndarray, or ``StoredLabels`` when they are in a
    scratch array (the multi-fit's states were kept out of memory)."""
    first = labels[fits[0]]
    if isinstance(first, StoredLabels):
        rows = [r for f in fits for r in labels[f].rows]
        return StoredLabels(first.array, rows)
    return np.stack([labels[f] for f in fits])


def _collect_to_storage(executor: Any, model: FitsModel, keep: list[int], labels: bool, dtype: Any):
    source = executor.source
    n = source.shape[1]
    bounds = source.block_bounds
    widest = max(b - a for a, b in bounds)
    where = getattr(executor, "scratch", None)
    H: dict[int, Any] = {}
    # Every run's labels in one scratch array, a row per run: n values per run is what
    # the states out of memory are for, so they do not come back to memory either.
    runs = [f for f, spec in enumerate(model.fits) if spec.rep < 0] if labels else []
    store = None
    for j, state in enumerate(executor.states()):
        a, b = bounds[j]
        for f in keep:
            block = model.block_h(state, f)
            if f not in H:
                H[f] = columns_array(
                    where,
                    (block.shape[0], n),
                    dtype if dtype is not None else block.dtype,
                    widest,
                )
            H[f][:, a:b] = block
        if runs:
            rows = []
            for f in runs:
                key, slot = model.slot[f]
                rows.append(state["labels"][key][slot])
            if store is None:
                store = columns_array(where, (len(runs), n), rows[0].dtype, widest, "labels")
            store[:, a:b] = np.stack(rows)
    lab: dict[int, Any] = {f: StoredLabels(store, [i]) for i, f in enumerate(runs)}
    return H, lab


def run_multifit(
    executor: Any,
    fits: list[FitSpec],
    config: NMFConfig,
    *,
    dtype: np.dtype,
    max_iter: int,
    tol: float,
    seed: int | None,
    Ws: list[np.ndarray] | None = None,
    keep: list[int] | None = None,
    progress: Any = None,
    callback: Any = None,
) -> MultiFitOutcome:
    """Validate, start (``Ws`` or ``start_factors``), iterate all ``fits`` together, then
    bring back labels and the H of ``keep`` (default ``best_fits``)."""
    stats = executor.map_reduce(fit_stats_step, None)["datasets"][0]
    require_entries(stats["xx"])
    m, _ = executor.source.shape
    mean = float(stats["xsum"]) / max(1.0, float(stats["n_obs"]))
    if Ws is None:
        Ws = start_factors(fits, m, mean, seed, dtype)
    model = FitsModel(config, fits, Ws, float(stats["xx"]), mean=mean)
    trace = run_alternating(
        model, executor, max_iter=max_iter, tol=tol, callback=callback, progress=progress
    )
    if keep is None:
        keep = best_fits(fits, [hist[-1] for hist in trace.objectives])
    H, labels = collect(executor, model, keep)
    return MultiFitOutcome(
        fits=fits,
        Ws=model.Ws,
        objectives=trace.objectives,
        relative_errors=trace.relative_errors,
        n_iter=trace.n_iter,
        converged=trace.converged,
        test_errors=model.test_errors,
        labels=labels,
        H={
            f: h.astype(dtype, copy=False) if isinstance(h, np.ndarray) else h for f, h in H.items()
        },
        xx=float(stats["xx"]),
        n_obs=float(stats["n_obs"]),
        n_missing=float(stats["n_missing"]),
        total_s=trace.total_s,
        iter_times=trace.iter_times,
    )
