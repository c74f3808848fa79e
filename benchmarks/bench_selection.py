"""Benchmarks of the model-selection issue: rank survey and consensus.

    python -m benchmarks.bench_selection [--quick] [--only 1,2,3] [--threads 2] [--out F.md]

1. Rank survey k = 2..6 × 10 runs on the seed 001 example (300 genes × 30 samples,
   3 clusters, noise sd 0.2 clipped at 0) against R's NMF package,
   ``nmf(X, 2:6, method="brunet", nrun=10)``: wall-time ratio scalenmf ÷ R (goal ≤ 0.1)
   and the cophenetic correlation per k from both.
2. Consensus k = 3 × 30 runs on the same data against ``nmf(X, 3, method="brunet",
   nrun=30)``: wall-time ratio and cophenetic.
3. Rank survey k = 2..12 × 10 runs on a 96 × 100,000 COSMIC-simulated catalogue: wall
   time in laptop mode (local threads) and on a LocalCluster with 2 worker processes
   (one BLAS thread each; its start-up is reported apart), both reading the same Zarr
   store, for a fixed number of iterations (``--iters``).
4. Rank survey k = 2..12 × 5 runs on COSMIC-simulated catalogues of 96 × n, n in
   ``--scale-samples`` (default 10⁵ and 10⁶; float32 Zarr), HALS, ``--iters`` iterations,
   under ``--memory-limit`` (default 1GB; "none" for no limit): wall time, seconds per
   iteration per sample, and the peak RSS of a fresh process running the survey alone
   (the cohort-scale issue's benchmark 4: memory should not grow with n).

R gets the same matrix (written to a CSV file) and is timed inside R (``system.time``
around the ``nmf`` call only); it runs its restarts in parallel on ``--threads`` cores
(its doParallel backend). scalenmf is timed around the API call (from the in-memory
matrix for 1–2, from the store for 3). Without ``Rscript`` / ``library(NMF)`` benchmarks
1–2 report R as not installed and still time scalenmf. The machine is shared: the load
average is printed with every figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_THREADS,
    THREAD_ENV_VARS,
    dump_json,
    load_average,
    machine_info,
    machine_table,
    markdown_table,
    ratio,
    set_thread_env,
    thread_env,
)


def seed001_example(seed: int = 123) -> np.ndarray:
    """300 genes × 30 samples, 3 clusters of 10, noise sd 0.2 clipped at 0 (seed 001)."""
    rng = np.random.default_rng(seed)
    W = rng.uniform(0, 2, (300, 3))
    truth = np.repeat(np.arange(3), 10)
    H = np.zeros((3, 30))
    H[truth, np.arange(30)] = rng.uniform(1, 2, 30)
    return np.maximum(W @ H + rng.normal(0, 0.2, (300, 30)), 0)


# --------------------------------------------------------------------------- R's NMF

R_SCRIPT = r"""
suppressMessages(library(NMF))
args <- commandArgs(trailingOnly = TRUE)
X <- as.matrix(read.csv(args[1], header = FALSE))
ranks <- eval(parse(text = args[2]))
nrun <- as.integer(args[3])
cores <- as.integer(args[4])
t <- system.time(res <- nmf(X, ranks, method = "brunet", nrun = nrun, seed = 123,
                            .opt = paste0("p", cores)))
