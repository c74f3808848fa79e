"""Cluster benchmarks: strong scaling on a LocalCluster, and the Dask executor's overhead.

1. Strong scaling. A dense float32 matrix (default 20000 × 50000, 4 GB decoded) in a Zarr
   store, k = 20, HALS. The same fit on a LocalCluster of 1, 2, 4, … single-threaded worker
   processes (as many as the machine has cores, or ``--workers``); X stays resident on the
   workers. Reports seconds per iteration (median of the timed iterations), the speedup
   over one worker and the parallel efficiency (speedup ÷ workers).
2. Overhead. Seconds per iteration of the Dask executor (N workers × 1 thread) against the
   laptop executor (N threads) on the same store and blocking: ``dask ÷ laptop − 1``.
   Goal ≤ 10 %.

Run:  python -m benchmarks.bench_cluster [--m 20000 --n 50000 --k 20 --iters 4]
The load average is printed with the figures: on a shared machine they are only as good
as the quiet they were taken in.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import load_average, set_thread_env


def make_store(path: Path, m: int, n: int, k: int, seed: int = 0) -> Path:
    """A dense float32 store: a rank-k non-negative product plus uniform noise, by blocks."""
    import zarr

    from scalenmf.io.zarr_store import _codec

    if (path / "zarr.json").exists():
        return path
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, size=(m, k)).astype(np.float32)
    block = max(1, min(n, (256 * 2**20) // (4 * m)))
    tmp = path.with_name(path.name + ".tmp")
    root = zarr.open_group(str(tmp), mode="w")
    root.attrs["scalenmf"] = {"kind": "matrix", "format_version": 1}
    arr = root.create_array(
        "X", shape=(m, n), chunks=(m, block), dtype=np.float32, compressors=[_codec()]
    )
    for a in range(0, n, block):
        b = min(n, a + block)
        H = rng.gamma(1.0, 1.0, size=(k, b - a)).astype(np.float32)
        X = W @ H
        X += rng.random(X.shape, dtype=np.float32)
        arr[:, a:b] = X
    os.replace(tmp, path)
    return path


def per_iteration(result) -> float:
    """Median seconds per iteration, leaving out the first (it warms caches and pools)."""
    times = [0.0, *result.timings["iter_times"]]
    steps = [b - a for a, b in itertools.pairwise(times)]
    return statistics.median(steps[1:] if len(steps) > 2 else steps)


def fit(store: Path, k: int, iters: int, **kw):
    import scalenmf

    return scalenmf.nmf(
        str(store), k, solver="hals", init="random", max_iter=iters, tol=0, progress=False, **kw
    )


def dask_run(store: Path, k: int, iters: int, workers: int, memory_per_worker: int) -> float:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=memory_per_worker,
        ) as cluster,
        Client(cluster) as client,
    ):
        res = fit(store, k, iters, scheduler=client)
        assert res.info["resident"], "X was not kept resident; raise the memory per worker"
        return per_iteration(res)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--m", type=int, default=20000)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="*", default=None)
    ap.add_argument("--store", type=Path, default=Path("benchmarks/.data"))
    ap.add_argument("--memory", default="16GB", help="Memory for all workers together.")
    args = ap.parse_args(argv)
    from dask.utils import parse_bytes

    set_thread_env(1)
    cores = os.cpu_count() or 1
    counts = args.workers or [w for w in (1, 2, 4, 8, 16) if w <= cores]
    args.store.mkdir(parents=True, exist_ok=True)
    store = args.store / f"dense_{args.m}x{args.n}_f32.zarr"
    t0 = time.perf_counter()
    make_store(store, args.m, args.n, args.k)
    gb = args.m * args.n * 4 / 1e9
    print(f"# store {store} ({gb:.2f} GB decoded) ready in {time.perf_counter() - t0:.1f}s")
    version = sys.version.split()[0]
    print(f"# machine: {cores} cores, load average {load_average():.2f}, python {version}")
    total = int(parse_bytes(args.memory))
    rows = []
    for w in counts:
        s = dask_run(store, args.k, args.iters, w, total // w)
        rows.append((w, s))
        print(f"dask workers={w}: {s:.3f} s/iteration (load {load_average():.2f})", flush=True)
    base = rows[0][1]
    print("\n| workers | s/iteration | speedup | efficiency |\n|---|---|---|---|")
    for w, s in rows:
        speedup = base / s
        print(f"| {w} | {s:.3f} | {speedup:.2f} | {speedup / w:.0%} |")
    w_max = counts[-1]
    laptop = per_iteration(fit(store, args.k, args.iters, threads=w_max))
    dask_s = dict(rows)[w_max]
    print(
        f"\noverhead: dask {w_max} workers × 1 thread {dask_s:.3f} s/it vs laptop {w_max} "
        f"threads {laptop:.3f} s/it → {dask_s / laptop - 1:+.1%} (goal ≤ +10%); "
        f"load {load_average():.2f}"
    )


if __name__ == "__main__":
    main()
