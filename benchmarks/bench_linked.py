"""Benchmarks of issue 4: projection throughput and the cost of linked NMF per iteration.

1. ``project``: samples per second projecting a 96 × n COSMIC-simulated catalogue (10
   signatures, n = 1,000,000 by default) onto its signatures, against scikit-learn's
   ``NMF.transform`` (components fixed, its coordinate descent) and a loop of
   ``scipy.optimize.nnls`` (timed on the first ``--nnls-samples`` columns, reported as a
   rate). Accuracy against the exact NNLS solution is measured on the first 2,000 samples
   for every tool.
2. ``lnmf``: two sparse 5000 × 20000 datasets drawn from 10 shared and 5 + 5 unique
   factors (Poisson counts, ``--density`` non-zeros); seconds per iteration of
   ``scalenmf.lnmf(k_shared=10, k_unique=[5, 5])`` against ``scalenmf.nmf`` of the
   concatenated 5000 × 40000 matrix at the same total rank 20. Goal: ratio ≤ 1.3.

Everyone gets the same threads (``--threads``). The machine may be shared: the load
average is printed with the figures. Run ``python -m benchmarks.bench_linked --help``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.common import (
    DEFAULT_THREADS,
    dump_json,
    fmt,
    limit_threads,
    load_average,
    machine_info,
    markdown_table,
    set_thread_env,
)
from benchmarks.datasets import cosmic_catalogue

REPO = Path(__file__).resolve().parent.parent
COSMIC = REPO / "scalenmf" / "data" / "COSMIC_v3.4_SBS_GRCh37.tsv"
N_CHECK = 2000


def _accuracy(H: np.ndarray, exact: np.ndarray) -> float:
    """Largest deviation from the exact NNLS solution, relative to its largest entry."""
    return float(np.abs(H[:, :N_CHECK] - exact).max() / max(float(exact.max()), 1e-300))


def _scipy_nnls(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return np.column_stack([nnls(W, X[:, j])[0] for j in range(X.shape[1])])


def bench_project(args: argparse.Namespace) -> list[dict[str, Any]]:
    import scalenmf

    t0 = time.perf_counter()
    cat = cosmic_catalogue(args.n_project, path=COSMIC, seed=args.seed)
    X, W = cat.X, cat.W
    n = X.shape[1]
    print(f"catalogue 96 × {n:,} simulated in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    exact = _scipy_nnls(W, X[:, :N_CHECK])
    rows: list[dict[str, Any]] = []

    def add(tool: str, samples: int, seconds: float, H: np.ndarray | None, note: str = ""):
        rows.append(
            {
                "tool": tool,
                "samples": samples,
                "seconds": seconds,
                "samples_per_s": samples / seconds,
                "max_rel_dev": None if H is None else _accuracy(H, exact),
                "load": load_average(),
                "note": note,
            }
        )
        print(f"  {tool}: {samples / seconds:,.0f} samples/s", file=sys.stderr)

    with limit_threads(args.threads):
        for label, kwargs in (
            ("scalenmf project (bpp, exact)", {}),
            ("scalenmf project (cd)", {"nnls": "cd"}),
        ):
            t = time.perf_counter()
            res = scalenmf.project(W, X, threads=args.threads, novelty_z=None, **kwargs)
            add(label, n, time.perf_counter() - t, res.H, "with per-sample QC")
            del res
        t = time.perf_counter()
        res = scalenmf.project(W, X, threads=args.threads, bootstrap=args.bootstrap)
        add(
            f"scalenmf project + {args.bootstrap} Poisson bootstraps",
            n,
            time.perf_counter() - t,
            res.H,
            "intervals for every H entry",
        )
        del res
        from sklearn.decomposition import NMF

        model = NMF(n_components=W.shape[1], init="random", max_iter=1, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X[:, :200].T)
        model.components_ = W.T.copy()
        model.set_params(max_iter=200)  # its default; the fit above only set it up
        Xt = np.ascontiguousarray(X.T)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Hs = model.transform(Xt).T
        import sklearn

        add(f"sklearn {sklearn.__version__} NMF.transform (cd)", n, time.perf_counter() - t, Hs)
        del Xt, Hs
        m = min(args.nnls_samples, n)
        t = time.perf_counter()
        Hn = _scipy_nnls(W, X[:, :m])
        import scipy

        add(
            f"scipy {scipy.__version__} nnls loop",
            m,
            time.perf_counter() - t,
            Hn if m >= N_CHECK else None,
            f"timed on the first {m:,} samples",
        )
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["scalenmf_over_tool"] = base / r["samples_per_s"]
    return rows


def linked_datasets(
    m: int, n: int, k_shared: int, k_unique: int, density: float, seed: int, block: int = 2000
) -> tuple[list[sp.csc_matrix], float]:
    """Two sparse Poisson datasets of a linked gamma model, at about ``density`` non-zeros."""
    rng = np.random.default_rng(seed)
    shape = 0.3
    S = rng.gamma(shape, 1.0 / shape, (m, k_shared))
    Us = [rng.gamma(shape, 1.0 / shape, (m, k_unique)) for _ in range(2)]
    Hs = [rng.gamma(shape, 1.0 / shape, (k_shared + k_unique, n)) for _ in range(2)]
    sample = np.hstack([S, Us[0]]) @ Hs[0][:, :300]
    lo, hi = 0.0, 1.0
    while np.mean(1.0 - np.exp(-hi * sample)) < density:
        hi *= 2.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.mean(1.0 - np.exp(-mid * sample)) < density else (lo, mid)
    scale = 0.5 * (lo + hi)
    out = []
    for U, H in zip(Us, Hs, strict=True):
        basis = np.hstack([S, U])
        blocks = [
            sp.csc_matrix(rng.poisson(scale * (basis @ H[:, a : a + block])).astype(np.float64))
            for a in range(0, n, block)
        ]
        X = sp.hstack(blocks, format="csc")
        X.sort_indices()
        out.append(X)
    nnz = sum(X.nnz for X in out)
    return out, nnz / (2 * m * n)


def _per_iteration(times: list[float]) -> float:
    """Median seconds per iteration from the driver's cumulative iteration times."""
    steps = np.diff([0.0, *times])
    return float(np.median(steps))


