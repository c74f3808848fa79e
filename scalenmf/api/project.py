"""``project``: coefficients of new samples on a fixed basis, with QC and transfer learning."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from scalenmf.api._common import (
    ClusterOptions,
    best_run,
    check_rank,
    checked_params,
    cluster_options_of,
    gpu_dtype,
    iterate,
    kernel_backend,
    model_config,
    open_input,
    result_params,
    run_info,
    work_dtype,
)
from scalenmf.engine.executor import Executor
from scalenmf.engine.loop import IterationInfo
from scalenmf.io.combine import RowOrderedSource, row_order
from scalenmf.io.errors import InputError
from scalenmf.io.source import MatrixSource, as_str_array
from scalenmf.io.state_store import columns_array
from scalenmf.kernels.quantiles import chunked_median
from scalenmf.models.init import random_w
from scalenmf.models.linked import LinkedLayout, LinkedModel
from scalenmf.models.memory import FitShape, projection_sample_bytes, projection_spills
from scalenmf.models.step import dataset_totals, fit_stats_step, initial_states
from scalenmf.models.transfer import ProjectedBlock, ProjectionPlan, project_step
from scalenmf.results.linked import ProjectionResult
from scalenmf.validation import NMF_RULES, Number, OneOf

log = logging.getLogger("scalenmf")

#: The modified z-score cut-off of Iglewicz & Hoaglin: beyond it a value is an outlier.
ROBUST_Z = 3.5

PROJECT_RULES: dict[str, Any] = {
    **NMF_RULES,
    "k_new": Number(0, math.inf, integer=True),
    "bootstrap": Number(0, math.inf, integer=True),
    "resample": OneOf(("poisson", "multinomial")),
    "ci": Number(0.0, 1.0, low_open=True),
}


def _basis(W: Any, row_labels: Any) -> tuple[np.ndarray, np.ndarray | None, Any, dict[str, Any]]:
    """``(W, its row labels, factor labels, params of the fit)`` from an array or a result."""
    params: dict[str, Any] = {}
    factor_labels = None
    if isinstance(W, (str, os.PathLike)):
        from scalenmf.results.nmf import load

        W = load(W, lazy=True)  # W, labels and params: the fit's H stays on disk
    if hasattr(W, "W") and not isinstance(W, np.ndarray):
        params = dict(getattr(W, "params", {}) or {})
        factor_labels = getattr(W, "factor_labels", None)
        if row_labels is None:
            row_labels = getattr(W, "row_labels", None)
        W = W.W
    arr = np.asarray(W)
    if arr.ndim != 2:
        raise InputError(f"W must be 2-D (features × factors); got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"W is empty (shape {arr.shape[0]}×{arr.shape[1]})")
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"W must hold numbers; got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise InputError("W contains NaN or infinite values")
    if arr.min() < 0:
        raise InputError("W contains negative values; a basis must be non-negative")
    if arr.shape[1] > arr.shape[0]:
        raise ValueError(
            f"W has more factors ({arr.shape[1]}) than features ({arr.shape[0]}); a basis is "
            "features × factors (was a data matrix given as the basis?)"
        )
    if np.any(arr.sum(axis=0) == 0):
        raise InputError("W has an all-zero column; such a factor explains nothing")
    labels = None if row_labels is None else as_str_array(row_labels)
    if labels is not None and labels.shape != (arr.shape[0],):
        raise InputError(f"row_labels have length {labels.shape[0]}, W has {arr.shape[0]} rows")
    return arr, labels, factor_labels, params


def align_to_basis(
    source: MatrixSource, W_labels: np.ndarray | None, m: int, drop_extra: bool
) -> MatrixSource:
    """The new data with its rows in the basis's order (by label), or a clear error."""
    order = row_order(
        source.row_labels if W_labels is not None else None,
        W_labels,
        m,
        what="the new data",
        drop_extra=drop_extra,
    )
    if order is not None:
        log.info("rows of the new data aligned to the basis by label")
        return RowOrderedSource(source, order)
    if source.shape[0] != m:
        raise InputError(
            f"the new data has {source.shape[0]} features but W has {m} rows"
            + ("" if W_labels is not None else " (and no feature labels to align them by)")
        )
    return source