cat(sprintf("TIME %.4f\n", t[["elapsed"]]))
if (length(ranks) > 1) {
  m <- res$measures
  for (i in seq_len(nrow(m))) cat(sprintf("COPH %d %.6f %.6f\n", m$rank[i], m$cophenetic[i],
                                          m$dispersion[i]))
} else {
  cat(sprintf("COPH %d %.6f %.6f\n", ranks, cophcor(res), dispersion(res)))
}
"""


def r_available() -> str | None:
    """None when Rscript and library(NMF) work, else why not."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "Rscript not installed"
    probe = subprocess.run(
        [rscript, "-e", "suppressMessages(library(NMF))"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return "R package NMF not installed"
    return None


def run_r_nmf(X: np.ndarray, ranks: str, nrun: int, threads: int) -> dict[str, Any]:
    """Time ``nmf(X, ranks, method="brunet", nrun=nrun)`` in R; cophenetic per rank."""
    why = r_available()
    if why is not None:
        return {"status": "not installed", "note": why}
    with tempfile.TemporaryDirectory(prefix="scalenmf-bench-r-") as tmp:
        csv = Path(tmp) / "x.csv"
        np.savetxt(csv, X, delimiter=",", fmt="%.17g")
        script = Path(tmp) / "run.R"
        script.write_text(R_SCRIPT)
        proc = subprocess.run(
            ["Rscript", str(script), str(csv), ranks, str(nrun), str(threads)],
            capture_output=True,
            text=True,
            env=thread_env(1),  # one BLAS thread per R worker process; R runs `threads` of them
            timeout=3600,
        )
    if proc.returncode != 0:
        return {"status": "failed", "note": proc.stderr[-500:]}
    out: dict[str, Any] = {"cophenetic": {}, "dispersion": {}}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == "TIME":
            out["time_s"] = float(parts[1])
        elif parts and parts[0] == "COPH":
            out["cophenetic"][int(parts[1])] = float(parts[2])
            out["dispersion"][int(parts[1])] = float(parts[3])
    return out


# --------------------------------------------------------------------------- scalenmf runs


def _quiet(fn: Any, *args: Any, **kw: Any) -> Any:
    import scalenmf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return fn(*args, **kw)


def bench_survey_vs_r(threads: int, quick: bool) -> list[dict[str, Any]]:
    import scalenmf

    X = seed001_example()
    rows: list[dict[str, Any]] = []
    n_runs = 4 if quick else 10
    r = run_r_nmf(X, "2:6", n_runs, threads)
    # R's time excludes loading its packages (system.time around nmf() alone): leave out
    # scalenmf's lazy imports of the survey's modules the same way, with an untimed run.
    _quiet(scalenmf.rank_survey, X, "2-3", 2, progress=False, threads=threads, max_iter=5)
    configs = [
        ("same work as R (no null, no CV), default solver", {"null": False, "cv_reps": 0}),
        ("same work as R, solver mu", {"null": False, "cv_reps": 0, "solver": "mu"}),
        (
            "same work as R, KL + mu (brunet's model)",
            {"null": False, "cv_reps": 0, "loss": "kl", "solver": "mu"},
        ),
        ("full survey: + permuted null + 3 CV replicates", {}),
    ]
    for name, kw in configs:
        load = load_average()
        t0 = time.perf_counter()
        res = _quiet(scalenmf.rank_survey, X, "2-6", n_runs, progress=False, threads=threads, **kw)
        wall = time.perf_counter() - t0
        coph = {row["k"]: row["cophenetic"] for row in res.summary}
        rows.append(
            {
                "benchmark": "1. rank survey k=2..6",
                "config": name,
                "scalenmf_s": wall,
                "r_s": r.get("time_s"),
                "ratio": ratio(wall, r.get("time_s")),
                "suggested_k": res.suggestion["k"],
                "cophenetic": coph,
                "r_cophenetic": r.get("cophenetic"),
                "max_coph_diff": _max_diff(coph, r.get("cophenetic")),
                "r_status": r.get("status", "ok"),
                "load": load,
            }
        )
    return rows


def _max_diff(a: dict[int, float], b: dict[int, float] | None) -> float | None:
    if not b:
        return None
    return max(abs(a[k] - b[k]) for k in a if k in b)


def bench_consensus_vs_r(threads: int, quick: bool) -> list[dict[str, Any]]:
    import scalenmf

    X = seed001_example()
    n_runs = 10 if quick else 30
    r = run_r_nmf(X, "3", n_runs, threads)
    rows = []
    for name, kw in (
        ("default solver", {}),
        ("KL + mu (brunet's model)", {"loss": "kl", "solver": "mu"}),
    ):
        load = load_average()
        t0 = time.perf_counter()
        res = _quiet(scalenmf.consensus, X, 3, n_runs, progress=False, threads=threads, **kw)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "benchmark": "2. consensus k=3",
                "config": name,
                "scalenmf_s": wall,
                "r_s": r.get("time_s"),
                "ratio": ratio(wall, r.get("time_s")),
                "cophenetic": {3: res.cophenetic},
                "r_cophenetic": r.get("cophenetic"),
                "max_coph_diff": _max_diff({3: res.cophenetic}, r.get("cophenetic")),
                "r_status": r.get("status", "ok"),
                "load": load,
            }
        )
    return rows