def bench_lnmf(args: argparse.Namespace) -> list[dict[str, Any]]:
    import scalenmf

    t0 = time.perf_counter()
    (A, B), density = linked_datasets(
        args.lnmf_rows, args.lnmf_cols, 10, 5, args.density, args.seed + 1
    )
    print(
        f"two sparse {A.shape[0]}×{A.shape[1]} datasets, {100 * density:.2f}% non-zeros, "
        f"made in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    concat = sp.hstack([A, B], format="csc")
    rows: list[dict[str, Any]] = []
    common = {"max_iter": args.iters, "tol": 0.0, "threads": args.threads, "progress": False}
    with limit_threads(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        for solver in args.solvers.split(","):
            plain = scalenmf.nmf(concat, 20, solver=solver, init="random", **common)
            linked = scalenmf.lnmf([A, B], 10, [5, 5], solver=solver, init="random", **common)
            p_it = _per_iteration(plain.timings["iter_times"])
            l_it = _per_iteration(linked.timings["iter_times"])
            rows.append(
                {
                    "solver": solver,
                    "nmf_s_per_it": p_it,
                    "lnmf_s_per_it": l_it,
                    "ratio": l_it / p_it,
                    "goal_met": l_it / p_it <= 1.3,
                    "nmf_rel_err": plain.relative_error,
                    "lnmf_rel_err": linked.relative_error,
                    "load": load_average(),
                    "density": density,
                }
            )
            print(f"  {solver}: lnmf {l_it:.3f} s/it, nmf {p_it:.3f} s/it", file=sys.stderr)
        if args.with_start:
            t = time.perf_counter()
            default = scalenmf.lnmf([A, B], 10, [5, 5], **common)
            rows.append(
                {
                    "solver": "als, default jNMF start",
                    "lnmf_s_per_it": _per_iteration(default.timings["iter_times"]),
                    "start_s": default.timings["init_s"],
                    "total_s": time.perf_counter() - t,
                    "lnmf_rel_err": default.relative_error,
                    "load": load_average(),
                }
            )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--only", default="project,lnmf", help="benchmarks to run")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-project", type=int, default=1_000_000, help="samples to project")
    p.add_argument("--nnls-samples", type=int, default=20_000, help="samples the nnls loop gets")
    p.add_argument("--bootstrap", type=int, default=20, help="resamples in the bootstrap row")
    p.add_argument("--lnmf-rows", type=int, default=5000)
    p.add_argument("--lnmf-cols", type=int, default=20000, help="samples per dataset")
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--iters", type=int, default=10, help="iterations timed per fit")
    p.add_argument("--solvers", default="als,hals")
    p.add_argument("--with-start", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", default=None, help="write the rows and machine info here")
    args = p.parse_args(argv)
    if args.quick:
        args.n_project, args.nnls_samples = 50_000, 3000
        args.lnmf_rows, args.lnmf_cols, args.iters = 1000, 3000, 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    which = set(args.only.split(","))
    out: dict[str, Any] = {"machine": machine_info(args.threads), "load_start": load_average()}
    if "project" in which:
        rows = bench_project(args)
        out["project"] = rows
        print(f"\n### project(): 96 × {args.n_project:,}, k = 10, threads = {args.threads}\n")
        print(
            markdown_table(
                rows,
                [
                    ("tool", "tool"),
                    ("samples_per_s", "samples/s"),
                    ("scalenmf_over_tool", "scalenmf ÷ tool (throughput)"),
                    ("max_rel_dev", "max |H − H_nnls| / max H_nnls"),
                    ("seconds", "seconds"),
                    ("load", "load avg"),
                    ("note", "note"),
                ],
            )
        )
    if "lnmf" in which:
        rows = bench_lnmf(args)
        out["lnmf"] = rows
        print(
            f"\n### lNMF vs NMF of the concatenation: 2 × sparse {args.lnmf_rows}×"
            f"{args.lnmf_cols}, k = 10 + (5, 5) vs 20, threads = {args.threads}\n"
        )
        print(
            markdown_table(
                rows,
                [
                    ("solver", "solver"),
                    ("lnmf_s_per_it", "lnmf s/it"),
                    ("nmf_s_per_it", "nmf s/it"),
                    ("ratio", "ratio (goal ≤ 1.3)"),
                    ("goal_met", "met"),
                    ("lnmf_rel_err", "lnmf rel. err"),
                    ("nmf_rel_err", "nmf rel. err"),
                    ("start_s", "jNMF start s"),
                    ("load", "load avg"),
                ],
            )
        )
    print(f"\nload average at start {fmt(out['load_start'])}, at end {fmt(load_average())}")
    if args.json:
        dump_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
