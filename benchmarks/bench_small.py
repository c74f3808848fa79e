"""Small problems: scalenmf's per-fit and per-iteration cost against scikit-learn and nimfa.

    python -m benchmarks.bench_small [--repeats 3] [--threads 2] [--dask] [--demo] [--out t.md]

Every fit runs exactly ``--iters`` iterations (tol = 0) from NNDSVDa (nimfa: its own
``random_vcol``), in this process, best of ``--repeats``. Columns: the wall time of the
fitting call, that time per iteration, and the ratio to sklearn-cd. The issue's goal: on
problems that fit in one block, scalenmf's time per iteration (hals, als) at most 1.5×
sklearn-cd's.

``--dask`` adds the Dask executor's overhead on a problem of about 0.1 s per iteration
(a LocalCluster of ``--threads`` single-threaded workers against the local executor with
as many threads; loop time only, cluster start-up excluded); goal ≤ +10 %.
``--demo`` times ``scalenmf demo`` (the fit and the report, after imports); goal < 5 s.
Note the machine load (printed) beside any figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peers
from benchmarks.common import fmt, limit_threads, load_average, markdown_table

#: (label, m features, n samples, k, loss): the issue's cases and two common shapes.
PROBLEMS = [
    ("mutation catalogue 96×560", 96, 560, 5, "frobenius"),
    ("200×300", 200, 300, 5, "frobenius"),
    ("5000 genes × 38 samples", 5000, 38, 5, "frobenius"),
    ("catalogue 96×500, KL", 96, 500, 6, "kl"),
]


def make_data(m: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Gamma–Poisson counts of rank k (features × samples)."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, (m, k))
    H = rng.gamma(1.0, 4.0, (k, n))
    return rng.poisson(W @ H).astype(np.float64)


def scalenmf_fit(X: np.ndarray, k: int, solver: str, loss: str, iters: int, threads: int) -> Any:
    import scalenmf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        res = scalenmf.nmf(
            X, k, solver=solver, loss=loss, max_iter=iters, tol=0, threads=threads, progress=False
        )
        wall = time.perf_counter() - t0
    return {"time_s": wall, "rel_error": res.relative_error, "n_iter": res.n_iter}


def best_of(repeats: int, fn: Any) -> dict[str, Any]:
    runs = [fn() for _ in range(repeats)]
    ok = [r for r in runs if r.get("time_s") is not None]
    return min(ok, key=lambda r: r["time_s"]) if ok else runs[0]


def small_table(
    iters: int, repeats: int, threads: int, only: list[int] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for i, (label, m, n, k, loss) in enumerate(PROBLEMS, start=1):
        if only and i not in only:
            continue
        rows += _problem_rows(label, make_data(m, n, k), k, loss, iters, repeats, threads)
    return rows


def _problem_rows(
    label: str, X: np.ndarray, k: int, loss: str, iters: int, repeats: int, threads: int
) -> list[dict[str, Any]]:
    rows = []
    entries: list[tuple[str, Any]] = []
    if loss == "frobenius":
        entries += [
            ("sklearn cd", lambda: peers.sklearn_nmf(X, k, solver="cd", max_iter=iters)),
            ("sklearn mu", lambda: peers.sklearn_nmf(X, k, solver="mu", max_iter=iters)),
            ("nimfa mu", lambda: peers.nimfa_nmf(X, k, max_iter=iters)),
            ("scalenmf hals", lambda: scalenmf_fit(X, k, "hals", loss, iters, threads)),
            ("scalenmf als", lambda: scalenmf_fit(X, k, "als", loss, iters, threads)),
            ("scalenmf mu", lambda: scalenmf_fit(X, k, "mu", loss, iters, threads)),
        ]
    else:
        entries += [
            (
                "sklearn mu/KL",
                lambda: peers.sklearn_nmf(X, k, solver="mu", loss="kl", max_iter=iters),
            ),
            ("nimfa mu/KL", lambda: peers.nimfa_nmf(X, k, loss="kl", max_iter=iters)),
            ("scalenmf mu/KL", lambda: scalenmf_fit(X, k, "mu", loss, iters, threads)),
        ]
    base = None
    for name, fn in entries:
        with limit_threads(threads):
            rec = best_of(repeats, fn)
        t = rec.get("time_s")
        if name.startswith("sklearn") and base is None and t is not None:
            base = t
        rows.append(
            {
                "problem": label,
                "method": name,
                "time_s": t,
                "ms_per_iter": None if t is None else 1000 * t / iters,
                "vs_first_sklearn": None if (t is None or base is None) else t / base,
                "rel_error": rec.get("rel_error"),
                "status": rec.get("status", "ok"),
            }
        )
    return rows


def dask_overhead(threads: int, iters: int = 20) -> dict[str, Any]:
    """Loop seconds per iteration, local threads vs a LocalCluster, on a ~0.1 s/it problem."""
    import scalenmf

    X = make_data(2000, 4000, 10, seed=1)
    kw = {"solver": "hals", "max_iter": iters, "tol": 0, "progress": False, "block_cols": 500}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = min(scalenmf.nmf(X, 10, threads=threads, **kw).timings["loop_s"] for _ in range(2))
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=threads, threads_per_worker=1, processes=True) as cluster:
            with Client(cluster) as client:
                dask = min(
                    scalenmf.nmf(X, 10, scheduler=client, **kw).timings["loop_s"] for _ in range(2)
                )
    return {
        "local_s_per_iter": local / iters,
        "dask_s_per_iter": dask / iters,
        "overhead": dask / local - 1.0,
    }


def demo_time() -> dict[str, float]:
    """Wall and CPU seconds of ``scalenmf demo`` after imports: in all, to the fitted result
    (fit, matching, store written), and the report. CPU time is the steadier figure on a
    shared machine (the demo runs on one core)."""
    import matplotlib

    matplotlib.use("Agg")
    from scalenmf.demo import run_demo
    from scalenmf.reporting import report  # noqa: F401 - imports before the clock starts

    marks: dict[str, tuple[float, float]] = {}

    def echo(line: str) -> None:
        if line.startswith("Result store written"):
            marks["store"] = (time.perf_counter(), time.process_time())

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        run_demo(str(Path(tmp) / "demo.zarr"), echo=echo)
        t1, c1 = time.perf_counter(), time.process_time()
    ts, cs = marks["store"]
    return {
        "wall_s": t1 - t0,
        "cpu_s": c1 - c0,
        "fit_wall_s": ts - t0,
        "fit_cpu_s": cs - c0,
        "report_wall_s": t1 - ts,
        "report_cpu_s": c1 - cs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", help="comma-separated problem numbers (1-based), e.g. 1,2")
    ap.add_argument("--dask", action="store_true", help="also the Dask executor's overhead")
    ap.add_argument("--demo", action="store_true", help="also time `scalenmf demo`")
    ap.add_argument("--out", help="write the Markdown here too")
    args = ap.parse_args(argv)
    parts = [f"load average before: {load_average():.2f}, threads: {args.threads}", ""]
    only = [int(v) for v in args.only.split(",")] if args.only else None
    rows = small_table(args.iters, args.repeats, args.threads, only)
    parts.append(
        markdown_table(
            rows,
            [
                ("problem", "problem"),
                ("method", "method"),
                ("time_s", f"s / {args.iters} it"),
                ("ms_per_iter", "ms / it"),
                ("vs_first_sklearn", "× sklearn (cd; mu for KL)"),
                ("rel_error", "rel. error"),
                ("status", "status"),
            ],
        )
    )
    if args.dask:
        d = dask_overhead(args.threads)
        parts += [
            "",
            f"Dask overhead (2000×4000, k=10, hals, 8 blocks): local "
            f"{fmt(d['local_s_per_iter'])} s/it, Dask {fmt(d['dask_s_per_iter'])} s/it, "
            f"overhead {100 * d['overhead']:+.1f} %",
        ]
    if args.demo:
        d = demo_time()
        parts += [
            "",
            f"scalenmf demo after imports: {d['wall_s']:.2f} s wall ({d['cpu_s']:.2f} s CPU); "
            f"fit, matching and store {d['fit_wall_s']:.2f} s ({d['fit_cpu_s']:.2f} s CPU), "
            f"report {d['report_wall_s']:.2f} s ({d['report_cpu_s']:.2f} s CPU)",
        ]
    parts += ["", f"load average after: {load_average():.2f}"]
    text = "\n".join(parts)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
