"""``nmf``: one factorization, and the building blocks behind the estimator and CLI."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from scalenmf.api._common import (
    best_run,
    checked_params,
    cluster_options_of,
    fit_summary,
    fit_timings,
    gpu_dtype,
    iterate,
    kernel_backend,
    model_config,
    open_input,
    progress_bar,
    result_params,
    run_info,
    run_rows,
    work_dtype,
)
from scalenmf.engine.checkpoint import Checkpointer
from scalenmf.engine.checksum import input_checksum
from scalenmf.engine.executor import Executor
from scalenmf.engine.loop import IterationInfo
from scalenmf.io.errors import InputError
from scalenmf.io.source import MatrixSource
from scalenmf.models.fits import collect
from scalenmf.models.init import initialize
from scalenmf.models.memory import FitShape
from scalenmf.models.nmf import NMFConfig, NMFModel
from scalenmf.models.online import (
    BATCH_COLS,
    ONLINE_KL,
    ONLINE_SWEEPS,
    init_passes,
    run_online,
    warmup_sample,
)
from scalenmf.models.step import fit_stats_step
from scalenmf.results.nmf import NMFResult
from scalenmf.validation import NMF_RULES

log = logging.getLogger("scalenmf")


def nmf(
    X: Any,
    k: int,
    *,
    solver: str | None = None,
    loss: str = "frobenius",
    l1_w: float = 0.0,
    l1_h: float = 0.0,
    l2_w: float = 0.0,
    l2_h: float = 0.0,
    init: str = "nndsvda",
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = 0,
    n_runs: int = 1,
    scheduler: Any = None,
    workers: int | None = None,
    memory_limit: int | str | None = None,
    progress: Any = None,
    block_cols: Any = None,
    nnls: str = "bpp",
    dtype: Any = None,
    threads: int | None = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    mask: Any = None,
    scheduler_file: str | None = None,
    security: Any = None,
    connect_timeout: str | float | None = None,
    scratch: Any = None,
    checkpoint: str | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    resume: bool = False,
    layer: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    gpu_memory_limit: int | str | None = None,
    batch_size: int | None = None,
    forget_factor: float | None = None,
) -> NMFResult:
    """Factorize a non-negative matrix, ``X ≈ W H``, out of core.

    Minimises ``½‖X − WH‖²_F`` (``loss="frobenius"``) or the generalized KL divergence
    ``Σ x log(x/wh) − x + wh`` (``loss="kl"``), plus ``l1_w·ΣW + ½ l2_w‖W‖² + l1_h·ΣH +
    ½ l2_h‖H‖²``, over W ≥ 0, H ≥ 0. Each iteration reads every column block of X once.

    Parameters
    ----------
    X : path, ndarray, scipy.sparse matrix, dask array, MatrixSource or AnnData, shape (m, n)
        Features × samples. A path may name a scalenmf Zarr store, AnnData ``.zarr`` /
        ``.h5ad``, CSV/TSV, Matrix Market or ``.npy``. An ``anndata.AnnData`` (cells ×
        genes, in memory or ``backed="r"``) is read transposed, without a dense copy,
        labelled by ``var_names`` / ``obs_names``.
    k : int
        Rank, ``1 ≤ k ≤ min(m, n)``.
    solver : {"als", "hals", "mu", "online"}, optional
        Default ``"als"`` (exact column-wise NNLS) for Frobenius and ``"mu"`` for KL.
        ``"online"``: mini-batch NMF (``models/online.py``), W updated after every batch of
        ``batch_size`` columns; H by HALS sweeps from a clipped least-squares start
        (Frobenius) or coordinate descent with Newton steps (KL), W from the accumulated
        statistics (KL: a Newton step on each row's second-order model). It starts and
        warms up on a seeded sample of about 2 % of the columns, so the initialisation
        does not read all of X. ``max_iter``
        then counts epochs (passes over X, the budget) and ``tol`` applies to the epochs'
        objectives (Frobenius: the full objective, read off the statistics at no cost);
        one last pass solves every H with the final W. ``result.info["online"]["passes"]``
        counts the passes over X, the start's included. For data too large for many full
        passes: one epoch (about 2.5 passes in all) comes within 0.5 % of full-batch
        HALS (Frobenius) or MU (KL) at convergence on large catalogues
        (docs/benchmarks.md).
    loss : {"frobenius", "kl"}
    l1_w, l1_h, l2_w, l2_h : float, default 0
        L1 / L2 penalties on W and on H.
    init : {"nndsvda", "nndsvd", "random"}
        Start of the first run; further runs (``n_runs > 1``) start at random.
    max_iter : int, default 200
    tol : float, default 1e-4
        Stop when the objective's relative decrease falls below ``tol`` (0: never).
    seed : int or None, default 0
        Makes the fit reproducible (same seed and blocking, same result on every executor).
    n_runs : int, default 1
        Restarts, run concurrently sharing each read of X; the lowest objective is kept.
    scheduler : str or distributed.Client, optional
        Run on a Dask cluster: ``"tcp://host:port"``, a scheduler file, or a Client.
    workers : int, optional
        Start a local Dask cluster with this many worker processes.
    memory_limit : int or str, optional
        Memory budget (``"2GB"``): the peak of this process, its baseline included
        (on a LocalCluster: of each worker). The blocking (unless ``block_cols`` is given),
        the blocks run at once and whether X stays in memory are chosen to keep within
        it; a limit below what the narrowest blocking needs raises ``MemoryLimitError``
        (a ``ValueError``) naming the smallest that works. A cluster started elsewhere
        keeps its workers' own limits.
    progress : bool, optional
        Progress bar on stderr (default: when stderr is a terminal).
    block_cols : int, list of int or list of (int, int), optional
        Override the column blocking.
    nnls : {"bpp", "cd"}
        Exact NNLS for ``solver="als"``: block principal pivoting (default; exact and the
        fastest) or coordinate descent, which stops per column on the KKT conditions to
        1e-4 and finishes the columns that miss them by pivoting.
    dtype : {None, "float32", "float64"}
        Working precision (default: that of X; integer counts become float64).
    threads : int, optional
        Threads of the local executor (default: all cores).
    callback : callable, optional
        Called with an ``IterationInfo`` after every iteration.
    mask : array, sparse matrix, path or "nan", optional
        Missing entries: non-zero entries of ``mask`` (same shape as X), and NaN in X, are
        left out of the loss, so their values never change the fit. ``"nan"``: only the
        NaN entries. A masked fit is the same fit as an unmasked one (start, solver,
        restarts) over the observed entries only; a mask that hides nothing gives the
        unmasked result bit for bit (see docs/selection.md).
    scheduler_file : path, optional
        Connect to the cluster whose scheduler wrote this file (``--scheduler-file``).
    security : distributed.security.Security, optional
        TLS credentials for a cluster that requires them (see
        ``scalenmf.engine.dask_exec.tls_security``).
    connect_timeout : str or float, optional
        How long to try reaching the scheduler (default 30 s).
    scratch : path or URL, optional
        Directory for scratch stores: the block states when ``memory_limit`` keeps them
        out of memory, the Dask executor's recovery anchor, and H when it is too large to
        hold (the result's H is then read lazily from it). Created if missing; every store
        made in it is removed when the fit ends, or fails (H's when the result is
        dropped). Default ``$SCALENMF_SCRATCH`` or the system's temporary directory; the
        CLI's default is the directory of ``-o OUT``. On a cluster it must be a location
        every worker can reach (a shared file system, an object-store URL).
    checkpoint : path or URL, optional
        Where to write checkpoints (published atomically; see ``docs/clusters.md``).
    checkpoint_every, checkpoint_seconds : optional
        Checkpoint after every N-th iteration and/or every T seconds (``checkpoint`` needed).
    resume : bool, default False
        Continue from the newest checkpoint in ``checkpoint`` if there is one (else start
        afresh). The result is the one the uninterrupted fit would have given.
    layer : str, optional
        With an AnnData X: factorize ``X.layers[layer]`` instead of ``X.X``.
    backend : {"numpy", "torch"}, optional
        Where the block kernels run (default numpy; torch is the ``[torch]`` extra).
    device : {"cpu", "cuda", "auto"}, optional
        The torch device (implies ``backend="torch"``). ``"auto"``: a GPU wherever a block
        runs has one, so a cluster of GPU and CPU workers runs one fit. On a GPU the
        default dtype is float32; the objective is accumulated in float64 either way.
    gpu_memory_limit : int or str, optional
        Bytes (``"8GB"``) of X blocks that may stay resident on a GPU between iterations
        (default: half its free memory); the others are streamed each iteration.
    batch_size : int, optional
        ``solver="online"``: columns per mini-batch (default 4096); X is blocked in
        batches of this width unless ``block_cols`` is given.
    forget_factor : float, optional
        ``solver="online"``: how much of the accumulated statistics one pass over X keeps
        (a batch of b columns scales them by ``forget_factor ** (b / n)``). A block's
        (Frobenius) or a batch's (KL) statistics are replaced when it is seen again, so
        the sums hold each once. The default (None) is a schedule: the first epoch
        forgets with a window of one batch that grows to a quarter of the columns read
        (W follows the improving H quickly), later epochs forget nothing (exact
        statistics: the full-batch optimum is a fixed point). 1: exact from the start.
    Returns
    -------
    NMFResult
        ``W`` (m, k), ``H`` (k, n), ``loss_history``, ``relative_error``, ``n_iter``,
        ``converged``, ``params``.

    Examples
    --------
    >>> import numpy as np, scalenmf
    >>> X = np.random.default_rng(0).poisson(5.0, size=(50, 200)).astype(float)
    >>> res = scalenmf.nmf(X, 4, seed=1)
    >>> res.W.shape, res.H.shape
    ((50, 4), (4, 200))
    """
    p = checked_params(
        NMF_RULES,
        solver,
        k=k,
        loss=loss,
        init=init,
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
    cluster = cluster_options_of(locals())
    where = kernel_backend(backend, device, gpu_memory_limit)
    if p["solver"] == "online":
        p.update(
            online_params(
                batch_size, forget_factor, p["loss"], n_runs, mask, resume, checkpoint_every
            )
        )
        if block_cols is None:
            block_cols = p["batch_size"]
    source = open_input(X, block_cols=block_cols, ranks=[p["k"]], layer=layer)
    dtype_ = work_dtype(gpu_dtype(dtype, where["device"]), source)
    shape = FitShape(p["k"], p["n_runs"], p["loss"], p["init"], dtype_.itemsize, mask is not None)
    source, cluster = cluster.fit_memory(source, shape, fixed_blocking=block_cols is not None)
    if mask is not None:
        from scalenmf.io.masked import fit_source

        if resume or checkpoint_every is not None:
            raise ValueError(
                "checkpoints and resume are not available for fits with a mask; "
                "run without --mask, or without --resume / --checkpoint-every"
            )
        source = fit_source(source, mask)
    inner: dict[str, Any] = {}
    if p["solver"] == "online":
        inner = (
            {"solver": "mu"}
            if p["loss"] == "kl"
            else {"solver": "hals", "inner_sweeps": ONLINE_SWEEPS}
        )
    config = model_config({**p, **inner}, k=p["k"], masked_data=mask is not None, **where)
    if inner.get("solver") == "hals":
        config = replace(config, inner_sweeps=ONLINE_SWEEPS)
    elif inner:
        config = replace(config, **ONLINE_KL)
    if (
        checkpoint_every is not None or checkpoint_seconds is not None or resume
    ) and not checkpoint:
        raise ValueError("checkpoint_every, checkpoint_seconds and resume need checkpoint=PATH")
    with cluster.executor(source) as executor:
        started = time.time()
        checksum = input_checksum(executor) if mask is None else "masked"
        ckpt = None
        if checkpoint:
            ckpt = Checkpointer(
                checkpoint,
                every=checkpoint_every,
                seconds=checkpoint_seconds,
                fingerprint=fit_fingerprint(source, config, p, dtype_, checksum),
            )
        result = fit_on_executor(
            source,
            executor,
            config,
            p,
            dtype_,
            progress=progress,
            callback=callback,
            checkpoint=ckpt,
            resume=resume,
        )
        if mask is not None:
            result.params["mask"] = True
            result.info["n_missing"] = int(model_missing(executor))
        result.manifest = run_manifest(source, p, checksum, result, started)
        return result


def model_missing(executor: Executor) -> float:
    """How many entries of X are hidden (one pass over the masked source's blocks)."""
    stats = executor.map_reduce(fit_stats_step, None, read_x=True)
    return float(sum(d["n_missing"] for d in stats["datasets"].values()))


def fit_fingerprint(
    source: MatrixSource, config: NMFConfig, p: dict[str, Any], dtype: np.dtype, checksum: str
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the data, blocking and the model."""
    keys = ("k", "solver", "loss", "l1_w", "l1_h", "l2_w", "l2_h", "init", "seed", "n_runs")
    return {
        "input_checksum": checksum,
        "shape": [int(d) for d in source.shape],
        "block_bounds": [[int(a), int(b)] for a, b in source.block_bounds],
        "dtype": str(np.dtype(dtype)),
        "nnls": config.nnls,
        "inner_sweeps": config.inner_sweeps,
        **{key: p[key] for key in keys},
    }


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str | None], ...]:
    """Versions recorded in every manifest (read once: package metadata takes ~20 ms)."""
    import platform
    from importlib import metadata

    from scalenmf._version import __version__

    versions: list[tuple[str, str | None]] = [
        ("scalenmf", __version__),
        ("python", platform.python_version()),
    ]
    for name in ("numpy", "scipy", "dask", "distributed", "zarr"):
        try:
            versions.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:  # pragma: no cover - all are dependencies
            versions.append((name, None))
    return tuple(versions)


def run_manifest(
    source: MatrixSource, p: dict[str, Any], checksum: str, result: NMFResult, started: float
) -> dict[str, Any]:
    """Provenance stored with every result: parameters, versions, input checksum, seeds."""
    import platform

    versions = dict(_package_versions())
    seeds = np.random.SeedSequence(p["seed"]).spawn(p["n_runs"] + 1)
    params = {key: value for key, value in p.items() if key != "memory_limit"}
    return {
        "params": params,
        "versions": versions,
        "input": {
            **source.describe(),
            "checksum": checksum,
            "path": getattr(source, "path", None),
        },
        "seeds": {
            "seed": p["seed"],
            "entropy": str(seeds[0].entropy),
            "run_spawn_keys": [list(s.spawn_key) for s in seeds[: p["n_runs"]]],
        },
        "resumed_from_iteration": result.info.get("resumed_from_iteration"),
        "checkpoints": result.info.get("checkpoints", []),
        "host": platform.node(),
        "started_unix": started,
        "finished_unix": time.time(),
        "argv": list(sys.argv),
    }


def online_params(
    batch_size: int | None,
    forget_factor: float | None,
    loss: str,
    n_runs: int,
    mask: Any,
    resume: bool,
    checkpoint_every: int | None,
) -> dict[str, Any]:
    """The checked options of ``solver="online"``."""
    if n_runs != 1:
        raise ValueError("solver='online' fits one run; got n_runs > 1")
    if mask is not None:
        raise ValueError("solver='online' does not take a mask; use als, hals or mu")
    if resume or checkpoint_every is not None:
        raise ValueError("solver='online' writes no checkpoints: run without resume")
    size = BATCH_COLS if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"batch_size must be a whole number ≥ 1; got {batch_size!r}")
    if forget_factor is None:
        # None: the schedule of models/online.py (forgetting in the first epoch only).
        return {"batch_size": int(size), "forget_factor": None}
    if (
        isinstance(forget_factor, bool)
        or not isinstance(forget_factor, (int, float))
        or not 0.0 < float(forget_factor) <= 1.0
    ):
        raise ValueError(f"forget_factor must be in (0, 1]; got {forget_factor!r}")
    return {"batch_size": int(size), "forget_factor": float(forget_factor)}


def _online(
    model: Any,
    executor: Executor,
    p: dict[str, Any],
    progress: Any,
    callback: Any,
    sample: list[int] | None,
    info: dict[str, Any],
):
    bar = progress_bar(progress, p["max_iter"], f"online nmf k={p['k']} (epochs)")
    try:
        return run_online(
            model,
            executor,
            max_epochs=p["max_iter"],
            tol=p["tol"],
            batch_cols=p["batch_size"],
            forget_factor=p["forget_factor"],
            seed=p["seed"],
            progress=bar,
            callback=callback,
            sample=sample,
            info=info,
        )
    finally:
        if bar is not None:
            bar.close()


def fit_on_executor(
    source: MatrixSource,
    executor: Executor,
    config: NMFConfig,
    p: dict[str, Any],
    dtype: np.dtype,
    *,
    progress: Any = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    checkpoint: Checkpointer | None = None,
    resume: bool = False,
) -> NMFResult:
    """Initialise (or resume), iterate and collect the best run on an already-built executor.

    With ``resume`` and a checkpoint in ``checkpoint.location``, the initialisation is
    skipped: the model and the block states come from the checkpoint.
    """
    t0 = time.perf_counter()
    snapshot = checkpoint.load() if (resume and checkpoint is not None) else None
    # The online fit starts (and warms up) on a sample of blocks: see models/online.py.
    sample = (
        warmup_sample(executor.source.block_bounds, p["seed"]) if p["solver"] == "online" else None
    )
    if snapshot is not None:
        if snapshot.iteration >= p["max_iter"]:
            raise ValueError(
                f"the checkpoint is at iteration {snapshot.iteration}, not below "
                f"max_iter={p['max_iter']}; raise max_iter to continue"
            )
        state = snapshot.model_state
        model = NMFModel(config, state["Ws"], state["h_start"], state["xx"])
        log.info("resuming from the checkpoint at iteration %d", snapshot.iteration)
    else:
        start = initialize(
            executor, config.k, p["init"], p["seed"], p["n_runs"], dtype, blocks=sample
        )
        if start.xx == 0 and sample is None:  # a sample's zeros are the first epoch's to judge
            raise InputError("X is all zeros; there is nothing to factorize")
        model = NMFModel(config, start.Ws, start.h_start, start.xx)
    t_init = time.perf_counter() - t0
    online_info: dict[str, Any] = {}
    if p["solver"] == "online":
        trace = _online(model, executor, p, progress, callback, sample, online_info)
        bounds = executor.source.block_bounds
        online_info["passes"] += init_passes(p["init"], bounds, sample)
    else:
        trace = iterate(
            model,
            executor,
            max_iter=p["max_iter"],
            tol=p["tol"],
            desc=f"nmf k={config.k}",
            progress=progress,
            callback=callback,
            checkpoint=checkpoint,
            resume=snapshot,
        )
    best = best_run(trace)
    H_kept, _ = collect(executor, model, [best], labels=False, dtype=dtype)
    H = H_kept[best]
    result = NMFResult(
        W=model.Ws[best],
        # An ndarray, or (block states kept out of memory) a Zarr array written block by
        # block, saved chunk by chunk.
        H=H.astype(dtype, copy=False) if isinstance(H, np.ndarray) else H,
        **fit_summary(trace, best),
        params=result_params(p, backend=config.backend, device=config.device),
        row_labels=source.row_labels,
        col_labels=source.col_labels,
        runs=run_rows(trace, range(model.n_runs), history=True),
        timings=fit_timings(t0, t_init, trace, best),
        info=run_info(
            source,
            executor,
            best_run=best,
            resumed_from_iteration=snapshot.iteration if snapshot is not None else None,
            checkpoints=list(checkpoint.saved) if checkpoint is not None else [],
        ),
    )
    if online_info:
        result.info["online"] = online_info
    return result
