"""The NNLS kernels before and after their unification (issue 11).

    python -m benchmarks.bench_kernels [--quick] [--reps 3] [--fits 10] [--out table.md]

The old copies are read from git at commit ``4cf69a0`` (``scalenmf/kernels/nnls.py``,
``columns.py``, ``batched.py``) and imported as private modules, so they run exactly as they
were; the new kernels are those of this tree. For k ∈ {5, 12, 30} and n ∈ {1000, 20000}
columns (``--fits`` fits of that size for the batched rows), the same Gram problems (a
sparse gamma basis of 200 rows, Poisson counts) are solved by

- exact NNLS, one fit: old ``bpp_nnls`` (the main path then), old ``bpp_columns`` (the
  fastest copy then) and the new ``nnls_bpp``;
- exact NNLS, many fits: old ``bpp_nnls_batched`` and the new ``nnls_bpp``;
- 3 HALS sweeps (``tol = 0``), one fit and many: old ``cd_nnls`` / ``cd_nnls_batched``
  and the new ``nnls_cd``;
- coordinate descent to convergence (projection, ``tol = 1e-10``, 1000 sweeps): old
  ``nnls_columns`` (stopped on the last step's size) and the new one (KKT stop, columns
  that miss it finished exactly).

The last rows of each size set the compiled loops (``scalenmf/kernels/_nnls.c``) against
the numpy code they stand in for (``SCALENMF_NO_COMPILED=1`` runs the latter everywhere):
the "old" column is then the numpy code of this tree.

Times are CPU seconds of this process (one BLAS thread, best of ``--reps``), which a busy
shared machine disturbs far less than wall time; the machine's load is printed beside
them. ``err`` is the largest deviation from the new exact solution, relative to its
largest entry.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.common import REPO_ROOT, limit_threads, load_average, markdown_table

OLD_COMMIT = "4cf69a0"
OLD_FILES = ("nnls", "columns", "batched")


def old_kernels() -> dict[str, ModuleType]:
    """The kernel modules as they were at ``OLD_COMMIT``, imported under private names."""
    mods: dict[str, ModuleType] = {}
    tmp = Path(tempfile.mkdtemp(prefix="scalenmf-old-kernels-"))
    for name in OLD_FILES:
        src = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:scalenmf/kernels/{name}.py"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        path = tmp / f"old_{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"_old_kernels_{name}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods


def problem(R: int, k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gram statistics ``G`` (R, k, k) and ``B`` (R, k, n) of R fits (many active bounds)."""
    rng = np.random.default_rng(seed)
    m = 200
    W = rng.gamma(1.0, 1.0, (R, m, k)) * (rng.random((R, m, k)) < 0.6)
    H = rng.gamma(0.5, 1.0, (R, k, n)) * (rng.random((R, k, n)) < 0.5)
    X = rng.poisson(W @ H * 5).astype(np.float64)
    return np.einsum("rmk,rml->rkl", W, W), np.einsum("rmk,rmn->rkn", W, X)


