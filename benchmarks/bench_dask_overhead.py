"""The Dask executor's overhead per iteration against laptop mode, on a real local cluster.

    python -m benchmarks.bench_dask_overhead [--workers 2] [--iters 30] [--repeats 3]

Starts ``dask scheduler`` and ``--workers`` single-threaded ``dask worker`` processes on
127.0.0.1 (the command-line programs, as on a cluster), writes X (2000 × ``--samples``, rank 10,
dense, chunks of 500 samples) to a Zarr store the workers read, and times the
alternating loop (``timings["loop_s"]``: start-up, initialisation and collection excluded)
of ``scalenmf.nmf(store, 10, solver="hals", tol=0)`` with the local executor on as many
threads as there are workers, and with the Dask executor on the cluster; repeats
interleaved, best of each. The issue's goal: overhead at most +10 % on a problem of about
0.1 s per iteration. Note the machine load (printed) beside the figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import REPO_ROOT, load_average, thread_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_store(path: Path, m: int = 2000, n: int = 4000, k: int = 10) -> Path:
    import scalenmf

    rng = np.random.default_rng(1)
    X = rng.poisson(rng.gamma(0.5, 1.0, (m, k)) @ rng.gamma(1.0, 4.0, (k, n))).astype(np.float64)
    scalenmf.write_matrix(str(path), X, block_cols=500)
    return path


def start_cluster(workers: int, log_dir: Path) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` and ``workers`` ``dask worker`` processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = thread_env(1)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    bindir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [
                str(bindir / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                "127.0.0.1:0",
                "--no-show",
            ],
            env=env,
            stdout=open(log_dir / "scheduler.log", "w"),
            stderr=subprocess.STDOUT,
        )
    ]
    for i in range(workers):
        procs.append(
            subprocess.Popen(
                [
                    str(bindir / "dask"),
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--memory-limit",
                    "2GiB",
                    "--local-directory",
                    str(log_dir / f"w{i}"),
                ],
                env=env,
                stdout=open(log_dir / f"worker{i}.log", "w"),
                stderr=subprocess.STDOUT,
            )
        )
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--samples", type=int, default=4000, help="columns of X (12000: ~0.1 s/it on 2 cores)"
    )
    ap.add_argument("--out", help="write the result line here too")
    args = ap.parse_args(argv)
    from distributed import Client

    import scalenmf

    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    procs: list[subprocess.Popen] = []
    try:
        store = make_store(tmp / "x.zarr", n=args.samples)
        address, procs = start_cluster(args.workers, tmp)
        kw = {"solver": "hals", "max_iter": args.iters, "tol": 0, "progress": False}
        load_before = load_average()
        local: list[float] = []
        dask: list[float] = []
        with warnings.catch_warnings(), Client(address) as client:
            warnings.simplefilter("ignore")
            scalenmf.nmf(str(store), 10, scheduler=client, **{**kw, "max_iter": 2})  # warm
            for _ in range(args.repeats):
                r = scalenmf.nmf(str(store), 10, threads=args.workers, **kw)
                local.append(r.timings["loop_s"] / args.iters)
                r = scalenmf.nmf(str(store), 10, scheduler=client, **kw)
                dask.append(r.timings["loop_s"] / args.iters)
        lo, da = min(local), min(dask)
        line = (
            f"load average {load_before:.2f} → {load_average():.2f}; "
            f"2000×{args.samples} k=10 hals, "
            f"{args.iters} iterations, best of {args.repeats}: local ({args.workers} threads) "
            f"{lo:.4f} s/it, Dask ({args.workers} workers × 1 thread on 127.0.0.1) {da:.4f} s/it, "
            f"overhead {100 * (da / lo - 1):+.1f} % (all runs: local "
            f"{', '.join(f'{v:.4f}' for v in local)}; Dask {', '.join(f'{v:.4f}' for v in dask)})"
        )
        print(line)
        if args.out:
            Path(args.out).write_text(line + "\n")
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
