"""DNMF benchmarks (issue 3): inference cost, training throughput, the evaluation table.

    python -m benchmarks.bench_dnmf [--quick] [--full-eval] [--only infer,train,eval]
                                    [--out bench-out/dnmf.md]

1. Inference: seconds per 1000 samples (96 channels, k=12) for a 10-layer DNMF network
   against MU with 10 and 100 iterations and against exact NNLS (block principal
   pivoting), all from the same W, one thread, median of repeats. The paper reports
   0.0019 s (DNMF) and 0.016 s (100-iteration MU) on a 2-vCPU machine.
2. Training throughput: samples per second of mini-batch training streamed from a Zarr
   store with 0, 2 and 4 DataLoader workers, and full-batch training with 1 and 2 gloo
   processes (same total batch).
3. The evaluation: a reduced run by default (2 synsig sets, 2 folds, 100 epochs), or with
   ``--full-eval`` the paper's setting (12 sets + BRCA-560, 5 folds, 500 epochs); prints
   the ratio table, the claims table and the wall time of the whole evaluation.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_inference(quick: bool) -> list[str]:
    """Seconds per 1000 samples for DNMF-10 vs MU-10, MU-100, NNLS (same W)."""
    import torch

    from scalenmf.models.deep.layers import UnrolledNMF
    from scalenmf.models.deep.mu import mu_step_h_frobenius, nnls_h

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    m, k, n = 96, 12, 1000
    W = rng.random((m, k))
    W /= W.sum(axis=0)
    V32 = torch.from_numpy(rng.poisson(W @ rng.gamma(0.5, 300, (k, n))).astype(np.float32))
    W32 = torch.from_numpy(W.astype(np.float32))
    net = UnrolledNMF(m, k, 10)
    net.init_from_w(W32)
    net.eval()
    reps = 5 if quick else 30

    def dnmf() -> None:
        with torch.no_grad():
            net(V32)

    def mu(it: int):
        def run() -> None:
            H = torch.ones((k, n))
            for _ in range(it):
                H = mu_step_h_frobenius(V32, W32, H)

        return run

    V64, W64 = V32.double(), W32.double()
    rows = [
        ("DNMF, 10 layers", _median_time(dnmf, reps)),
        ("MU, 10 iterations", _median_time(mu(10), reps)),
        ("MU, 100 iterations", _median_time(mu(100), reps)),
        ("NNLS (exact, BPP)", _median_time(lambda: nnls_h(V64, W64), max(3, reps // 5))),
    ]
    out = ["| inference of 1000 samples (96 × 1000, k = 12, 1 thread) | seconds |", "|---|---|"]
    out += [f"| {name} | {t:.4f} |" for name, t in rows]
    return out


def bench_training(quick: bool) -> list[str]:
    """Samples per second: DataLoader workers 0/2/4 (mini-batch, Zarr), 1 vs 2 processes."""
    from scalenmf.io import write_matrix
    from scalenmf.models.deep import DNMF

    rng = np.random.default_rng(1)
    m, k = 96, 12
    n = 40_000 if quick else 200_000
    W = rng.random((m, k))
    W /= W.sum(axis=0)
    V = rng.poisson(W @ rng.gamma(0.5, 100, (k, n))).astype(np.float32)
    out = [f"| training (96 × {n}, k = 12, 10 layers, unsupervised) | samples / s |", "|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "v.zarr"
        write_matrix(store, V, block_cols=4096)
        for workers in (0, 2, 4):
            model = DNMF(k, mode="unsupervised", epochs=1, batch_size=2048, num_workers=workers)
            t0 = time.perf_counter()
            model.fit(str(store))
            dt = time.perf_counter() - t0
            out.append(
                f"| mini-batch 2048 from Zarr, {workers} DataLoader workers | {n / dt:,.0f} |"
            )
        epochs = 3 if quick else 10
        n_fb = min(n, 50_000)
        small = Path(d) / "small.zarr"
        write_matrix(small, V[:, :n_fb], block_cols=4096)
        for nproc in (1, 2):
            model = DNMF(k, mode="unsupervised", epochs=epochs, nproc=nproc)
            t0 = time.perf_counter()
            model.fit(str(small))
            dt = time.perf_counter() - t0
            out.append(
                f"| full batch {n_fb} columns × {epochs} epochs, {nproc} process(es) "
                f"(incl. start-up) | {n_fb * epochs / dt:,.0f} |"
            )
    return out


def bench_eval(quick: bool, full: bool, out_dir: Path) -> list[str]:
    """The evaluation's ratio table, claims and wall time."""
    from scalenmf.models.deep import evaluate as ev

    if full:
        cfg = ev.EvalConfig(jobs=2)
        sets = None
    else:
        cfg = ev.EvalConfig(
            folds=2,
            epochs=40 if quick else 100,
            brca=False,
            lambdas=(0.0, 1.0) if quick else (0.0, 1.0, 2.0),
            jobs=2,
        )
        sets = ["syn.2.7a.7b.abst_sp.sp", "syn.pancreas_sp.sp"]
    report = ev.run_evaluation(ev.default_data_dir(), out_dir, cfg, sets=sets)
    label = (
        "full (12 sets + BRCA-560, 5 folds, 500 epochs)"
        if full
        else (f"reduced ({', '.join(sets or [])}; {cfg.folds} folds, {cfg.epochs} epochs)")
    )
    return [
        f"Evaluation: {label}; wall time {report.wall_s:.1f} s",
        "",
        report.summary_markdown,
        "",
        report.claims_markdown,
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--full-eval", action="store_true", help="the paper's full evaluation")
    p.add_argument("--only", default="infer,train,eval")
    p.add_argument("--out", default="bench-out/dnmf.md")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}",
        "",
    ]
    if "infer" in only:
        lines += [*bench_inference(args.quick), ""]
    if "train" in only:
        lines += [*bench_training(args.quick), ""]
    if "eval" in only:
        lines += [*bench_eval(args.quick, args.full_eval, out.parent / "dnmf-eval"), ""]
    text = "\n".join(lines)
    print(text)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
