"""The report's cost does not grow with n: it reads a sample of H's column chunks.

    python -m benchmarks.bench_report [--quick] [--threads 2] [--out table.md]

For result stores with k = 10 SBS96 factors and n samples (H float32, chunked by 16,384
columns), each measured in a fresh child process:

- ``scalenmf.report(store, "report.html")``: wall time, peak RSS, HTML size, H columns read;
- the same report from the result loaded whole (``scalenmf.load``, all of H in memory),
  which is what any tool that holds H in memory pays.

Prints a Markdown table and the machine, and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_THREADS,
    load_average,
    machine_info,
    machine_table,
    markdown_table,
    ratio,
    run_in_child,
)

SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (10_000, 100_000)
K = 10
CHUNK = 16_384


def write_store(path: Path, n: int, seed: int = 0) -> Path:
    """A result store of n samples, written chunk by chunk (never all of H in memory)."""
    import zarr

    from scalenmf.io.results import write_result
    from scalenmf.signatures import cosmic_reference

    ref = cosmic_reference()
    W = ref.matrix[:, :K]
    rng = np.random.default_rng(seed)
    history = list(np.geomspace(1e6, 2e5, 50))
    attrs = {
        "k": K,
        "params": {"k": K, "solver": "mu", "loss": "kl", "n_runs": 1, "seed": seed},
        "n_iter": 50,
        "loss_history": history,
        "relative_error": 0.12,
        "converged": True,
        "runs": [
            {
                "run": 0,
                "objective": history[-1],
                "relative_error": 0.12,
                "n_iter": 50,
                "converged": True,
                "loss_history": history,
            }
        ],
        "info": {"best_run": 0},
    }
    write_result(path, {"W": W}, attrs=attrs, labels={"row_labels": ref.channels})
    g = zarr.open_group(str(path), mode="r+")  # H is added chunk by chunk
    H = g.create_array("H", shape=(K, n), chunks=(K, CHUNK), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        H[:, start:stop] = rng.gamma(0.4, 300.0, (K, stop - start)).astype(np.float32)
    return path


def report_child(store: str, out: str) -> dict[str, Any]:
    import scalenmf
    from scalenmf.plot import open_result

    view = open_result(store)
    t0 = time.perf_counter()
    scalenmf.report(view, out, progress=False)
    return {
        "time_s": time.perf_counter() - t0,
        "bytes": os.path.getsize(out),
        "columns_read": view.h_columns_read,
    }


def load_child(store: str, out: str) -> dict[str, Any]:
    import scalenmf

    t0 = time.perf_counter()
    res = scalenmf.load(store)
    t_load = time.perf_counter() - t0
    scalenmf.report(res, out, progress=False)
    return {"time_s": time.perf_counter() - t0, "load_s": t_load}


def run(sizes: tuple[int, ...], threads: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="scalenmf-bench-report-") as tmp:
        for n in sizes:
            store = write_store(Path(tmp) / f"r{n}.zarr", n)
            rep = run_in_child(
                "benchmarks.bench_report:report_child",
                {"store": str(store), "out": str(Path(tmp) / f"r{n}.html")},
                threads=threads,
            )
            base = run_in_child(
                "benchmarks.bench_report:load_child",
                {"store": str(store), "out": str(Path(tmp) / f"c{n}.html")},
                threads=threads,
            )
            for child in (rep, base):
                if child.returncode != 0:
                    raise RuntimeError(child.extra.get("error") or child.stderr[-2000:])
            r, b = rep.value, base.value
            rows.append(
                {
                    "n": f"{n:,}",
                    "h_mb": K * n * 4 / 2**20,
                    "report_s": r["time_s"],
                    "report_rss_mb": rep.peak_rss_bytes / 2**20,
                    "html_kb": r["bytes"] / 1024,
                    "cols_read": f"{r['columns_read']:,}",
                    "base_s": b["time_s"],
                    "time_ratio": ratio(r["time_s"], b["time_s"]),
                    "base_rss_mb": base.peak_rss_bytes / 2**20,
                    "rss_ratio": ratio(rep.peak_rss_bytes, base.peak_rss_bytes),
                }
            )
            print(rows[-1], flush=True)
    return rows


COLUMNS = [
    ("n", "samples n"),
    ("h_mb", "H (MB, float32)"),
    ("report_s", "report: time (s)"),
    ("report_rss_mb", "report: peak RSS (MB)"),
    ("html_kb", "HTML (kB)"),
    ("cols_read", "H columns read"),
    ("base_s", "H loaded whole: time (s)"),
    ("base_rss_mb", "H loaded whole: peak RSS (MB)"),
    ("time_ratio", "time ratio"),
    ("rss_ratio", "RSS ratio"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    args = ap.parse_args()
    load = load_average()
    rows = run(QUICK_SIZES if args.quick else SIZES, args.threads)
    text = "\n\n".join(
        [
            markdown_table(rows, COLUMNS),
            f"load average at start: {load:.2f}",
            machine_table(machine_info(args.threads)),
        ]
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
