"""Public functions for several datasets: ``lnmf`` (and jNMF), ``inmf`` and ``lnmf_ranks``."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalenmf.api._common import (
    best_run,
    check_rank,
    checked_params,
    cluster_options_of,
    fit_summary,
    fit_timings,
    gpu_dtype,
    iterate,
    kernel_backend,
    model_config,
    result_params,
    run_info,
    run_rows,
    work_dtype,
)
from scalenmf.engine.executor import Executor
from scalenmf.engine.loop import IterationInfo, run_alternating
from scalenmf.io.combine import ChainedSource
from scalenmf.io.errors import InputError
from scalenmf.io.matrix import as_source
from scalenmf.models.init import random_w
from scalenmf.models.linked import INMFModel, LinkedLayout, LinkedModel
from scalenmf.models.step import NMFConfig, dataset_totals, fit_stats_step, initial_states
from scalenmf.results.linked import DatasetInfo, INMFResult, LinkedNMFResult
from scalenmf.validation import NMF_RULES, Number, OneOf

log = logging.getLogger("scalenmf")

RANK = Number(0, math.inf, integer=True)
LINKED_INITS = OneOf(("jnmf", "random"))


# -- shared plumbing --------------------------------------------------------------------


def _name_of(obj: Any, i: int) -> str:
    if isinstance(obj, (str, os.PathLike)):
        name = Path(obj).name
        for suffix in (".zarr", ".h5ad", ".npy", ".mtx", ".csv", ".tsv", ".txt", ".gz"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        return name or f"dataset_{i + 1}"
    return f"dataset_{i + 1}"


def chain_datasets(
    datasets: Sequence[Any],
    names: Sequence[str] | None = None,
    *,
    block_cols: int | None = None,
    at_least: int = 2,
    what: str = "linked NMF",
) -> ChainedSource:
    """The datasets side by side as one column-blocked source (blocks never straddle).

    Parameters
    ----------
    datasets : sequence of path, ndarray, scipy.sparse matrix, dask array or MatrixSource
        Each features × its samples; feature labels, when all have them, are aligned to
        the first dataset's order.
    names : sequence of str, optional
        Dataset names (default: file names without extension, else ``dataset_1`` …).
    block_cols : int, optional
        Columns per block within every dataset.
    """
    if isinstance(datasets, (str, os.PathLike, np.ndarray)) or not isinstance(datasets, Sequence):
        raise TypeError(
            f"datasets must be a list of matrices or paths; got {type(datasets).__name__}"
        )
    if len(datasets) < at_least:
        raise ValueError(f"{what} needs at least {at_least} datasets; got {len(datasets)}")
    sources = [as_source(X) for X in datasets]
    if names is None:
        auto = [_name_of(X, i) for i, X in enumerate(datasets)]
        names = auto if len(set(auto)) == len(auto) else None
    chained = ChainedSource(sources, names)
    if block_cols is not None:
        chained = chained.reblock(
            int(Number(1, math.inf, integer=True).check("block_cols", block_cols))
        )
    return chained


def dataset_stats(executor: Executor, source: ChainedSource, n_runs: int) -> dict[str, Any]:
    """Set the block states and run the validating pass: ‖A_d‖² and ΣA_d per dataset."""
    executor.set_states(initial_states(source.block_dataset))
    stats = dataset_totals(executor.map_reduce(fit_stats_step, None), source.n_datasets)
    for d, name in enumerate(source.names):
        if stats["xx"][d] == 0:
            raise InputError(f"dataset {name!r} is all zeros; there is nothing to factorize")
    return stats


def _gather_h(
    executor: Executor, source: ChainedSource, model: LinkedModel, run: int
) -> list[np.ndarray]:
    """Every dataset's compact H (k_d × n_d) of run ``run``, from the block states."""
    per: list[list[np.ndarray]] = [[] for _ in range(source.n_datasets)]
    for state in executor.states():
        per[state.dataset].append(model.block_h(state, run))
    return [np.hstack(hs) for hs in per]


