"""A small one-pass NumPy NMF with scalenmf's call signature, to exercise the harness.

Not the product: it stands in for ``scalenmf.nmf`` until the real engine lands
(``python -m benchmarks.bench_core --engine benchmarks.naive_engine:nmf``), and is a
"plain NumPy, one pass over column blocks" baseline. It follows the loop of DESIGN §3:
per column block ``X_j`` it updates ``H_j`` from ``WᵀW`` and ``WᵀX_j`` and accumulates
``X_j H_jᵀ`` and ``H_j H_jᵀ``; then W is updated once. Input: ndarray, scipy.sparse, or a
path to a dense Zarr array (streamed block by block every iteration).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

EPS = 1e-12


@dataclass
class Result:
    W: np.ndarray
    H: np.ndarray
    loss_history: list[float]
    relative_error: float
    n_iter: int
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)


def _blocks(X: Any, block: int) -> tuple[Any, int, int, list[slice]]:
    if isinstance(X, str):
        import zarr

        X = zarr.open_array(X, mode="r")
        block = X.chunks[1]
    m, n = X.shape
    return X, m, n, [slice(s, min(s + block, n)) for s in range(0, n, block)]


def _get(X: Any, cols: slice) -> Any:
    blk = X[:, cols]
    return blk if sp.issparse(blk) else np.asarray(blk, dtype=np.float64)


def _hals_rows(G: np.ndarray, B: np.ndarray, H: np.ndarray) -> None:
    """One HALS sweep over the rows of H (k×n) for min ‖X − WH‖ given G = WᵀW, B = WᵀX."""
    for t in range(H.shape[0]):
        H[t] = np.maximum(H[t] + (B[t] - G[t] @ H) / max(G[t, t], EPS), EPS)


def nmf(
    X: Any,
    k: int,
    *,
    solver: str = "hals",
    loss: str = "frobenius",
    init: str = "random",
    max_iter: int = 100,
    tol: float = 0.0,
    seed: int = 0,
    memory_limit: int | None = None,
    block: int = 2048,
) -> Result:
    """Factorize X (m×n) ≈ W (m×k) · H (k×n). ``memory_limit`` is accepted and ignored."""
    t_start = time.perf_counter()
    X, m, n, blocks = _blocks(X, block)
    rng = np.random.default_rng(seed)
    # scale a random init to the data: mean(WH) ≈ mean(X)
    mean_x = float(np.mean([_get(X, b).sum() for b in blocks[:4]])) / (
        m * sum(b.stop - b.start for b in blocks[:4])
    )
    scale = np.sqrt(max(mean_x, EPS) / k)
    W = rng.random((m, k)) * 2 * scale
    H = rng.random((k, n)) * 2 * scale
    norm_x2 = sum(
        float(_get(X, b).multiply(_get(X, b)).sum())
        if sp.issparse(X)
        else float(np.einsum("ij,ij->", _get(X, b), _get(X, b)))
        for b in blocks
    )
    t_init = time.perf_counter() - t_start
    hist: list[float] = []
    per_it: list[float] = []
    for _ in range(max_iter):
        t0 = time.perf_counter()
        G = W.T @ W
        XHt = np.zeros((m, k))
        HHt = np.zeros((k, k))
        kl = 0.0
        for b in blocks:
            Xj = _get(X, b)
            Hj = H[:, b]
            if loss == "kl":
                Y = np.maximum(W @ Hj, EPS)
                R = (Xj.toarray() if sp.issparse(Xj) else Xj) / Y
                Hj *= (W.T @ R) / np.maximum(W.sum(axis=0)[:, None], EPS)
                Y = np.maximum(W @ Hj, EPS)
                Xd = Xj.toarray() if sp.issparse(Xj) else Xj
                pos = Xd > 0
                kl += float(np.sum(Xd[pos] * np.log(Xd[pos] / Y[pos])) - Xd.sum() + Y.sum())
                XHt += (Xd / Y) @ Hj.T
                HHt[:, 0] += Hj.sum(axis=1)
            else:
                Bj = np.asarray(W.T @ Xj) if not sp.issparse(Xj) else (Xj.T @ W).T
                if solver == "mu":
                    Hj *= Bj / np.maximum(G @ Hj, EPS)
                else:
                    _hals_rows(G, Bj, Hj)
                XHt += np.asarray(Xj @ Hj.T)
                HHt += Hj @ Hj.T
            H[:, b] = Hj
        if loss == "kl":
            W *= XHt / np.maximum(HHt[:, 0][None, :], EPS)
            hist.append(kl)
        else:
            if solver == "mu":
                W *= XHt / np.maximum(W @ HHt, EPS)
            else:
                _hals_rows(HHt, XHt.T, W.T)
            f = norm_x2 - 2 * np.sum(W * XHt) + np.sum((W.T @ W) * HHt)
            hist.append(max(float(f), 0.0))
        per_it.append(time.perf_counter() - t0)
        if tol > 0 and len(hist) > 1 and abs(hist[-2] - hist[-1]) <= tol * hist[-2]:
            break
    rel = float(np.sqrt(hist[-1] / norm_x2)) if loss != "kl" else float("nan")
    return Result(
        W=W,
        H=H,
        loss_history=hist,
        relative_error=rel,
        n_iter=len(hist),
        params={"solver": solver, "loss": loss, "init": "random"},
        timings={"init": t_init, "per_iteration": per_it},
    )