def novelty_flags(
    cosine: Any, rel: Any, below: float | None, z_above: float | None, *, where: Any = None
) -> tuple[Any, dict[str, Any]]:
    """Samples the basis explains poorly: low cosine, or a relative error that is an outlier.

    The outlier rule is the modified z-score ``0.6745 (e − median) / MAD`` of the relative
    errors of the batch (Iglewicz & Hoaglin), flagged above ``z_above``.

    ``cosine`` and ``rel`` (n,) are ndarrays, or arrays in storage (a projection too large
    to hold its per-sample figures): then they are read a chunk at a time, the median and
    MAD found by ``chunked_median`` (the same values as ``np.median``), and the flags
    written to a scratch array in ``where`` (default location when None) and returned as it.
    """
    stored = not isinstance(rel, np.ndarray) or not isinstance(cosine, np.ndarray)
    n = int(rel.shape[0])
    step = int(rel.chunks[0]) if stored else max(1, n)

    def pieces() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a in range(0, n, step):
            yield np.asarray(cosine[a : a + step]), np.asarray(rel[a : a + step])

    med = mad = 0.0
    if z_above is not None:
        if stored:
            med = chunked_median(lambda: (e[np.isfinite(c)] for c, e in pieces()))
            mad = chunked_median(lambda: (np.abs(e[np.isfinite(c)] - med) for c, e in pieces()))
        elif np.isfinite(cosine).any():
            e = rel[np.isfinite(cosine)]
            med = float(np.median(e))
            mad = float(np.median(np.abs(e - med)))
    flags = columns_array(where, (n,), bool, step, "novel") if stored else None
    parts: list[np.ndarray] = []
    n_low = n_outlier = 0
    for a, (c, e) in zip(range(0, n, step), pieces(), strict=True):
        finite = np.isfinite(c)
        low = np.zeros(c.shape, dtype=bool)
        if below is not None:
            low = finite & (c < below)
        outlier = np.zeros(c.shape, dtype=bool)
        if z_above is not None and mad > 0:
            z = np.zeros(c.shape)
            z[finite] = 0.6745 * (e[finite] - med) / mad
            outlier = finite & (z > z_above)
        n_low += int(low.sum())
        n_outlier += int(outlier.sum())
        if flags is not None:
            flags[a : a + c.shape[0]] = low | outlier
        else:
            parts.append(low | outlier)
    rule = {
        "cosine_below": below,
        "robust_z_above": z_above,
        "n_low_cosine": n_low,
        "n_outlier_error": n_outlier,
    }
    if flags is not None:
        return flags, rule
    return (parts[0] if parts else np.zeros(0, dtype=bool)), rule