def _dataset_infos(source: ChainedSource, errors: np.ndarray) -> list[DatasetInfo]:
    return [
        DatasetInfo(name, a, b, float(errors[d]))
        for d, (name, (a, b)) in enumerate(zip(source.names, source.dataset_bounds, strict=True))
    ]


def _k_unique(k_unique: Any, n_datasets: int, name: str = "k_unique") -> tuple[int, ...]:
    """One rank per dataset from an integer (the same for all) or a sequence."""
    if isinstance(k_unique, (int, np.integer)) and not isinstance(k_unique, bool):
        values = [int(k_unique)] * n_datasets
    elif isinstance(k_unique, Sequence) and not isinstance(k_unique, str):
        values = list(k_unique)
    else:
        raise TypeError(f"{name} must be an integer or one integer per dataset; got {k_unique!r}")
    if len(values) != n_datasets:
        raise ValueError(f"{name} has {len(values)} entries for {n_datasets} datasets")
    return tuple(int(RANK.check(f"{name}[{d}]", v)) for d, v in enumerate(values))


# -- linked NMF -------------------------------------------------------------------------


def lnmf(
    datasets: Sequence[Any],
    k_shared: int,
    k_unique: int | Sequence[int],
    *,
    names: Sequence[str] | None = None,
    solver: str | None = None,
    loss: str = "frobenius",
    l1_w: float = 0.0,
    l1_h: float = 0.0,
    l2_w: float = 0.0,
    l2_h: float = 0.0,
    init: str = "jnmf",
    init_iter: int = 50,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = 0,
    n_runs: int = 1,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    progress: Any = None,
    block_cols: int | None = None,
    nnls: str = "bpp",
    dtype: Any = None,
    threads: int | None = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    scheduler_file: str | None = None,
    security: Any = None,
    connect_timeout: str | float | None = None,
    scratch: Any = None,
    backend: str | None = None,
    device: str | None = None,
    gpu_memory_limit: int | str | None = None,
) -> LinkedNMFResult:
    """Linked NMF: ``A_d ≈ W H_d + U_d V_d`` for datasets sharing their features.

    Minimises (seed 003, eq. 4) ``Σ_d ½‖A_d − [W U_d] [H_d; V_d]‖²_F`` (``loss="kl"``: the
    generalized KL divergence) plus the L1/L2 penalties of ``nmf`` (``*_w`` on W and every
    U_d, ``*_h`` on every H_d and V_d), over non-negative factors. It is NMF with the full
    basis ``[W | U_1 | … | U_K]`` and a block-structured H whose structural zeros are
    kept; every iteration reads each column block once. ``k_unique = 0`` for every
    dataset is joint NMF (jNMF).

    Parameters
    ----------
    datasets : list of path, ndarray, scipy.sparse matrix, dask array or MatrixSource
        A_1 … A_K, each features × its samples, all with the same features (aligned by
        label when every dataset has feature labels).
    k_shared : int
        Columns of the shared basis W (≥ 0).
    k_unique : int or list of int
        Columns of every U_d (one value for all, or one per dataset; 0 allowed).
    names : list of str, optional
        Dataset names (default: file names, else ``dataset_1`` …).
    init : {"jnmf", "random"}, default "jnmf"
        ``jnmf``: start from ``init_iter`` iterations of joint NMF at the total rank
        (NNDSVDA start), its factors sorted into W (those every dataset uses evenly) and
        the U_d (those one dataset uses most). ``random``: seeded random W and U_d (the
        seed's recipe; prone to local minima where a shared factor sits in every U_d).
        Restarts beyond the first (``n_runs > 1``) start at random.
    init_iter : int, default 50
        Iterations of the jNMF start.
    solver, loss, l1_w, l1_h, l2_w, l2_h, max_iter, tol, n_runs, scheduler, workers,
    memory_limit, progress, nnls, dtype, threads, callback, scheduler_file, security,
    connect_timeout, scratch, backend, device, gpu_memory_limit
        As in ``scalenmf.nmf``.
    seed : int or None
        Seeds the random start of W and every U_d.
    block_cols : int, optional
        Columns per block within every dataset.

    Returns
    -------
    LinkedNMFResult
        ``W`` (m, k_shared), ``H`` (list of k_shared × n_d), ``U`` (list of m × k_unique_d),
        ``V`` (list of k_unique_d × n_d), per-dataset relative errors in ``datasets``.

    Examples
    --------
    >>> import numpy as np, scalenmf
    >>> rng = np.random.default_rng(0)
    >>> A = rng.poisson(5.0, size=(40, 60)).astype(float)
    >>> B = rng.poisson(5.0, size=(40, 80)).astype(float)
    >>> res = scalenmf.lnmf([A, B], k_shared=2, k_unique=[1, 2], max_iter=20)
    >>> res.W.shape, [H.shape for H in res.H], [U.shape for U in res.U]
    ((40, 2), [(2, 60), (2, 80)], [(40, 1), (40, 2)])
    """
    p = checked_params(
        NMF_RULES,
        solver,
        loss=loss,
        nnls=nnls,
        l1_w=l1_w,
        l1_h=l1_h,
        l2_w=l2_w,
        l2_h=l2_h,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        n_runs=n_runs,
        workers=workers,
    )
    p["init"] = LINKED_INITS.check("init", init)
    p["init_iter"] = int(NMF_RULES["max_iter"].check("init_iter", init_iter))
    p["k_shared"] = int(RANK.check("k_shared", k_shared))
    cluster = cluster_options_of(locals())
    source = chain_datasets(datasets, names, block_cols=block_cols)
    p["k_unique"] = list(_k_unique(k_unique, source.n_datasets))
    layout = LinkedLayout(p["k_shared"], tuple(p["k_unique"]))
    _check_ranks(source, layout)
    where = kernel_backend(backend, device, gpu_memory_limit)
    dtype_ = work_dtype(gpu_dtype(dtype, where["device"]), source)
    config = model_config(p, k=layout.total, **where)
    with cluster.executor(source) as executor:
        return _fit_linked(source, executor, config, layout, p, dtype_, progress, callback)