def cpu_best(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def rel_err(X: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(X - ref).max() / max(float(np.abs(ref).max()), 1e-300))


def run(ks: tuple[int, ...], ns: tuple[int, ...], fits: int, reps: int) -> list[dict[str, Any]]:
    old = old_kernels()
    rows: list[dict[str, Any]] = []
    for k in ks:
        for n in ns:
            rows += one_size(old, k, n, fits, reps)
            rows += compiled_against_numpy(k, n, fits, reps)
    return rows


def compiled_against_numpy(k: int, n: int, fits: int, reps: int) -> list[dict[str, Any]]:
    """Exact NNLS and 3 HALS sweeps, one fit and many, with the compiled loops and without."""
    from scalenmf.kernels import nnls

    if nnls.COMPILED_BPP is None:
        print("compiled loops: not built (no C compiler at install); rows skipped", flush=True)
        return []
    rows: list[dict[str, Any]] = []
    for R, seed in ((1, 0), (fits, 1)):
        G, B = problem(R, k, n, seed=seed)
        G, B = (G[0], B[0]) if R == 1 else (G, B)
        H0 = np.full_like(B, 0.1)
        cases = {
            "exact (compiled)": lambda G=G, B=B: nnls.nnls_bpp(G, B)[0],
            "3 HALS sweeps (compiled)": lambda G=G, B=B, H0=H0: nnls.nnls_cd(
                G, B, H0, max_sweeps=3, tol=0.0
            )[0],
        }
        for case, fn in cases.items():
            t_new, X_new = cpu_best(fn, reps)
            saved = nnls.COMPILED_BPP, nnls.COMPILED_SWEEPS
            nnls.COMPILED_BPP = nnls.COMPILED_SWEEPS = None
            try:
                t_np, X_np = cpu_best(fn, reps)
            finally:
                nnls.COMPILED_BPP, nnls.COMPILED_SWEEPS = saved
            err = rel_err(X_new, X_np)
            row = {"case": case, "k": k, "n": n, "R": R, "old": "numpy loops", "t_old": t_np}
            row.update(t_new=t_new, ratio=t_new / t_np, err_old=None, err_new=err)
            row["load"] = load_average()
            rows.append(row)
            print(
                f"{case:<26} k={k:<3} n={n:<6} R={R:<3} numpy {t_np:8.4f}s  compiled "
                f"{t_new:8.4f}s  ratio {t_new / t_np:5.2f}  err {err:.1e}",
                flush=True,
            )
    return rows


def one_size(
    old: dict[str, ModuleType], k: int, n: int, fits: int, reps: int
) -> list[dict[str, Any]]:
    """Every row of one (k, n): one fit, then ``fits`` fits."""
    from scalenmf.kernels import nnls_bpp, nnls_cd, unconstrained_start

    def nnls_columns(G: np.ndarray, B: np.ndarray) -> np.ndarray:
        start = unconstrained_start(G, B)
        return nnls_cd(G, B, start, max_sweeps=1000, tol=1e-10, finish=True)[0]

    rows: list[dict[str, Any]] = []

    def add(case: str, R: int, old_name: str, t_old: float, t_new: float, errs: tuple) -> None:
        row = {"case": case, "k": k, "n": n, "R": R, "old": old_name, "t_old": t_old}
        row.update(t_new=t_new, ratio=t_new / t_old, err_old=errs[0], err_new=errs[1])
        row["load"] = load_average()
        rows.append(row)
        print(
            f"{case:<22} k={k:<3} n={n:<6} R={R:<3} {old_name:<17} old {t_old:8.4f}s"
            f"  new {t_new:8.4f}s  new/old {t_new / t_old:5.2f}  (load {row['load']:.1f})",
            flush=True,
        )

    G, B = problem(1, k, n)
    G1, B1 = G[0], B[0]
    t_new, ref = cpu_best(lambda: nnls_bpp(G1, B1)[0], reps)
    t_o, X_o = cpu_best(lambda: old["nnls"].bpp_nnls(G1, B1), 1)
    add("exact, one fit", 1, "bpp_nnls", t_o, t_new, (rel_err(X_o, ref), 0.0))
    t_o, X_o = cpu_best(lambda: old["columns"].bpp_columns(G1, B1), reps)
    add("exact, one fit", 1, "bpp_columns", t_o, t_new, (rel_err(X_o, ref), 0.0))
    H0 = np.full_like(B1, 0.1)
    t_o, _ = cpu_best(lambda: old["nnls"].cd_nnls(G1, B1, H0, max_sweeps=3, tol=0.0), reps)
    t_n, _ = cpu_best(lambda: nnls_cd(G1, B1, H0, max_sweeps=3, tol=0.0), reps)
    add("3 HALS sweeps, one fit", 1, "cd_nnls", t_o, t_n, (None, None))
    t_o, X_o = cpu_best(lambda: old["columns"].nnls_columns(G1, B1), reps)
    t_n, X_n = cpu_best(lambda: nnls_columns(G1, B1), reps)
    add("CD to tol 1e-10", 1, "nnls_columns", t_o, t_n, (rel_err(X_o, ref), rel_err(X_n, ref)))
    GR, BR = problem(fits, k, n, seed=1)
    t_new, refR = cpu_best(lambda: nnls_bpp(GR, BR)[0], reps)
    t_o, X_o = cpu_best(lambda: old["batched"].bpp_nnls_batched(GR, BR), reps)
    add("exact, many fits", fits, "bpp_nnls_batched", t_o, t_new, (rel_err(X_o, refR), 0.0))
    H0R = np.full_like(BR, 0.1)
    t_o, _ = cpu_best(
        lambda: old["batched"].cd_nnls_batched(GR, BR, H0R, max_sweeps=3, tol=0.0), reps
    )
    t_n, _ = cpu_best(lambda: nnls_cd(GR, BR, H0R, max_sweeps=3, tol=0.0), reps)
    add("3 HALS sweeps, many", fits, "cd_nnls_batched", t_o, t_n, (None, None))
    return rows


COLUMNS = [
    ("case", "case"),
    ("k", "k"),
    ("n", "n"),
    ("R", "fits"),
    ("old", "old kernel"),
    ("t_old", "old CPU s"),
    ("t_new", "new CPU s"),
    ("ratio", "new ÷ old"),
    ("err_old", "old err"),
    ("err_new", "new err"),
    ("load", "load"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="k ∈ {5, 12}, n = 1000 only")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fits", type=int, default=10)
    ap.add_argument("--out", type=Path, help="write the Markdown table here")
    args = ap.parse_args(argv)
    ks, ns = ((5, 12), (1000,)) if args.quick else ((5, 12, 30), (1000, 20000))
    with limit_threads(1):
        rows = run(ks, ns, args.fits, args.reps)
    table = markdown_table(rows, COLUMNS)
    print()
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