def project(
    W: Any,
    X_new: Any,
    *,
    loss: str | None = None,
    l1_h: float = 0.0,
    l2_h: float = 0.0,
    solver: str | None = None,
    nnls: str = "bpp",
    k_new: int = 0,
    row_labels: Any = None,
    drop_extra_features: bool = False,
    bootstrap: int = 0,
    resample: str = "poisson",
    ci: float = 0.9,
    novelty_cosine: float | None = 0.9,
    novelty_z: float | None = ROBUST_Z,
    max_iter: int = 1000,
    tol: float | None = None,
    transfer_max_iter: int = 200,
    transfer_tol: float = 1e-5,
    seed: int | None = 0,
    n_runs: int = 1,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    block_cols: Any = None,
    dtype: Any = None,
    threads: int | None = None,
    progress: Any = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    scheduler_file: str | None = None,
    security: Any = None,
    connect_timeout: str | float | None = None,
    scratch: Any = None,
    backend: str | None = None,
    device: str | None = None,
    gpu_memory_limit: int | str | None = None,
) -> ProjectionResult:
    """Coefficients H of new samples for a fixed basis W, with per-sample quality control.

    Solves, for every sample x (column of X_new) independently,
    ``min_{h ≥ 0} ½‖x − W h‖² + l1_h·Σh + ½ l2_h‖h‖²`` (``loss="kl"``: ``D(x ‖ W h)``),
    out of core: every block is solved to convergence while it is in memory, so X_new is
    read once. With ``k_new = r`` it is linked transfer learning (seed 003, eq. 7):
    ``min ‖X − [W U] [H; V]‖²`` with W fixed and r new factors U learned for what W does
    not explain.

    Parameters
    ----------
    W : ndarray (m, k), NMFResult, LinkedNMFResult or path of a result store
        The basis. A result brings its feature labels (and its loss, when ``loss`` is not
        given).
    X_new : path, ndarray, scipy.sparse matrix, dask array or MatrixSource, shape (m', n)
        New samples. When both have feature labels, rows are aligned to W's by label
        (for instance 96 channels in another order); a feature W lacks, or a W feature
        X_new lacks, is an error.
    loss : {"frobenius", "kl"}, optional
        Default: the loss of the fit W came from, else Frobenius.
    l1_h, l2_h : float
        Penalties on H.
    solver : {"als", "hals", "mu"}, optional
        Frobenius: ``als`` (exact NNLS; default) or the HALS / MU updates iterated to
        ``tol``. KL: multiplicative updates.
    nnls : {"bpp", "cd"}
        The exact NNLS for ``als``: block principal pivoting (default; exact, vectorised
        over the samples) or coordinate descent to ``tol``. The alternating iterations of
        transfer learning use block principal pivoting; its final projection uses this.
    k_new : int, default 0
        New factors to learn alongside W (transfer learning).
    row_labels : sequence of str, optional
        Feature labels of W (default: those of the result W came from).
    drop_extra_features : bool
        Ignore features of X_new that W does not have, instead of refusing them.
    bootstrap : int, default 0
        Resamples of X_new for percentile intervals of H (0: none).
    resample : {"poisson", "multinomial"}
        How counts are resampled: ``x* ~ Poisson(x)`` or, keeping every sample's total,
        ``x* ~ Multinomial(Σx, x/Σx)`` (the SigProfiler-style bootstrap).
    ci : float, default 0.9
        Central probability of the intervals.
    novelty_cosine : float or None, default 0.9
        A sample whose reconstruction by W has a lower cosine is flagged novel.
    novelty_z : float or None, default 3.5
        A sample whose relative error has a higher modified z-score in the batch is
        flagged novel.
    max_iter, tol : int, float
        Per-block inner iterations (coordinate sweeps, MU steps) and their tolerance: a
        sample is done when no coefficient moves more than ``tol`` times its largest
        (MU), or when its projected gradient is within ``tol`` (Frobenius coordinate
        descent: of ``max|b|``; KL with the compiled loops, coordinate descent with
        Newton steps: of each coefficient's scale ``ΣW_t + l1``). Default ``tol``: 1e-10
        for Frobenius coordinate descent, 1e-6 for KL and multiplicative updates (BPP
        needs no tolerance).
    transfer_max_iter, transfer_tol : int, float
        Outer iterations of transfer learning (``k_new > 0``).
    seed : int or None
        Seeds the bootstrap and the start of U.
    n_runs : int
        Restarts of transfer learning.
    scheduler, workers, memory_limit, block_cols, dtype, threads, progress, callback,
    scheduler_file, security, connect_timeout, scratch, backend, device, gpu_memory_limit
        As in ``scalenmf.nmf``.

    Returns
    -------
    ProjectionResult
        ``H`` (k, n), ``cosine``, ``relative_error``, ``novel`` (n,), ``explained``;
        ``U`` (m, r), ``V`` (r, n), ``new_share`` with ``k_new``; ``H_lower`` /
        ``H_upper`` with ``bootstrap``.

    Examples
    --------
    >>> import numpy as np, scalenmf
    >>> rng = np.random.default_rng(0)
    >>> W = rng.gamma(1.0, 1.0, (30, 3))
    >>> X = rng.poisson(W @ rng.gamma(1.0, 5.0, (3, 50))).astype(float)
    >>> res = scalenmf.project(W, X)
    >>> res.H.shape, res.cosine.shape
    ((3, 50), (50,))
    """
    t0 = time.perf_counter()
    basis, W_labels, factor_labels, fit_params = _basis(W, row_labels)
    if loss is None:
        loss = str(fit_params.get("loss") or "frobenius")
    p = checked_params(
        PROJECT_RULES,
        solver,
        loss=loss,
        nnls=nnls,
        l1_h=l1_h,
        l2_h=l2_h,
        k_new=k_new,
        bootstrap=bootstrap,
        resample=resample,
        ci=ci,
        max_iter=max_iter,
        tol=default_tol(tol, solver, loss),
        seed=seed,
        n_runs=n_runs,
        workers=workers,
    )
    for name, value in (("novelty_cosine", novelty_cosine), ("novelty_z", novelty_z)):
        if value is not None:
            Number().check(name, value)
    p["novelty_cosine"], p["novelty_z"] = novelty_cosine, novelty_z
    p["transfer_max_iter"] = int(
        NMF_RULES["max_iter"].check("transfer_max_iter", transfer_max_iter)
    )
    p["transfer_tol"] = float(NMF_RULES["tol"].check("transfer_tol", transfer_tol))
    p["seed"] = 0 if p["seed"] is None else p["seed"]
    cluster = cluster_options_of(locals())
    source = align_to_basis(
        open_input(X_new, block_cols=block_cols), W_labels, basis.shape[0], drop_extra_features
    )
    check_rank(1, source.shape)
    if p["k_new"]:
        check_rank(basis.shape[1] + p["k_new"], source.shape)
    where = kernel_backend(backend, device, gpu_memory_limit)
    p.update(backend=where["backend"], device=where["device"])
    dtype_ = work_dtype(gpu_dtype(dtype, where["device"]), source)
    basis = np.ascontiguousarray(basis, dtype=dtype_)
    source, cluster = projection_memory(
        cluster, source, basis.shape[1], p, dtype_.itemsize, fixed_blocking=block_cols is not None
    )
    with cluster.executor(source) as executor:
        return project_on_executor(
            executor, source, basis, p, dtype_, W_labels, factor_labels, progress, callback, t0
        )


