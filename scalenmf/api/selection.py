"""Model selection and consensus: ``rank_survey``, ``consensus`` and masked fitting.

All fits of a survey (every rank × restart, the same on a column-permuted null, and
held-out cross-validation replicates) run together on the executor, sharing each read of
X (``models.multifit``); what follows is bookkeeping on labels and factors
(``models.consensus``, ``models.survey``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalenmf.api._common import (
    ClusterOptions,
    checked_params,
    cluster_options_of,
    fit_summary,
    gpu_dtype,
    kernel_backend,
    model_config,
    open_input,
    progress_shown,
    result_params,
    run_info,
    work_dtype,
)
from scalenmf.engine.executor import Executor
from scalenmf.engine.loop import IterationInfo
from scalenmf.io.masked import MaskedSource, fit_source
from scalenmf.io.source import MatrixSource
from scalenmf.models.consensus import factor_consensus
from scalenmf.models.fits import (
    FitSpec,
    MultiFitOutcome,
    StoredLabels,
    label_matrix,
    multifit_shape,
    run_multifit,
)
from scalenmf.models.step import NMFConfig, check_supported
from scalenmf.models.survey import (
    RankMeasures,
    measure_rank,
    suggest_rank,
    survey_fits,
)
from scalenmf.results.nmf import NMFResult
from scalenmf.results.selection import ConsensusResult, RankSurvey
from scalenmf.validation import NMF_RULES, Number

log = logging.getLogger("scalenmf")

#: Above this many samples the consensus matrix of ``consensus`` uses a subsample.
CONSENSUS_MAX_SAMPLES = 10_000
#: The per-rank consensus of a survey uses at most this many samples (one tree per rank
#: and per variant; the cophenetic estimate is stable well below that).
SURVEY_CONSENSUS_SAMPLES = 2_000

SELECTION_RULES: dict[str, Any] = {
    **NMF_RULES,
    "cv_reps": Number(0, 1000, integer=True),
    "cv_fraction": Number(0.0, 0.5, low_open=True),
    "consensus_samples": Number(3, math.inf, integer=True),
    "max_samples": Number(3, math.inf, integer=True),
}


def parse_ks(spec: Any) -> list[int]:
    """Ranks from ``"2-10"``, ``"2,3,5"``, ``"2-6,8"``, an int or an iterable of ints."""
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return [int(spec)]
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not match:
                raise ValueError(f"ks: cannot read {spec!r}; use e.g. '2-10' or '2,3,5'")
            lo = int(match.group(1))
            hi = int(match.group(2) or lo)
            if hi < lo:
                raise ValueError(f"ks: range {part!r} runs backwards")
            out += list(range(lo, hi + 1))
        ks = out
    elif isinstance(spec, Iterable):
        ks = []
        for k in spec:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                raise TypeError(f"ks must be integers; got {k!r}")
            ks.append(int(k))
    else:
        raise TypeError(f"ks must be a range string, an int or a list of ints; got {spec!r}")
    ks = sorted(set(ks))
    if not ks:
        raise ValueError("ks is empty")
    if ks[0] < 1:
        raise ValueError(f"ks must be at least 1; got {ks[0]}")
    return ks


@dataclass
class _Setup:
    source: MaskedSource
    config: NMFConfig
    params: dict[str, Any]
    dtype: np.dtype
    cluster: ClusterOptions
    fits: list[FitSpec]


def _setup(
    X: Any,
    ks: list[int],
    fits_of: Callable[[dict[str, Any]], list[FitSpec]],
    *,
    solver: str | None,
    loss: str,
    mask: Any,
    block_cols: Any,
    dtype: Any,
    cv_fraction: float,
    seed: int | None,
    cluster: ClusterOptions,
    where: dict[str, Any],
    **rules: Any,
) -> _Setup:
    """The checked parameters, the fits (``fits_of(params)``), the input planned for
    ``memory_limit`` and masked where asked, and the multi-fit config.

    The memory plan is the fit's (``ClusterOptions.fit_memory``) for the shape of all
    fits together (``multifit_shape``: they share each read of X, so their block states
    add up): within a limit the blocks are narrowed, X is held only when the plan has
    room for it, and the states go to a scratch store past ``STATE_SHARE`` of it.
    """
    p = checked_params(
        SELECTION_RULES, solver, loss=loss, seed=seed, cv_fraction=cv_fraction, **rules
    )
    check_supported(p["loss"], p["solver"])
    base = open_input(X, block_cols=block_cols, ranks=ks)
    seed_int = 0 if p["seed"] is None else int(p["seed"])
    config = model_config(
        {**p, "nnls": "bpp"},
        cv_fraction=p["cv_fraction"],
        cv_seed=seed_int,
        null_seed=seed_int + 7919,
        masked_data=mask is not None,
        **where,
    )
    p.update(backend=config.backend, device=config.device)
    fits = fits_of(p)
    dtype_ = work_dtype(gpu_dtype(dtype, config.device), base)
    shape = multifit_shape(fits, p["loss"], dtype_.itemsize, masked=mask is not None)
    base, cluster = cluster.fit_memory(base, shape, fixed_blocking=block_cols is not None)
    source = fit_source(base, mask)
    return _Setup(source, config, p, dtype_, cluster, fits)


def _fit_result(outcome: MultiFitOutcome, f: int, setup: _Setup, info: dict[str, Any]) -> NMFResult:
    """Fit ``f`` of ``outcome`` as the result of one fit (``info``: ``run_info``'s)."""
    return NMFResult(
        W=outcome.Ws[f],
        H=outcome.H[f],
        **fit_summary(outcome, f),
        params=result_params(setup.params, k=outcome.fits[f].k),
        row_labels=setup.source.row_labels,
        col_labels=setup.source.col_labels,
        timings={"total_s": outcome.total_s},
        info=dict(info),
    )


def _memory_info(
    setup: _Setup, outcome: MultiFitOutcome, cap: int, H: dict[int, Any] | None = None
) -> dict[str, Any]:
    """What a selection kept where, and the budget: ``result.info["memory"]``.

    ``consensus_samples``: the samples of each consensus matrix and tree (a random
    subsample above ``cap``: ``subsampled``); ``consensus_matrix_bytes`` its float32
    matrix. ``labels`` / ``H``: "scratch" when the runs' per-sample labels and the kept
    fits' H (``H``, default the outcome's) went to scratch arrays (the block states were
    kept out of memory), else "memory".
    """
    kept = outcome.H if H is None else H
    n = setup.source.shape[1]
    used = min(n, int(cap))
    stored = any(isinstance(v, StoredLabels) for v in outcome.labels.values())
    return {
        "memory_limit": setup.cluster.memory_limit,
        "consensus_samples": used,
        "subsampled": n > used,
        "consensus_matrix_bytes": 4 * used * used,
        "labels": "scratch" if stored else "memory",
        "H": "memory" if all(isinstance(h, np.ndarray) for h in kept.values()) else "scratch",
    }


def _run_rows(outcome: MultiFitOutcome) -> list[dict[str, Any]]:
    rows = []
    for f, spec in enumerate(outcome.fits):
        rows.append(
            {
                "k": spec.k,
                "run": spec.run if spec.rep < 0 else spec.rep,
                "variant": spec.variant,
                "kind": "fit" if spec.rep < 0 else "cv",
                "objective": float(outcome.objectives[f][-1]),
                "relative_error": float(outcome.relative_errors[f][-1]),
                "n_iter": int(outcome.n_iter[f]),
                "converged": bool(outcome.converged[f]),
                "cv_error": float(outcome.test_errors[f]),
            }
        )
    return rows


def sample_names(source: MatrixSource) -> np.ndarray:
    """Column labels of the input, or ``"0" … "n-1"`` when it has none."""
    labels = source.col_labels
    if labels is not None:
        return np.asarray(labels, dtype=str)
    n = source.shape[1]
    # The strings of np.array([str(j) …]) without a list of n Python strings on the way.
    return np.arange(n).astype(f"<U{len(str(max(n - 1, 0)))}")


# -- rank survey ------------------------------------------------------------------------


def rank_survey(
    X: Any,
    ks: Any = "2-10",
    n_runs: int = 10,
    *,
    solver: str | None = None,
    loss: str = "frobenius",
    l1_w: float = 0.0,
    l1_h: float = 0.0,
    l2_w: float = 0.0,
    l2_h: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = 0,
    null: bool = True,
    cv_reps: int = 3,
    cv_fraction: float = 0.05,
    mask: Any = None,
    consensus_samples: int = SURVEY_CONSENSUS_SAMPLES,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    progress: Any = None,
    block_cols: Any = None,
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
) -> RankSurvey:
    """Fit every rank in ``ks`` ``n_runs`` times and measure how well each rank holds up.

    All fits — ``len(ks) × n_runs`` restarts on X, the same on a column-permuted copy of X
    (``null``), and ``cv_reps`` held-out replicates per rank and variant — run together on
    the executor, reading each column block of X once per iteration for all of them.
    Restarts start from random W (seeded by ``seed``, k and the run number).

    Per rank it reports the relative error of the best and the mean run, the consensus
    measures of R's NMF package (cophenetic correlation, dispersion, the silhouette of the
    consensus clustering, on at most ``consensus_samples`` samples), the factor-level
    stability (silhouette of the runs' factors, cNMF / SigProfiler style) and the
    held-out error: ``cv_fraction`` of the entries are hidden from each replicate's fit
    and ``cv_error`` is ``‖X − WH‖ / ‖X‖`` on them (mean and standard deviation over
    replicates; the same held-out entries at every rank).

    Parameters
    ----------
    X : path, ndarray, scipy.sparse matrix, dask array or MatrixSource, shape (m, n)
    ks : str or list of int
        ``"2-10"``, ``"2,4,6"`` or a list. Each k must be in 1..min(m, n).
    n_runs : int
        Restarts per rank (≥ 2 for consensus measures to mean anything).
    solver, loss, l1_w, l1_h, l2_w, l2_h, max_iter, tol :
        As in ``scalenmf.nmf``; ``solver`` is ``als``, ``hals`` or ``mu`` (Frobenius) or
        ``mu`` (KL).
    null : bool
        Also survey the randomized null (every column's entries permuted).
    cv_reps : int
        Held-out replicates per rank (0: no cross-validation).
    cv_fraction : float
        Share of entries held out in each replicate, in (0, 0.5].
    mask : array, sparse matrix, path or "nan", optional
        Missing entries (non-zero = missing); NaN in X are missing too. Every fit then
        uses only the observed entries.
    consensus_samples : int
        Samples used for the consensus matrix of each rank (a random subsample above it;
        the matrix is ``consensus_samples²`` float32 values, the dispersion and every
        sample's cluster are still from all samples, read a chunk at a time).
    scheduler, workers, memory_limit, threads, scheduler_file, security, connect_timeout, scratch :
        The cluster options, as in ``scalenmf.nmf``. With ``memory_limit`` the blocking
        is planned for all fits together (their block states add up); past
        ``STATE_SHARE`` of the limit the block states, the best fits' H and every run's
        sample labels are kept in scratch arrays, so that the survey's memory does not
        grow with n beyond the (n,) clusters and confidences of each rank's consensus.
        ``info["memory"]`` says what was subsampled, what went to scratch and the budget.
    backend, device, gpu_memory_limit :
        Where the block kernels run (numpy, or torch on a CPU or GPU), as in ``scalenmf.nmf``.
    block_cols, dtype, progress, callback :
        As in ``scalenmf.nmf``.

    Returns
    -------
    RankSurvey

    Examples
    --------
    >>> import numpy as np, scalenmf
    >>> rng = np.random.default_rng(0)
    >>> X = rng.poisson(rng.gamma(1, 1, (40, 3)) @ rng.gamma(1, 2, (3, 60))).astype(float)
    >>> survey = scalenmf.rank_survey(X, "2-4", n_runs=3, cv_reps=2, progress=False)
    >>> survey.suggestion["k"]
    3
    """
    t0 = time.perf_counter()
    k_list = parse_ks(ks)
    setup = _setup(
        X,
        k_list,
        lambda p: survey_fits(k_list, p["n_runs"], p["cv_reps"], bool(null)),
        solver=solver,
        loss=loss,
        mask=mask,
        block_cols=block_cols,
        dtype=dtype,
        cv_fraction=cv_fraction,
        seed=seed,
        l1_w=l1_w,
        l1_h=l1_h,
        l2_w=l2_w,
        l2_h=l2_h,
        max_iter=max_iter,
        tol=tol,
        n_runs=n_runs,
        cv_reps=cv_reps,
        consensus_samples=consensus_samples,
        cluster=cluster_options_of(locals()),
        where=kernel_backend(backend, device, gpu_memory_limit),
    )
    p = setup.params
    fits = setup.fits
    desc = f"rank survey ({len(fits)} fits)"
    with (
        setup.cluster.executor(setup.source) as executor,
        progress_shown(progress, p["max_iter"], desc) as bar,
    ):
        outcome = run_multifit(
            executor,
            fits,
            setup.config,
            dtype=setup.dtype,
            max_iter=p["max_iter"],
            tol=p["tol"],
            seed=p["seed"],
            progress=bar,
            callback=callback,
        )
        info = run_info(setup.source, executor)
    t_fit = time.perf_counter() - t0
    variants = ["data", "null"] if null else ["data"]
    measured: dict[str, dict[int, RankMeasures]] = {v: {} for v in variants}
    for v in variants:
        for k in k_list:
            measured[v][k] = measure_rank(
                outcome, k, v, consensus_samples=p["consensus_samples"], sample_seed=p["seed"] or 0
            )
            if v == "null":
                # Only its row is reported: its (n,) clusters need not wait for the rest.
                measured[v][k].consensus = None
    data = measured["data"]
    suggestion = suggest_rank(data, measured.get("null"))
    best = {k: _fit_result(outcome, data[k].best_fit, setup, info) for k in k_list}
    total = time.perf_counter() - t0
    params = result_params(
        p,
        ks=k_list,
        null=bool(null),
        n_fits=len(fits),
        mask=None if mask is None else str(type(mask).__name__),
    )
    return RankSurvey(
        ks=k_list,
        summary=[data[k].row for k in k_list],
        null_summary=[measured["null"][k].row for k in k_list] if null else None,
        suggestion=suggestion,
        runs=_run_rows(outcome),
        best=best,
        consensus={k: c for k in k_list if (c := data[k].consensus) is not None},
        factors={k: f for k in k_list if (f := data[k].factors) is not None},
        params=params,
        info={
            **info,
            "memory": _memory_info(setup, outcome, p["consensus_samples"]),
            "timings": {
                "fit_s": t_fit,
                "loop_s": outcome.total_s,
                "total_s": total,
                "iterations": len(outcome.iter_times),
            },
        },
        sample_labels=sample_names(setup.source),
    )


# -- consensus --------------------------------------------------------------------------


def consensus(
    X: Any,
    k: int,
    n_runs: int = 30,
    *,
    solver: str | None = None,
    loss: str = "frobenius",
    l1_w: float = 0.0,
    l1_h: float = 0.0,
    l2_w: float = 0.0,
    l2_h: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = 0,
    mask: Any = None,
    max_samples: int = CONSENSUS_MAX_SAMPLES,
    density_threshold: float = 0.5,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    progress: Any = None,
    block_cols: Any = None,
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
) -> ConsensusResult:
    """Consensus clustering and factor-level consensus of ``n_runs`` fits at rank k.

    The runs (random starts) run together on the executor. Sample level: each run puts a
    sample in the factor with its largest scaled coefficient (``interpret.predict``); the
    consensus matrix, its average-linkage tree, the cophenetic correlation and dispersion
    and a cluster per sample follow (Brunet et al. 2004). Above ``max_samples`` samples
    the matrix and tree are computed on a random subsample of that size and every other
    sample joins the cluster it co-clusters with most (``subsampled`` says so). Factor
    level (any n): the runs' factors are matched into k clusters, outliers dropped, the
    medians taken, and H refitted on X with that W fixed (cNMF); the factors'
    silhouette is the stability.

    Parameters
    ----------
    X, k, n_runs :
        Data (features × samples), rank, and number of runs.
    max_samples : int
        Largest consensus matrix (``max_samples²`` float32 values); above it the matrix
        is of a random subsample (``info["consensus"]["subsampled"]``).
    memory_limit :
        As in ``rank_survey``: the runs' states, labels and the refitted H go to scratch
        arrays past ``STATE_SHARE`` of it; ``info["memory"]`` says what went where.
    density_threshold : float
        Outlier filter of the factor consensus (see ``models.consensus.factor_consensus``).
    others :
        As in ``rank_survey`` and ``scalenmf.nmf``.

    Returns
    -------
    ConsensusResult

    Examples
    --------
    >>> import numpy as np, scalenmf
    >>> rng = np.random.default_rng(0)
    >>> X = rng.poisson(rng.gamma(1, 1, (40, 3)) @ rng.gamma(1, 2, (3, 60))).astype(float)
    >>> res = scalenmf.consensus(X, 3, n_runs=10, progress=False)
    >>> res.clusters.shape, res.result.W.shape
    ((60,), (40, 3))
    """
    t0 = time.perf_counter()
    k = int(Number(1, math.inf, integer=True).check("k", k))
    setup = _setup(
        X,
        [k],
        lambda p: [FitSpec(k, "data", -1, r) for r in range(p["n_runs"])],
        solver=solver,
        loss=loss,
        mask=mask,
        block_cols=block_cols,
        dtype=dtype,
        cv_fraction=0.05,
        seed=seed,
        l1_w=l1_w,
        l1_h=l1_h,
        l2_w=l2_w,
        l2_h=l2_h,
        max_iter=max_iter,
        tol=tol,
        n_runs=n_runs,
        max_samples=max_samples,
        cluster=cluster_options_of(locals()),
        where=kernel_backend(backend, device, gpu_memory_limit),
    )
    p = setup.params
    fits = setup.fits
    desc = f"consensus k={k} ({len(fits)} runs)"
    with (
        setup.cluster.executor(setup.source) as executor,
        progress_shown(progress, p["max_iter"], desc) as bar,
    ):
        outcome = run_multifit(
            executor,
            fits,
            setup.config,
            dtype=setup.dtype,
            max_iter=p["max_iter"],
            tol=p["tol"],
            seed=p["seed"],
            keep=[],
            progress=bar,
            callback=callback,
        )
        finals = [hist[-1] for hist in outcome.objectives]
        factors = (
            factor_consensus(outcome.Ws, finals, density_threshold=density_threshold)
            if len(fits) > 1
            else None
        )
        W0 = factors.W if factors is not None else outcome.Ws[0].astype(np.float64)
        W0 = W0.astype(setup.dtype)
        refit = _refit_h(executor, setup, k, W0)
        info = run_info(setup.source, executor)
    from scalenmf.models.consensus import sample_consensus

    labels = label_matrix(outcome.labels, list(range(len(fits))))
    samples = sample_consensus(labels, k, max_samples=p["max_samples"], seed=p["seed"] or 0)
    if samples.subsampled:
        log.info(
            "consensus matrix estimated on a random subsample of %d of %d samples",
            samples.samples.size,
            samples.n_total,
        )
    runs = [r for r in _run_rows(outcome)]
    for r in runs:
        r.pop("cv_error", None)
        r.pop("kind", None)
    info = {
        **info,
        "memory": _memory_info(setup, outcome, p["max_samples"], refit.H),
        "consensus": {
            "subsampled": samples.subsampled,
            "consensus_samples": int(samples.samples.size),
        },
        "timings": {"total_s": time.perf_counter() - t0},
    }
    result = _fit_result(refit, 0, setup, info)
    result.runs = runs
    result.params["n_runs"] = p["n_runs"]
    result.info["refit"] = "H refitted with the factor-consensus W fixed"
    return ConsensusResult(
        k=k,
        n_runs=p["n_runs"],
        samples=samples,
        factors=factors,
        result=result,
        runs=runs,
        sample_labels=sample_names(setup.source),
        params=result_params(p),
        info=info,
    )


def _refit_h(executor: Executor, setup: _Setup, k: int, W: np.ndarray) -> MultiFitOutcome:
    """H on X for a fixed W (exact NNLS for Frobenius, MU to convergence for KL)."""
    if not setup.config.masked_data:
        from scalenmf.models.transfer import project_blocks

        H, objs, errs = project_blocks(executor, W, setup.config)
        return MultiFitOutcome(
            [FitSpec(k)],
            [W],
            [objs],
            [errs],
            [1],
            [True],
            [np.nan],
            {},
            {0: H},
            xx=np.nan,
            n_obs=np.nan,
            n_missing=0.0,
            total_s=0.0,
        )
    executor.set_states([None] * executor.source.n_blocks)
    solver = "als" if setup.config.loss == "frobenius" else "mu"
    from dataclasses import replace

    config = replace(setup.config, solver=solver, fixed_w=True)
    return run_multifit(
        executor,
        [FitSpec(k)],
        config,
        dtype=setup.dtype,
        max_iter=200 if solver == "mu" else 20,
        tol=1e-6,
        seed=0,
        Ws=[W],
        keep=[0],
    )