def _check_ranks(source: ChainedSource, layout: LinkedLayout) -> None:
    m = source.shape[0]
    for d, (name, (a, b)) in enumerate(zip(source.names, source.dataset_bounds, strict=True)):
        k_d = layout.k_shared + layout.k_unique[d]
        if k_d == 0:
            raise ValueError(
                f"dataset {name!r} has no factors: k_shared + k_unique must be at least 1"
            )
        try:
            check_rank(k_d, (m, b - a))
        except ValueError as exc:
            raise ValueError(f"dataset {name!r}: {exc} (k_shared + k_unique = {k_d})") from exc


def _fit_linked(
    source: ChainedSource,
    executor: Executor,
    config: NMFConfig,
    layout: LinkedLayout,
    p: dict[str, Any],
    dtype: np.dtype,
    progress: Any,
    callback: Callable[[IterationInfo], Any] | None,
) -> LinkedNMFResult:
    t0 = time.perf_counter()
    R = p["n_runs"]
    m, n = source.shape
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(R)]
    stats = dataset_stats(executor, source, R)
    mean = float(stats["xsum"].sum()) / max(1, m * n)
    Ws = [random_w(m, layout.total, mean, rng, dtype) for rng in rngs]
    if p["init"] == "jnmf":
        Ws[0] = _joint_start(executor, source, layout, config, p, dtype)
        executor.set_states(initial_states(source.block_dataset))
    start = float(np.sqrt(mean / layout.total)) or 1.0
    model = LinkedModel(config, layout, Ws, [start] * R, stats["xx"])
    t_init = time.perf_counter() - t0
    ks = "+".join(map(str, layout.k_unique))
    trace = iterate(
        model,
        executor,
        max_iter=p["max_iter"],
        tol=p["tol"],
        desc=f"lnmf k={layout.k_shared}+({ks})",
        progress=progress,
        callback=callback,
    )
    best = best_run(trace)
    compact = _gather_h(executor, source, model, best)
    W_full = model.Ws[best]
    ks_ = layout.k_shared
    H = [Hd[:ks_].astype(dtype, copy=False) for Hd in compact]
    V = [Hd[ks_:].astype(dtype, copy=False) for Hd in compact]
    U = [np.ascontiguousarray(W_full[:, layout.unique_slice(d)]) for d in range(source.n_datasets)]
    return LinkedNMFResult(
        W=np.ascontiguousarray(W_full[:, :ks_]),
        H=H,
        U=U,
        V=V,
        datasets=_dataset_infos(source, model.dataset_errors[best]),
        **fit_summary(trace, best),
        params=result_params(p, names=source.names),
        row_labels=source.row_labels,
        col_labels=_col_labels(source),
        runs=run_rows(trace, range(R)),
        timings=fit_timings(t0, t_init, trace, best),
        info=run_info(source, executor, best_run=best),
    )


