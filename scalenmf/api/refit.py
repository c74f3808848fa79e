"""``update``: refine a fitted result with a new batch of samples (incremental refit)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from scalenmf.api._common import (
    checked_params,
    cluster_options_of,
    fit_summary,
    fit_timings,
    gpu_dtype,
    iterate,
    kernel_backend,
    model_config,
    open_input,
    result_params,
    run_info,
    work_dtype,
)
from scalenmf.engine.loop import IterationInfo
from scalenmf.io.errors import InputError
from scalenmf.results.nmf import NMFResult
from scalenmf.validation import NMF_RULES, Number


def _old_result(result: Any) -> tuple[NMFResult, str | None]:
    """The result to update and its path (when given as one), or a clear error."""
    if isinstance(result, (str, os.PathLike)):
        from scalenmf.io import storage
        from scalenmf.results.nmf import load

        path = os.fspath(result)
        if not storage.exists(path):
            raise FileNotFoundError(f"result {path!r} does not exist")
        return load(path), path
    if not isinstance(result, NMFResult):
        raise TypeError(
            "result must be an NMFResult or the path of a result store written by "
            f"scalenmf fit; got {type(result).__name__}"
        )
    return result, None


def update(
    result: Any,
    X_new: Any,
    *,
    k: int | None = None,
    freeze_w: bool = False,
    forget_factor: float = 1.0,
    solver: str | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    nnls: str | None = None,
    seed: int | None = 0,
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
) -> NMFResult:
    """Update a fitted factorization with new samples: W warm-started (or frozen), H solved.

    The basis W₀ of ``result`` is refined on ``X_new`` by minimising the objective of the
    fit (its loss and penalties) over the old and the new samples together; the old
    samples enter through the sufficient statistics of the online W step, rebuilt from
    the stored W₀ and H (``models/update.py``), so the old X is not read. With
    ``freeze_w`` W₀ is kept and only the new samples' H is solved: the result is then
    that of ``scalenmf.project(result, X_new)``.

    How far W moved is reported in ``info["update"]`` (stored with the result): per factor
    of W₀ the cosine to the factor of the new W it is matched to by the Hungarian
    assignment (``scipy.optimize.linear_sum_assignment``), and the explained variance
    ``1 − ‖X_new − WH‖² / ‖X_new‖²`` of the new samples with W₀ (H solved exactly)
    and with the updated W.

    Parameters
    ----------
    result : NMFResult or path
        A result of ``scalenmf.nmf`` / ``scalenmf fit`` (its W, H and parameters).
    X_new : path, ndarray, scipy.sparse matrix, dask array or MatrixSource, shape (m, n_new)
        The new samples, features × samples; rows are aligned to W's by label when both
        have labels, else there must be exactly m of them.
    k : int, optional
        The rank, if given: must equal the result's (an update keeps its factors).
    freeze_w : bool, default False
        Keep W₀; solve only H of the new samples.
    forget_factor : float in [0, 1], default 1
        Weight of the old samples' statistics: 1 counts them as in the fit (the update
        approaches the fit of old and new samples together); 0 refits W on the new samples
        alone, started from W₀.
    solver : {"als", "hals", "mu"}, optional
        Default: the result's (its ``online`` becomes ``als``; KL is ``mu``).
    max_iter, tol : int, float
        Iterations of the refit and the relative decrease of the new samples' objective
        at which it stops.
    nnls : {"bpp", "cd"}, optional
        Default: the result's.
    seed : int or None
    scheduler, workers, memory_limit, block_cols, dtype, threads, progress, callback,
    scheduler_file, security, connect_timeout, scratch, backend, device, gpu_memory_limit
        As in ``scalenmf.nmf``.

    Returns
    -------
    NMFResult
        ``W`` (m, k) the updated basis, ``H`` (k, n_new) the new samples' coefficients,
        ``loss_history`` the new samples' objective per iteration, ``info["update"]``:
        ``cosine`` and ``match`` (per factor of W₀), ``min_cosine``, ``mean_cosine``,
        ``explained_variance_before`` / ``_after`` / ``_change``, ``n_old``, ``n_new``,
        ``freeze_w``, ``forget_factor``, ``from`` (the result's path, if given).

    Examples
    --------
    >>> import numpy as np, scalenmf
    >>> rng = np.random.default_rng(0)
    >>> W = rng.gamma(1.0, 1.0, (20, 3))
    >>> old = scalenmf.nmf(rng.poisson(W @ rng.gamma(1.0, 5.0, (3, 200))), 3)
    >>> new = scalenmf.update(old, rng.poisson(W @ rng.gamma(1.0, 5.0, (3, 50))))
    >>> new.H.shape, new.info["update"]["min_cosine"] > 0.99
    ((3, 50), True)
    """
    from scalenmf.api.fit import run_manifest
    from scalenmf.api.project import PROJECT_RULES, align_to_basis, default_tol, project_on_executor
    from scalenmf.engine.checksum import input_checksum
    from scalenmf.models.fits import collect
    from scalenmf.models.step import BlockState, fit_stats_step
    from scalenmf.models.update import AnchoredModel, anchor_statistics, matched_cosines

    t0 = time.perf_counter()
    started = time.time()
    old, old_path = _old_result(result)
    W0 = np.asarray(old.W)
    m, k_old = W0.shape
    if k is not None and k != k_old:
        raise ValueError(
            f"k={k} does not match the rank of the result ({k_old}); an update keeps the "
            "result's factors"
        )
    if not isinstance(freeze_w, bool):
        raise TypeError(f"freeze_w must be True or False; got {freeze_w!r}")
    weight = float(Number(0.0, 1.0).check("forget_factor", forget_factor))
    fp = old.params
    loss = str(fp.get("loss") or "frobenius")
    if solver is None:
        solver = str(fp.get("solver") or "als")
        if solver not in ("als", "hals", "mu"):
            solver = "mu" if loss == "kl" else "als"
    p = checked_params(
        NMF_RULES,
        solver,
        k=k_old,
        loss=loss,
        nnls=nnls or str(fp.get("nnls") or "bpp"),
        l1_w=float(fp.get("l1_w", 0.0)),
        l1_h=float(fp.get("l1_h", 0.0)),
        l2_w=float(fp.get("l2_w", 0.0)),
        l2_h=float(fp.get("l2_h", 0.0)),
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        n_runs=1,
        workers=workers,
    )
    if p["solver"] == "online":
        p["solver"] = "mu" if p["loss"] == "kl" else "als"
    cluster = cluster_options_of(locals())
    where = kernel_backend(backend, device, gpu_memory_limit)
    source = align_to_basis(open_input(X_new, block_cols=block_cols), old.row_labels, m, False)
    if source.shape[1] == 0:
        raise InputError("the new data has no samples")
    dtype_ = work_dtype(gpu_dtype(dtype, where["device"]), source)
    W0 = np.ascontiguousarray(W0, dtype=dtype_)
    proj_solver = "mu" if p["loss"] == "kl" else "als"
    pp = checked_params(
        PROJECT_RULES,
        proj_solver,
        loss=p["loss"],
        nnls="bpp",
        l1_h=p["l1_h"],
        l2_h=p["l2_h"],
        k_new=0,
        bootstrap=0,
        max_iter=1000,
        tol=default_tol(None, proj_solver, p["loss"]),
        seed=0 if seed is None else seed,
        n_runs=1,
    )
    pp.update(novelty_cosine=None, novelty_z=None, resample="poisson", ci=0.9)
    pp.update(backend=where["backend"], device=where["device"])
    config = model_config(p, k=k_old, **where)
    with cluster.executor(source) as executor:
        checksum = input_checksum(executor)
        # W₀ with every new sample's H solved exactly: the explained variance before, and
        # (frozen W) the result itself.
        proj = project_on_executor(executor, source, W0, pp, dtype_, None, None, False, None, t0)
        t_init = time.perf_counter() - t0
        ev_before = float(proj.explained["total_r2"])
        if freeze_w:
            W1, H1 = W0, proj.H
            summary: dict[str, Any] = {
                "loss_history": [float(proj.objective)],
                "relative_error": float(proj.overall_relative_error),
                "n_iter": 0,
                "converged": True,
            }
            timings: dict[str, Any] = {"total_s": time.perf_counter() - t0, "init_s": t_init}
        else:
            stats = executor.map_reduce(fit_stats_step, None)["datasets"][0]
            mean = float(stats["xsum"]) / max(1.0, float(stats["n_obs"]))
            anchor = anchor_statistics(config, W0, old.H, weight)
            model = AnchoredModel(
                config, W0, float(np.sqrt(mean / k_old)) or 1.0, float(stats["xx"]), anchor
            )
            # Every block starts from its projected H (a warm start for HALS and MU); that
            # H is a Zarr array when the projection kept it out of memory: read by block.
            key = next(iter(model.groups))
            executor.set_states(
                [
                    BlockState(0, {key: np.asarray(proj.H[:, a:b], dtype=dtype_)[None]}, index=j)
                    for j, (a, b) in enumerate(source.block_bounds)
                ]
            )
            trace = iterate(
                model,
                executor,
                max_iter=p["max_iter"],
                tol=p["tol"],
                desc=f"update k={k_old}",
                progress=progress,
                callback=callback,
            )
            H_kept, _ = collect(executor, model, [0], labels=False, dtype=dtype_)
            H1 = H_kept[0]  # a stored H (states kept out of memory) is in dtype_ already
            W1 = model.Ws[0]
            if isinstance(H1, np.ndarray):
                H1 = H1.astype(dtype_, copy=False)
            summary = fit_summary(trace, 0)
            timings = fit_timings(t0, t_init, trace, 0)
        match, cosine = matched_cosines(W0, W1)
        rel_after = float(summary["relative_error"])
        ev_after = 1.0 - rel_after**2
        report = {
            "from": old_path,
            "freeze_w": freeze_w,
            "forget_factor": weight,
            "n_old": int(old.H.shape[1]),
            "n_new": int(source.shape[1]),
            "match": [int(v) for v in match],
            "cosine": [float(v) for v in cosine],
            "min_cosine": float(cosine.min()),
            "mean_cosine": float(cosine.mean()),
            "explained_variance_before": ev_before,
            "explained_variance_after": ev_after,
            "explained_variance_change": ev_after - ev_before,
            "relative_error_before": float(proj.overall_relative_error),
            "relative_error_after": rel_after if math.isfinite(rel_after) else None,
        }
        params = result_params(p, backend=config.backend, device=config.device)
        params.update(update=True, freeze_w=freeze_w, forget_factor=weight)
        out = NMFResult(
            W=np.ascontiguousarray(W1),
            H=np.ascontiguousarray(H1),
            **summary,
            params=params,
            row_labels=old.row_labels if old.row_labels is not None else source.row_labels,
            col_labels=source.col_labels,
            runs=[],
            timings=timings,
            info=run_info(source, executor, update=report),
        )
        out.manifest = run_manifest(source, p, checksum, out, started)
        out.manifest["updated_from"] = {
            "path": old_path,
            "input_checksum": (old.manifest.get("input") or {}).get("checksum"),
        }
        return out
