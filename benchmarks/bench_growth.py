"""Growth with n: peak memory and time per sample of fit and project at 10⁵–10⁷ samples.

    python -m benchmarks.bench_growth [--sizes 1e5,1e6,1e7] [--iters 3] [--dir DIR]
        [--modes laptop,workers,project,online,online-workers,survey] [--workers-at 1e7]
        [--keep]
        [--out table.md] [--survey-ks 2-12] [--survey-runs 5] [--survey-cv-reps 0]
        [--survey-null]

The catalogue: 96 × n float32 Zarr (chunks of 65,536 samples), simulated from ten COSMIC
v3.4 SBS signatures as ``benchmarks.datasets.cosmic_catalogue`` does (a negative-binomial
burden per sample, SBS1 and SBS5 always active, the others with probability 0.3, Gamma(0.7)
activities, Poisson counts), but generated chunk by chunk with a generator seeded by
(seed, chunk), so that 10⁷ samples (3.8 GB) never sit in memory. Stores are written under
``--dir`` (default: the system's temporary directory) and deleted at the end unless
``--keep``.

Each case runs the CLI in a child process and polls its resident size (and that of every
process it starts) every 20 ms: ``scalenmf fit STORE -k 10 --loss kl --init random
--memory-limit 1GB --max-iter ITERS --tol 0`` in laptop mode and, at the sizes in
``--workers-at``, with ``--workers 2`` (the limit is then per worker); and ``scalenmf
project --loss frobenius`` of the catalogue on the laptop fit's W under the same limit; with
``online``, the same fit with ``--solver online`` (ITERS epochs); ``online-workers``, that
with ``--workers 2`` at the sizes in ``--workers-at``.
Time per iteration is the fit's own loop time (``timings["loop_s"] / n_iter``); the
projection's is its ``project_s``. ``survey`` (issue 15, model selection at scale):
``scalenmf rank STORE --ks 2-12 --n-runs 5 --loss frobenius --memory-limit LIMIT
--max-iter ITERS --tol 0`` (``--survey-ks`` smaller for a quick run; held-out replicates
and the null off unless asked: they multiply the fits), all fits sharing each read of X;
its time per iteration is ``loop_s / iterations`` of ``survey.json``. The issue's goals:
peak RSS at 10⁷ at most 1.1× that at 10⁵, and seconds per iteration per sample at 10⁷
within 1.2× of 10⁶. Note the load (printed) beside every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_memory import measure
from benchmarks.common import load_average
from benchmarks.datasets import DEFAULT_SIGNATURES, read_cosmic

CHUNK = 65536
LIMIT = "1GB"


def write_catalogue(path: Path, n: int, seed: int = 2, chunk: int = CHUNK) -> dict[str, Any]:
    """A 96 × n COSMIC-simulated float32 Zarr array, written chunk by chunk (seeded)."""
    import zarr

    S, _, names = read_cosmic()
    idx = [names.index(s) for s in DEFAULT_SIGNATURES]
    W = S[:, idx] / S[:, idx].sum(axis=0, keepdims=True)
    k = len(idx)
    always = np.array([s in ("SBS1", "SBS5") for s in DEFAULT_SIGNATURES])
    mean_burden, dispersion = 1500.0, 2.0
    p = dispersion / (dispersion + mean_burden)
    arr = zarr.create_array(
        store=str(path), shape=(96, n), chunks=(96, chunk), dtype="float32", overwrite=True
    )
    t0 = time.perf_counter()
    for j, a in enumerate(range(0, n, chunk)):
        b = min(n, a + chunk)
        rng = np.random.default_rng([seed, j])
        burden = np.maximum(rng.negative_binomial(dispersion, p, size=b - a), 50).astype(float)
        active = always[:, None] | (rng.random((k, b - a)) < 0.3)
        act = rng.gamma(0.7, 1.0, size=(k, b - a)) * active
        act /= act.sum(axis=0, keepdims=True)
        arr[:, a:b] = rng.poisson(W @ (act * burden)).astype(np.float32)
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"n": n, "write_s": time.perf_counter() - t0, "disk_bytes": disk}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scalenmf.cli.main", *args]


def fit_case(
    store: Path,
    out: Path,
    iters: int,
    workers: bool,
    loss: str = "kl",
    limit: str = LIMIT,
    online: bool = False,
) -> dict[str, Any]:
    import scalenmf

    cmd = cli("fit", str(store), "-k", "10", "--loss", loss, "--init", "random")
    cmd += ["--memory-limit", limit, "--max-iter", str(iters), "--tol", "0", "-o", str(out)]
    cmd += ["--no-checkpoint", "--no-progress"]
    if online:
        cmd += ["--solver", "online"]  # iters then counts epochs
    if workers:
        cmd += ["--workers", "2"]
    load = load_average()
    rec = measure(cmd, timeout=3600)
    rec["load"] = (load, load_average())
    if rec["rc"] == 0:
        res = scalenmf.load(out)
        rec["s_per_iter"] = res.timings["loop_s"] / max(1, res.n_iter)
        rec["states_in_store"] = res.info.get("states_in_store")
        rec["anchor"] = res.info.get("anchor")
    return rec


def project_case(result: Path, store: Path, out: Path, limit: str = LIMIT) -> dict[str, Any]:
    from scalenmf.results.linked import load_projection

    # Frobenius (exact NNLS, one pass): KL's multiplicative updates to tol=1e-6 take ~100×
    # as long per sample and measure the inner solver, not how projection scales.
    cmd = cli("project", str(result), str(store), "-o", str(out), "--memory-limit", limit)
    cmd += ["--loss", "frobenius", "--no-progress"]
    load = load_average()
    rec = measure(cmd, timeout=3600)
    rec["load"] = (load, load_average())
    if rec["rc"] == 0:
        res = load_projection(out)
        rec["project_s"] = res.timings.get("project_s")
    return rec


def survey_case(
    store: Path, out: Path, iters: int, args: argparse.Namespace, limit: str = LIMIT
) -> dict[str, Any]:
    cmd = cli("rank", str(store), "--ks", args.survey_ks, "--n-runs", str(args.survey_runs))
    cmd += ["--cv-reps", str(args.survey_cv_reps), "--null" if args.survey_null else "--no-null"]
    cmd += ["--loss", "frobenius", "--memory-limit", limit, "--max-iter", str(iters)]
    cmd += ["--tol", "0", "-o", str(out), "--no-progress"]
    load = load_average()
    rec = measure(cmd, timeout=3600)
    rec["load"] = (load, load_average())
    if rec["rc"] == 0:
        info = json.loads((out / "survey.json").read_text())["info"]
        t = info["timings"]
        rec["s_per_iter"] = t["loop_s"] / max(1, t["iterations"])
        rec["total_s"] = t["total_s"]
        rec["states_in_store"] = info.get("states_in_store")
        rec["memory"] = info.get("memory")
    return rec


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.0f} MB" if nbytes else "–"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | n | peak RSS (main) | peak RSS (largest worker) | s / iteration | "
        "µs / iteration / sample | load before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = r.get("s_per_iter") or r.get("project_s")
        us = f"{1e6 * per / r['n']:.3f}" if per else "–"
        if r["case"] == "project" and per:
            us = f"{r['n'] / per:,.0f} samples/s"
        lines.append(
            f"| {r['case']} | {r['n']:.0e} | {_mb(r['main_peak'])} | {_mb(r['worker_peak'])} | "
            f"{per:.2f} | {us} | {r['load'][0]:.2f} → {r['load'][1]:.2f} |"
            if per
            else f"| {r['case']} | {r['n']:.0e} | failed: {r['last_line']} | | | | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e5,1e6,1e7")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--modes", default="laptop,workers,project")
    ap.add_argument("--workers-at", default="1e7", help="sizes to run --workers 2 at")
    ap.add_argument("--loss", default="kl", help="of the fit (the issue's: kl)")
    ap.add_argument("--limit", default=LIMIT, help="--memory-limit (the issue's: 1GB)")
    ap.add_argument("--survey-ks", default="2-12", help="ranks of the survey (the issue's)")
    ap.add_argument("--survey-runs", type=int, default=5, help="restarts per rank")
    ap.add_argument("--survey-cv-reps", type=int, default=0, help="held-out replicates")
    ap.add_argument("--survey-null", action="store_true", help="also survey the null")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", help="append the table (markdown) and the records (JSON) here")
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    workers_at = {int(float(s)) for s in args.workers_at.split(",") if s}
    modes = set(args.modes.split(","))
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-growth-", dir=args.dir))
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            store = root / f"cosmic-{n}.zarr"
            info = write_catalogue(store, n)
            print(
                f"n={n:.0e}: wrote {info['disk_bytes'] / 1e9:.2f} GB in {info['write_s']:.0f} s",
                flush=True,
            )
            fitted = root / f"fit-{n}.zarr"
            if "laptop" in modes or "project" in modes:
                out = root / f"fit-laptop-{n}.zarr"
                rec = fit_case(store, out, args.iters, False, args.loss, args.limit)
                rows.append({"case": "fit laptop", "n": n, **rec})
                print(json.dumps(rows[-1], default=str), flush=True)
                if rec["rc"] == 0:
                    out.rename(fitted)
            if "project" in modes and fitted.exists():
                rec = project_case(fitted, store, root / f"proj-{n}.zarr", args.limit)
                rows.append({"case": "project", "n": n, **rec})
                print(json.dumps(rows[-1], default=str), flush=True)
                shutil.rmtree(root / f"proj-{n}.zarr", ignore_errors=True)
            if "online" in modes:
                out = root / f"fit-online-{n}.zarr"
                rec = fit_case(store, out, args.iters, False, args.loss, args.limit, online=True)
                rows.append({"case": "online laptop", "n": n, **rec})
                print(json.dumps(rows[-1], default=str), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            if "online-workers" in modes and n in workers_at:
                out = root / f"fit-online-workers-{n}.zarr"
                rec = fit_case(store, out, args.iters, True, args.loss, args.limit, online=True)
                rows.append({"case": "online 2 workers", "n": n, **rec})
                print(json.dumps(rows[-1], default=str), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            if "workers" in modes and n in workers_at:
                out = root / f"fit-workers-{n}.zarr"
                rec = fit_case(store, out, args.iters, True, args.loss, args.limit)
                rows.append({"case": "fit 2 workers", "n": n, **rec})
                print(json.dumps(rows[-1], default=str), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            if "survey" in modes:
                out = root / f"survey-{n}"
                rec = survey_case(store, out, args.iters, args, args.limit)
                rows.append(
                    {"case": f"survey {args.survey_ks} × {args.survey_runs}", "n": n, **rec}
                )
                print(json.dumps(rows[-1], default=str), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            if not args.keep:
                for p in (store, fitted):
                    shutil.rmtree(p, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = table(rows)
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text + "\n\n" + json.dumps(rows, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