def projection_memory(
    cluster: ClusterOptions,
    source: MatrixSource,
    k: int,
    p: dict[str, Any],
    itemsize: int,
    *,
    fixed_blocking: bool = False,
) -> tuple[MatrixSource, ClusterOptions]:
    """The memory plan of a projection: blocking, X held or not, the output held or not.

    The blocking and concurrency are the fit's plan for the same rank (``fit_memory``;
    it refuses a limit too small for one block at a time). On top of it: a projection
    without transfer learning reads X once, so X is never held (a cache would only add
    X's size to the peak); and its per-sample output (H, its bootstrap bounds, the
    per-sample figures and flags) goes to scratch arrays block by block when in memory
    it would pass ``STATE_SHARE`` of the limit (``projection_spills``).
    """
    rows = k + p["k_new"]
    shape = FitShape(rows, p["n_runs"] if p["k_new"] else 1, p["loss"], "random", itemsize)
    source, planned = cluster.fit_memory(source, shape, fixed_blocking=fixed_blocking)
    keep = planned.keep_x if p["k_new"] else False
    spill = planned.spill_states
    if not cluster.workers and cluster.scheduler is None and not cluster.scheduler_file:
        per_sample = projection_sample_bytes(rows, itemsize, bool(p["bootstrap"]), bool(p["k_new"]))
        out = projection_spills(source.shape[1], per_sample, cluster.memory_limit)
        if out is not None:
            spill = bool(spill) or out
    log.info("projection memory plan: keep X %s, output out of memory %s", keep, spill)
    return source, dataclasses.replace(planned, keep_x=keep, spill_states=spill)