def _joint_start(
    executor: Executor,
    source: ChainedSource,
    layout: LinkedLayout,
    config: NMFConfig,
    p: dict[str, Any],
    dtype: np.dtype,
) -> np.ndarray:
    """A start for lNMF from jNMF at the total rank, its factors sorted into W and U_d.

    A random start lets a shared factor settle into every U_d while a W column holds a
    unique one — a local minimum that alternating updates cannot leave. jNMF (plain NMF
    of the chained data, NNDSVDA start) finds the factors without the structure; the
    factors every dataset uses evenly then start W, the others the U_d of the dataset that
    uses them (``assign_factors``).
    """
    import warnings

    from scalenmf.engine.loop import ConvergenceWarning
    from scalenmf.models.init import initialize
    from scalenmf.models.linked import assign_factors
    from scalenmf.models.nmf import NMFModel

    K = layout.total
    executor.set_states([None] * source.n_blocks)  # one dataset's view: plain NMF
    start = initialize(executor, K, "nndsvda", p["seed"], 1, dtype)
    joint = NMFModel(config, start.Ws, start.h_start, start.xx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        run_alternating(joint, executor, max_iter=p["init_iter"], tol=p["tol"])
    W = joint.Ws[0]
    usage = np.zeros((K, source.n_datasets))
    for d, state in zip(source.block_dataset, executor.states(), strict=True):
        usage[:, d] += joint.block_h(state, 0).sum(axis=1, dtype=np.float64)
    usage *= W.sum(axis=0, dtype=np.float64)[:, None]
    usage /= np.maximum(usage.sum(axis=0, keepdims=True), 1e-300)
    return np.ascontiguousarray(W[:, assign_factors(usage, layout)])


def _col_labels(source: ChainedSource) -> list[Any]:
    return [ds.col_labels for ds in source.datasets]


def jnmf(datasets: Sequence[Any], k: int, **kwargs: Any) -> LinkedNMFResult:
    """Joint NMF: ``A_d ≈ W H_d`` with one shared basis (``lnmf`` with ``k_unique = 0``)."""
    return lnmf(datasets, k, 0, **kwargs)


# -- iNMF -------------------------------------------------------------------------------


def inmf(
    datasets: Sequence[Any],
    k: int,
    lam: float = 5.0,
    *,
    names: Sequence[str] | None = None,
    solver: str | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = 0,
    n_runs: int = 1,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    progress: Any = None,
    block_cols: int | None = None,
    nnls: str = "bpp",
    dtype: Any = None,
    threads: int | None = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    scheduler_file: str | None = None,
    security: Any = None,
    connect_timeout: str | float | None = None,
    scratch: Any = None,
    backend: str | None = None,
    device: str | None = None,
    gpu_memory_limit: int | str | None = None,
) -> INMFResult:
    """Integrative NMF (LIGER): ``X_d ≈ (W + V_d) H_d`` with a penalty on ``V_d H_d``.

    Minimises ``½ Σ_d ‖X_d − (W + V_d) H_d‖²_F + ½ λ Σ_d ‖V_d H_d‖²_F`` over non-negative
    W (m × k, shared), V_d (m × k, dataset-specific) and H_d (k × n_d), by block
    coordinate descent (H, then every V_d, then W), each step an NNLS in Gram form; every
    iteration reads each column block once. Larger λ pushes the datasets onto W.

    Parameters
    ----------
    datasets : list of path, ndarray, scipy.sparse matrix, dask array or MatrixSource
        X_1 … X_K, features × samples, with the same features.
    k : int
        Number of factors.
    lam : float, default 5.0
        λ ≥ 0 (LIGER's default).
    solver : {"als", "hals"}, optional
        Default ``"als"`` (exact NNLS every step).
    names, max_iter, tol, seed, n_runs, scheduler, workers, memory_limit, progress,
    block_cols, nnls, dtype, threads, callback, scheduler_file, security, connect_timeout,
    scratch, backend, device, gpu_memory_limit
        As in ``lnmf``.

    Returns
    -------
    INMFResult
        ``W`` (m, k), ``V`` (list of m × k), ``H`` (list of k × n_d).
    """
    p = checked_params(
        NMF_RULES,
        solver,
        loss="frobenius",
        nnls=nnls,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        n_runs=n_runs,
        workers=workers,
    )
    if p["solver"] == "mu":
        raise ValueError("inmf is solved by block coordinate descent: use solver='als' or 'hals'")
    p["k"] = int(Number(1, math.inf, integer=True).check("k", k))
    p["lam"] = float(Number(0.0).check("lam", lam))
    cluster = cluster_options_of(locals())
    source = chain_datasets(datasets, names, block_cols=block_cols, what="iNMF")
    _check_ranks(source, LinkedLayout(p["k"], (0,) * source.n_datasets))
    where = kernel_backend(backend, device, gpu_memory_limit)
    dtype_ = work_dtype(gpu_dtype(dtype, where["device"]), source)
    config = model_config(p, k=p["k"], **where)
    with cluster.executor(source) as executor:
        t0 = time.perf_counter()
        R = p["n_runs"]
        stats = dataset_stats(executor, source, R)
        m, n = source.shape
        mean = float(stats["xsum"].sum()) / max(1, m * n)
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(R)]
        Ws, Vs = [], []
        for rng in rngs:
            Ws.append(random_w(m, p["k"], mean, rng, dtype_))
            Vs.append([random_w(m, p["k"], mean, rng, dtype_) for _ in range(source.n_datasets)])
        model = INMFModel(config, p["lam"], Ws, Vs, stats["xx"])
        t_init = time.perf_counter() - t0
        trace = iterate(
            model,
            executor,
            max_iter=p["max_iter"],
            tol=p["tol"],
            desc=f"inmf k={p['k']}",
            progress=progress,
            callback=callback,
        )
        best = best_run(trace)
        H = [Hd.astype(dtype_, copy=False) for Hd in _gather_h(executor, source, model, best)]
        return INMFResult(
            W=model.Ws[best],
            V=model.Vs[best],
            H=H,
            lam=p["lam"],
            datasets=_dataset_infos(source, model.dataset_errors[best]),
            **fit_summary(trace, best),
            params=result_params(p, names=source.names),
            row_labels=source.row_labels,
            col_labels=_col_labels(source),
            runs=run_rows(trace, range(R)),
            timings=fit_timings(t0, t_init, trace, best, errors=False),
            info=run_info(source, executor, best_run=best),
        )


