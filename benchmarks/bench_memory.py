"""Peak memory of ``scalenmf fit`` against ``--memory-limit``, laptop mode and 2 workers.

    python -m benchmarks.bench_memory [--limits 200MB,500MB,1GB] [--max-iter 2]
        [--modes laptop,workers] [--store /tmp/…/x15.zarr] [--keep] [--out table.md]

The store: a seeded dense float32 Zarr array of 2000 × 188,730 Poisson counts (1.5 GB
decoded, ~300 MB compressed, chunks of 4194 columns = 32 MiB), written block by block
(``benchmarks.datasets.write_zarr_store``) under ``/tmp`` and deleted at the end unless
``--keep``. Each case runs the CLI in a child process (k = 10, NNDSVDa, ``--max-iter``
iterations, no checkpoint) and polls the resident size of it and of every process it
starts every 20 ms: laptop mode reports the fit's process; with ``--workers 2`` the
client (with its in-process scheduler) and the largest worker (the limit is per worker),
nannies left out. A limit the plan refuses is shown with the refusal's smallest limit.
Note the machine load (printed) beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import datasets
from benchmarks.common import load_average

STORE_BYTES = 1_500_000_000


def _parse_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


def measure(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run ``cmd``; peak RSS of its own process and the largest of its descendants'."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    main = psutil.Process(proc.pid)
    peak_main = 0
    peaks: dict[int, tuple[str, int]] = {}
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        try:
            peak_main = max(peak_main, main.memory_info().rss)
            children = main.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
                rss = child.memory_info().rss
            except psutil.Error:
                continue
            old = peaks.get(child.pid, ("", 0))[1]
            peaks[child.pid] = (cmdline, max(old, rss))
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    # A nanny's command line names the nanny; its worker is a spawned multiprocessing child.
    workers = [rss for line, rss in peaks.values() if "nanny" not in line.lower()]
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "main_peak": peak_main,
        "worker_peak": max(workers, default=0),
        "n_children": len(peaks),
        "last_line": (err.strip().splitlines() or out.strip().splitlines() or [""])[-1],
    }


def run_case(store: str, mode: str, limit: str, max_iter: int, timeout: float) -> dict[str, Any]:
    out = tempfile.mkdtemp(prefix="bench-memory-out-")
    try:
        cmd = [sys.executable, "-m", "scalenmf.cli.main", "fit", store, "-k", "10"]
        cmd += ["-o", str(Path(out) / "r.zarr"), "--memory-limit", limit]
        cmd += ["--max-iter", str(max_iter), "--no-checkpoint", "--no-progress"]
        if mode == "workers":
            cmd += ["--workers", "2"]
        load = load_average()
        rec = measure(cmd, timeout)
        rec.update(mode=mode, limit=limit, limit_bytes=_parse_bytes(limit), load=load)
        return rec
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.0f} MB" if nbytes else "–"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| mode | --memory-limit | peak RSS (process) | ÷ limit | peak RSS (largest worker) "
        "| ÷ limit | wall | load | outcome |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lim = r["limit_bytes"]
        worker = r["worker_peak"] if r["mode"] == "workers" else 0
        outcome = "ok" if r["rc"] == 0 else f"exit {r['rc']}: {r['last_line'][:110]}"
        lines.append(
            f"| {'laptop' if r['mode'] == 'laptop' else '2 workers'} | {r['limit']} "
            f"| {_mb(r['main_peak'])} | {r['main_peak'] / lim:.2f} "
            f"| {_mb(worker)} | {f'{worker / lim:.2f}' if worker else '–'} "
            f"| {r['wall_s']:.0f} s | {r['load']:.1f} | {outcome} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limits", default="200MB,500MB,1GB")
    ap.add_argument("--modes", default="laptop,workers")
    ap.add_argument("--max-iter", type=int, default=2)
    ap.add_argument("--store", default=None, help="where to write the store (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    ap.add_argument("--out", default=None, help="also write the table (and .json) here")
    args = ap.parse_args(argv)
    workdir = None
    if args.store is None:
        workdir = tempfile.mkdtemp(prefix="scalenmf-bench-memory-", dir="/tmp")
        args.store = os.path.join(workdir, "x15.zarr")
    try:
        info = datasets.write_zarr_store(
            args.store, nbytes=STORE_BYTES, m=2000, array_path="X", seed=7
        )
        print(
            f"store {info['shape']} float32, {info['nbytes'] / 1e9:.2f} GB decoded, "
            f"{info['disk_bytes'] / 1e6:.0f} MB on disk",
            flush=True,
        )
        rows = []
        for mode in args.modes.split(","):
            for limit in args.limits.split(","):
                rec = run_case(args.store, mode, limit, args.max_iter, args.timeout)
                rows.append(rec)
                print(json.dumps(rec), flush=True)
        text = table(rows)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
            Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(workdir or args.store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