def project_on_executor(
    executor: Executor,
    source: MatrixSource,
    basis: np.ndarray,
    p: dict[str, Any],
    dtype: np.dtype,
    W_labels: np.ndarray | None,
    factor_labels: Any,
    progress: Any,
    callback: Callable[[IterationInfo], Any] | None,
    t0: float,
) -> ProjectionResult:
    """``project`` on an open executor, from checked parameters ``p`` (``update`` solves
    the new samples' H with it on the executor it then refits on)."""
    k = basis.shape[1]
    plan = ProjectionPlan(
        W=basis,
        n_basis=k,
        loss=p["loss"],
        solver=p["solver"],
        nnls=p["nnls"],
        l1=p["l1_h"],
        l2=p["l2_h"],
        max_iter=p["max_iter"],
        tol=p["tol"],
        bootstrap=p["bootstrap"],
        resample=p["resample"],
        ci=p["ci"],
        seed=p["seed"],
        backend=p["backend"],
        device=p["device"],
    )
    history: list[float] = []
    n_iter, converged = 1, True
    if p["k_new"]:
        full, run, history, n_iter, converged = _transfer(
            executor, source, basis, p, dtype, progress, callback
        )
        plan = _replace(plan, W=full, solve=False, run=run)
    else:
        executor.set_states([ProjectedBlock(index=j) for j in range(source.n_blocks)])
    t_loop = time.perf_counter()
    totals = executor.map_reduce(project_step, plan)
    if totals["xx"] == 0:
        raise InputError("the new data is all zeros; there is nothing to project")
    got = _gather_blocks(executor, source, dtype, p["bootstrap"])
    H_full, cosine, rel = got["H"], got["cosine"], got["relative_error"]
    if p["k_new"]:
        bcos, brel = got["basis_cosine"], got["basis_relative_error"]
        new_share = got["new_share"]
    else:
        bcos, brel, new_share = cosine, rel, None
    novel, rule = novelty_flags(
        bcos, brel, p["novelty_cosine"], p["novelty_z"], where=getattr(executor, "scratch", None)
    )
    xx = float(totals["xx"])
    recon = float(totals["recon_sum"])
    explained = {
        "basis_r2": 1.0 - float(totals["basis_sq_err"]) / xx,
        "total_r2": 1.0 - float(totals["sq_err"]) / xx,
        "basis_count_share": (recon - float(totals["new_sum"])) / recon if recon > 0 else 0.0,
        "new_count_share": float(totals["new_sum"]) / recon if recon > 0 else 0.0,
    }
    data = float(totals["div"]) if p["loss"] == "kl" else 0.5 * float(totals["sq_err"])
    objective = data + p["l1_h"] * totals["h_l1"] + 0.5 * p["l2_h"] * totals["h_l2"]
    lower = upper = None
    if p["bootstrap"]:
        lower, upper = got["H_lower"], got["H_upper"]
    U = V = None
    if p["k_new"]:
        U = np.ascontiguousarray(plan.W[:, k:])
        V = np.ascontiguousarray(H_full[k:])
        if lower is not None and upper is not None:
            lower, upper = _rows(lower, k), _rows(upper, k)
    return ProjectionResult(
        H=_rows(H_full, k),
        W=basis,
        cosine=cosine,
        relative_error=rel,
        novel=novel,
        novelty=rule,
        basis_cosine=bcos,
        basis_relative_error=brel,
        explained=explained,
        objective=float(objective),
        overall_relative_error=float(np.sqrt(max(float(totals["sq_err"]), 0.0) / xx)),
        params=result_params(p),
        U=U,
        V=V,
        new_share=new_share,
        H_lower=lower,
        H_upper=upper,
        row_labels=W_labels if W_labels is not None else source.row_labels,
        col_labels=source.col_labels,
        factor_labels=factor_labels,
        loss_history=history or [float(objective)],
        n_iter=n_iter,
        converged=converged,
        timings={"total_s": time.perf_counter() - t0, "project_s": time.perf_counter() - t_loop},
        info=run_info(source, executor),
    )


def default_tol(tol: float | None, solver: str | None, loss: str) -> float:
    """``tol`` of a projection: given, or 1e-6 for multiplicative updates, else 1e-10."""
    if tol is not None:
        return tol
    iterative = str(solver).lower() == "mu" or str(loss).lower() in ("kl", "kullback-leibler")
    return 1e-6 if iterative else 1e-10


def _replace(plan: ProjectionPlan, **changes: Any) -> ProjectionPlan:
    return dataclasses.replace(plan, **changes)