def bench_catalogue(threads: int, quick: bool, iters: int) -> list[dict[str, Any]]:
    import scalenmf
    from scalenmf.signatures import cosmic_reference, simulate_catalogue

    n = 20_000 if quick else 100_000
    ref = cosmic_reference()
    rng = np.random.default_rng(0)
    cols = rng.choice(ref.matrix.shape[1], size=8, replace=False)
    counts, _ = simulate_catalogue(ref.matrix[:, cols], n, seed=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scalenmf-bench-cat-") as tmp:
        store = Path(tmp) / "catalogue.zarr"
        scalenmf.write_matrix(store, counts.astype(np.float32), row_labels=ref.channels)
        del counts
        kw = {
            "n_runs": 10,
            "null": False,
            "cv_reps": 0,
            "max_iter": iters,
            "tol": 0.0,
            "progress": False,
            "solver": "hals",
        }
        for mode in ("laptop (threads)", "LocalCluster, 2 workers"):
            rows.append(_catalogue_run(mode, str(store), kw, threads, n))
    base = rows[0]["scalenmf_s"]
    for row in rows:
        row["ratio"] = row["scalenmf_s"] / base
    return rows


def _catalogue_run(
    mode: str, store: str, kw: dict[str, Any], threads: int, n: int
) -> dict[str, Any]:
    import scalenmf

    load = load_average()
    cluster = client = None
    startup = 0.0
    extra: dict[str, Any] = {"threads": threads}
    if mode.startswith("LocalCluster"):
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        # One BLAS thread per worker process, as laptop mode pins its block threads. The
        # spawned workers load BLAS with the thread variables of this process, so those
        # are set to 1 while the cluster starts (LocalCluster's ``env`` comes too late).
        saved = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
        os.environ.update(thread_env(1, {}))
        try:
            cluster = LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
            )
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
        client = Client(cluster)
        startup = time.perf_counter() - t0
        extra = {"scheduler": client}
    try:
        t0 = time.perf_counter()
        res = _quiet(scalenmf.rank_survey, store, "2-12", **kw, **extra)
        wall = time.perf_counter() - t0
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    timings = res.info["timings"]
    return {
        "benchmark": f"3. rank survey k=2..12 × 10 runs, 96×{n:,} catalogue",
        "config": mode,
        "scalenmf_s": wall,
        "cluster_start_s": startup,
        "fit_s": timings["fit_s"],
        "iterations": timings["iterations"],
        "loop_s": timings["loop_s"],
        "s_per_iter": timings["loop_s"] / max(1, timings["iterations"]),
        "n_fits": len(res.runs),
        "load": load,
    }


def catalogue_store(path: Path, n: int, seed: int = 1, chunk: int = 100_000) -> Path:
    """A 96 × n COSMIC-simulated float32 catalogue store, generated ``chunk`` samples at a
    time (8 reference signatures, 3 active per sample)."""
    import scalenmf
    from scalenmf.signatures import cosmic_reference, simulate_catalogue

    ref = cosmic_reference()
    sigs = ref.matrix[:, np.random.default_rng(0).choice(ref.matrix.shape[1], 8, replace=False)]
    parts = [
        simulate_catalogue(sigs, min(chunk, n - a), seed=seed + a)[0].astype(np.float32)
        for a in range(0, n, chunk)
    ]
    scalenmf.write_matrix(path, np.hstack(parts), row_labels=ref.channels)
    return path