# -- the rank heuristic -----------------------------------------------------------------


@dataclass
class RankProposal:
    """Ranks for ``lnmf`` proposed from separate fits (seed 003, "Determination of ranks").

    Attributes
    ----------
    k_shared : int
        Proposed rank of W: the factors conserved across every dataset (at least 1).
    k_unique : list of int
        Proposed rank of every U_d: ``k_d − k_shared``, at least 1.
    ks : list of int
        The rank each dataset was fitted at alone.
    names : list of str
    reference : int
        Dataset whose factors were matched against every other (the one with smallest k).
    min_cosine : float
        A reference factor is conserved when its match in every other dataset has at least
        this cosine similarity.
    matches : list of dict
        Per reference factor: ``factor``, ``conserved`` and per other dataset the matched
        factor and its cosine (``{"dataset": name, "factor": j, "cosine": c}``).
    cosines : dict of str to ndarray
        Full cosine matrix (k_reference × k_d) against every other dataset.
    n_conserved : int
        Conserved factors before the floor of 1.
    fits : list of NMFResult
        The separate fits.
    """

    k_shared: int
    k_unique: list[int]
    ks: list[int]
    names: list[str]
    reference: int
    min_cosine: float
    matches: list[dict[str, Any]]
    cosines: dict[str, np.ndarray]
    n_conserved: int
    fits: list[Any] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "k_shared": self.k_shared,
            "k_unique": self.k_unique,
            "ks": self.ks,
            "names": self.names,
            "reference": self.names[self.reference],
            "min_cosine": self.min_cosine,
            "n_conserved": self.n_conserved,
            "matches": self.matches,
            "cosines": {k: v.tolist() for k, v in self.cosines.items()},
        }