#: Per-sample columns of a ``ProjectedBlock`` (the H-like ones first: (rows, n_j) each).
_MATRICES = ("H", "H_lower", "H_upper")
_VECTORS = ("cosine", "relative_error", "basis_cosine", "basis_relative_error", "new_share")


def _rows(H: Any, k: int) -> Any:
    """The first ``k`` rows of H: a contiguous ndarray, or a stored H itself when it has
    no more (a stored H with more rows, of a transfer, is read: its extra rows are V)."""
    if not isinstance(H, np.ndarray) and H.shape[0] == k:
        return H
    return np.ascontiguousarray(np.asarray(H[:k]))


def _gather_blocks(
    executor: Executor, source: MatrixSource, dtype: np.dtype, bootstrap: bool
) -> dict[str, Any]:
    """The blocks' per-sample results joined along samples, one block state at a time.

    When the executor keeps its block states out of memory (``stream_states``: the memory
    plan found them too large), H, its bootstrap bounds and the per-sample figures are
    written block by block to scratch Zarr arrays and returned as those: nothing of size
    n is held in memory.
    """
    n = source.shape[1]
    spill = getattr(executor, "stream_states", False)
    bounds = source.block_bounds
    widest = max(b - a for a, b in bounds)
    matrices = _MATRICES if bootstrap else _MATRICES[:1]
    out: dict[str, Any] = {}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*matrices, *_VECTORS)}
    for j, block in enumerate(executor.states()):
        a, b = bounds[j]
        for name in parts:
            value = getattr(block, name)
            if value is None:
                continue
            if spill:
                if name not in out:
                    where = getattr(executor, "scratch", None)
                    shape = (value.shape[0], n) if name in matrices else (n,)
                    kind = dtype if name in matrices else value.dtype
                    out[name] = columns_array(where, shape, kind, widest, name)
                out[name][..., a:b] = value
            else:
                parts[name].append(value)
    for name, values in parts.items():
        if name in out:
            continue
        if not values:
            out[name] = None
        elif name in matrices:
            out[name] = np.hstack(values).astype(dtype, copy=False)
        else:
            out[name] = np.concatenate(values)
    return out


def _transfer(
    executor: Executor,
    source: MatrixSource,
    basis: np.ndarray,
    p: dict[str, Any],
    dtype: np.dtype,
    progress: Any,
    callback: Callable[[IterationInfo], Any] | None,
) -> tuple[np.ndarray, int, list[float], int, bool]:
    """Linked transfer learning: learn U (and H, V) with W held fixed (seed eq. 7)."""
    k, r, R = basis.shape[1], p["k_new"], p["n_runs"]
    layout = LinkedLayout(k, (r,), n_fixed=k)
    # Penalties on H only (p has no l1_w / l2_w); the alternating steps use the block step's
    # default exact NNLS whatever ``nnls`` says: that one is for the final projection.
    config = model_config({**p, "nnls": "bpp"}, k=k + r, backend=p["backend"], device=p["device"])
    executor.set_states(initial_states([0] * source.n_blocks))
    stats = dataset_totals(executor.map_reduce(fit_stats_step, None), 1)
    if stats["xx"][0] == 0:
        raise InputError("the new data is all zeros; there is nothing to project")
    m, n = source.shape
    mean = float(stats["xsum"][0]) / max(1, m * n)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(R)]
    Ws = [np.hstack([basis, random_w(m, r, mean, rng, dtype)]) for rng in rngs]
    start = float(np.sqrt(mean / (k + r))) or 1.0
    model = LinkedModel(config, layout, Ws, [start] * R, stats["xx"])
    trace = iterate(
        model,
        executor,
        max_iter=p["transfer_max_iter"],
        tol=p["transfer_tol"],
        desc=f"transfer k={k}+{r}",
        progress=progress,
        callback=callback,
    )
    best = best_run(trace)
    return (
        model.Ws[best],
        best,
        [float(v) for v in trace.objectives[best]],
        int(trace.n_iter[best]),
        bool(trace.converged[best]),
    )
