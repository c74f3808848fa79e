"""The block kernels on numpy, torch-CPU and torch-GPU: RcppML's GPU table, and out of core.

Each problem runs ``--iters`` iterations (tol 0) of ``scalenmf.nmf`` (ALS with exact NNLS by
block pivoting, the default) on every backend present, after one untimed warm-up fit of
two iterations, and reports seconds per iteration and the GPU's speedup over the host's
numpy on all its cores. The out-of-core row fits a dense float32 Zarr store three times the
``--gpu-memory-limit`` it sets, against the same data held in GPU memory.

    python benchmarks/bench_gpu.py                 # the full table (a GPU machine)
    python benchmarks/bench_gpu.py --scale 0.05    # the same problems, shrunk (any machine)

Writes a Markdown table to stdout and to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import scipy.sparse as sp

import scalenmf

#: (name, m, n, density or None for dense, k) — RcppML's GPU vignette problems.
PROBLEMS = [
    ("dense 10,000 × 5,000, k=20", 10_000, 5_000, None, 20),
    ("dense 10,000 × 5,000, k=50", 10_000, 5_000, None, 50),
    ("sparse 50,000 × 10,000 at 2%, k=20", 50_000, 10_000, 0.02, 20),
    ("single-cell-like 30,000 × 20,000 at 5%, k=30", 30_000, 20_000, 0.05, 30),
]


def make(m: int, n: int, density: float | None, k: int, seed: int = 0):
    """Seeded non-negative data of rank about k plus Poisson noise (dense or CSC)."""
    rng = np.random.default_rng(seed)
    if density is None:
        W = rng.gamma(1.0, 1.0, (m, k)).astype(np.float32)
        H = rng.gamma(1.0, 1.0, (k, n)).astype(np.float32)
        return rng.poisson(W @ H / k * 4).astype(np.float32)
    nnz = int(m * n * density)
    rows = rng.integers(0, m, nnz)
    cols = rng.integers(0, n, nnz)
    vals = rng.poisson(3.0, nnz).astype(np.float32) + 1
    return sp.csc_matrix((vals, (rows, cols)), shape=(m, n), dtype=np.float32)


def per_iteration(X, k: int, iters: int, **backend) -> float:
    """Seconds per iteration of an ``iters``-iteration fit (warm-up fit untimed)."""
    scalenmf.nmf(X, k, max_iter=2, tol=0, init="random", progress=False, **backend)
    start = time.perf_counter()
    scalenmf.nmf(X, k, max_iter=iters, tol=0, init="random", progress=False, **backend)
    return (time.perf_counter() - start) / iters


def backends() -> list[tuple[str, dict]]:
    out = [("numpy (host CPU)", {})]
    try:
        import torch
    except ImportError:
        return out
    out.append(("torch-CPU", {"device": "cpu"}))
    if torch.cuda.is_available():
        out.append(("torch-GPU", {"device": "cuda"}))
    return out


def out_of_core_row(scale: float, iters: int, limit: int) -> str:
    """A dense float32 store 3× the GPU memory limit, streamed, against it held on the GPU."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        return "| out of core (dense float32, 3× the GPU limit) | – | – | no GPU | – |"
    m = max(200, int(20_000 * scale))
    n = int(3 * limit / (4 * m))
    X = make(m, n, None, 30)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.zarr")
        scalenmf.convert(X, path)
        streamed = per_iteration(path, 30, iters, device="cuda", gpu_memory_limit=limit)
        resident = per_iteration(path, 30, iters, device="cuda", gpu_memory_limit=8 * limit)
    return (
        f"| out of core: {m:,} × {n:,} float32 ({X.nbytes / 2**30:.1f} GiB, limit "
        f"{limit / 2**30:.1f} GiB), k=30 | – | – | {streamed:.4f} s (resident {resident:.4f} s) "
        f"| {resident / streamed:.2f}× of in-memory |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="Shrink m and n by this factor.")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--gpu-memory-limit", type=float, default=4.0, help="GiB, out-of-core row.")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    names = backends()
    lines = [
        f"| problem | {' | '.join(name for name, _ in names)} | GPU speedup |",
        "|" + "---|" * (len(names) + 2),
    ]
    for title, m, n, density, k in PROBLEMS:
        X = make(max(50, int(m * args.scale)), max(50, int(n * args.scale)), density, k)
        times = {name: per_iteration(X, k, args.iters, **kw) for name, kw in names}
        gpu = times.get("torch-GPU")
        speed = f"{times['numpy (host CPU)'] / gpu:.1f}×" if gpu else "no GPU"
        cells = " | ".join(f"{times[name]:.4f} s" for name, _ in names)
        lines.append(
            f"| {title}{'' if args.scale == 1 else f' (×{args.scale})'} | {cells} | {speed} |"
        )
        print(lines[-1], flush=True)
    lines.append(out_of_core_row(args.scale, args.iters, int(args.gpu_memory_limit * 2**30)))
    table = "\n".join(lines)
    print(f"\nseconds per iteration, {args.iters} iterations, {os.cpu_count()} host cores\n")
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