def lnmf_ranks(
    datasets: Sequence[Any],
    ks: int | Sequence[int],
    *,
    min_cosine: float = 0.9,
    names: Sequence[str] | None = None,
    **nmf_kwargs: Any,
) -> RankProposal:
    """Propose ``k_shared`` and ``k_unique`` for ``lnmf`` from separate fits.

    Every dataset is factorized alone at its rank ``k_d``; the factors of the dataset with
    the smallest rank are matched to those of every other dataset by cosine similarity
    with the Hungarian assignment. A factor conserved in all datasets (matched cosine ≥
    ``min_cosine`` everywhere) counts towards ``k_shared``; then
    ``k_unique_d = max(1, k_d − k_shared)`` and ``k_shared`` is at least 1 too.

    Parameters
    ----------
    datasets : list of path, ndarray, scipy.sparse matrix or MatrixSource
    ks : int or list of int
        Rank of every separate fit (for instance from cross-validation).
    min_cosine : float, default 0.9
    names : list of str, optional
    **nmf_kwargs
        Passed to every ``scalenmf.nmf`` fit (solver, loss, seed, n_runs, scheduler, …).

    Returns
    -------
    RankProposal
    """
    from scalenmf.api.fit import nmf
    from scalenmf.signatures import cosine_matrix

    min_cos = float(Number(-1.0, 1.0).check("min_cosine", min_cosine))
    source = chain_datasets(datasets, names, what="the rank heuristic")
    n_ds = source.n_datasets
    k_list = list(_k_unique(ks, n_ds, "ks"))
    for d, k in enumerate(k_list):
        if k < 1:
            raise ValueError(f"ks[{d}] must be at least 1; got {k}")
        check_rank(k, source.datasets[d].shape)
    nmf_kwargs.setdefault("progress", False)
    fits = []
    for d, ds in enumerate(source.datasets):
        log.info("lnmf-ranks: fitting %s at k=%d", source.names[d], k_list[d])
        fits.append(nmf(ds, k_list[d], **nmf_kwargs))
    ref = int(np.argmin(k_list))
    from scipy.optimize import linear_sum_assignment

    matches: list[dict[str, Any]] = [
        {"factor": i, "conserved": True, "matches": []} for i in range(k_list[ref])
    ]
    cosines: dict[str, np.ndarray] = {}
    for d in range(n_ds):
        if d == ref:
            continue
        C = cosine_matrix(fits[ref].W, fits[d].W)
        cosines[source.names[d]] = C
        rows, cols = linear_sum_assignment(-C)
        for i, j in zip(rows, cols, strict=True):
            c = float(C[i, j])
            matches[i]["matches"].append(
                {"dataset": source.names[d], "factor": int(j), "cosine": c}
            )
            matches[i]["conserved"] = matches[i]["conserved"] and c >= min_cos
    n_conserved = sum(1 for mt in matches if mt["conserved"])
    k_shared = max(1, n_conserved)
    return RankProposal(
        k_shared=k_shared,
        k_unique=[max(1, k - k_shared) for k in k_list],
        ks=k_list,
        names=list(source.names),
        reference=ref,
        min_cosine=min_cos,
        matches=matches,
        cosines=cosines,
        n_conserved=n_conserved,
        fits=fits,
    )