def survey_in_child(store: str, iters: int, memory_limit: str | None) -> dict[str, Any]:
    """The survey of benchmark 4, run inside ``run_in_child`` (its peak RSS is measured)."""
    import scalenmf

    t0 = time.perf_counter()
    res = _quiet(
        scalenmf.rank_survey,
        store,
        "2-12",
        n_runs=5,
        null=False,
        cv_reps=0,
        max_iter=iters,
        tol=0.0,
        progress=False,
        solver="hals",
        memory_limit=memory_limit,
    )
    timings = res.info["timings"]
    return {
        "wall_s": time.perf_counter() - t0,
        "loop_s": timings["loop_s"],
        "iterations": timings["iterations"],
        "n_fits": len(res.runs),
    }


def bench_survey_scale(
    threads: int, samples: list[int], iters: int, memory_limit: str | None
) -> list[dict[str, Any]]:
    from benchmarks.common import run_in_child

    rows = []
    with tempfile.TemporaryDirectory(prefix="scalenmf-bench-scale-") as tmp:
        for n in samples:
            store = catalogue_store(Path(tmp) / f"catalogue-{n}.zarr", n)
            load = load_average()
            child = run_in_child(
                "benchmarks.bench_selection:survey_in_child",
                {"store": str(store), "iters": iters, "memory_limit": memory_limit},
                threads=threads,
            )
            out = child.value or {}
            per_iter = out.get("loop_s", float("nan")) / max(1, out.get("iterations", 1))
            rows.append(
                {
                    "benchmark": f"4. rank survey k=2..12 × 5 runs, 96×{n:,}",
                    "config": f"laptop, memory_limit={memory_limit}",
                    "scalenmf_s": out.get("wall_s"),
                    "s_per_iter": per_iter,
                    "s_per_iter_per_sample": per_iter / n,
                    "peak_rss_mb": child.peak_rss_bytes / 2**20,
                    "error": child.extra.get("error"),
                    "load": load,
                }
            )
            shutil.rmtree(store, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Smaller runs (a smoke test).")
    ap.add_argument("--only", default="1,2,3", help="Which benchmarks, e.g. 1,2 (or 4).")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    ap.add_argument("--iters", type=int, default=20, help="Iterations of benchmarks 3 and 4.")
    ap.add_argument(
        "--scale-samples",
        default="100000,1000000",
        help="Benchmark 4: sample counts n of the 96 × n catalogues.",
    )
    ap.add_argument("--memory-limit", default="1GB", help='Benchmark 4\'s limit ("none": none).')
    ap.add_argument("--out", default=None, help="Write the Markdown table here.")
    ap.add_argument("--json", default=None, help="Write every record here.")
    args = ap.parse_args(argv)
    set_thread_env(args.threads)
    only = {int(x) for x in args.only.split(",") if x}
    rows: list[dict[str, Any]] = []
    steps = {
        1: lambda: bench_survey_vs_r(args.threads, args.quick),
        2: lambda: bench_consensus_vs_r(args.threads, args.quick),
        3: lambda: bench_catalogue(args.threads, args.quick, args.iters),
        4: lambda: bench_survey_scale(
            args.threads,
            [int(x) for x in args.scale_samples.split(",") if x],
            args.iters,
            None if args.memory_limit.lower() == "none" else args.memory_limit,
        ),
    }
    for number, step in steps.items():
        if number in only:
            rows += step()
            if args.json:  # keep what is measured so far
                dump_json({"rows": rows}, args.json)
    for row in rows:
        for key in ("cophenetic", "r_cophenetic"):
            if isinstance(row.get(key), dict):
                row[key + "_str"] = " ".join(f"{k}:{v:.3f}" for k, v in sorted(row[key].items()))
    table = markdown_table(
        rows,
        [
            ("benchmark", "benchmark"),
            ("config", "scalenmf run"),
            ("scalenmf_s", "scalenmf s"),
            ("r_s", "R NMF s"),
            ("ratio", "ratio"),
            ("cophenetic_str", "cophenetic (scalenmf)"),
            ("r_cophenetic_str", "cophenetic (R)"),
            ("s_per_iter", "s / iteration"),
            ("s_per_iter_per_sample", "s / iteration / sample"),
            ("peak_rss_mb", "peak RSS MB"),
            ("load", "load avg"),
        ],
    )
    info = machine_info(args.threads)
    text = f"{table}\n\n{machine_table(info)}\n"
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        dump_json({"rows": rows, "machine": info}, args.json)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
