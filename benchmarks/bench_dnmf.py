"""DNMF benchmarks (issue 3): inference cost, training throughput, the evaluation table.

    python -m benchmarks.bench_dnmf [--quick] [--full-eval] [--only infer,train,depth,eval]
                                    [--out bench-out/dnmf.md]

1. Inference: seconds per 1000 samples (96 channels, k=12) for a 10-layer DNMF network
   against MU with 10 and 100 iterations and against exact NNLS (block principal
   pivoting), all from the same W, one thread, median of repeats. The paper reports
   0.0019 s (DNMF) and 0.016 s (100-iteration MU) on a 2-vCPU machine.
2. Training throughput: samples per second (steady-state epochs) of mini-batch training
   streamed from a Zarr store with 0, 2 and 4 DataLoader workers, and of mini-batch and
   full-batch training with 1 and 2 gloo processes (same global batch).
3. Depth: supervised test error of DNMF with 5/10/15/20 layers against MU with as many
   iterations (the paper's Fig. 4 reports gains flattening after 10-15 layers).
4. The evaluation: a reduced run by default (2 synsig sets, 2 folds, 100 epochs), or with
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
    from threadpoolctl import threadpool_limits

    from scalenmf.kernels import nnls_bpp

    Wn, Vn = W64.numpy(), V64.numpy()

    def bpp_numpy() -> None:
        with threadpool_limits(1):
            nnls_bpp(Wn.T @ Wn, Wn.T @ Vn)[0]

    rows = [
        ("DNMF, 10 layers", _median_time(dnmf, reps)),
        ("MU, 10 iterations", _median_time(mu(10), reps)),
        ("MU, 100 iterations", _median_time(mu(100), reps)),
        ("NNLS (exact, BPP, torch)", _median_time(lambda: nnls_h(V64, W64), max(3, reps // 5))),
        ("NNLS (exact, BPP, scalenmf numpy kernel)", _median_time(bpp_numpy, max(3, reps // 5))),
    ]
    out = ["| inference of 1000 samples (96 × 1000, k = 12, 1 thread) | seconds |", "|---|---|"]
    out += [f"| {name} | {t:.4f} |" for name, t in rows]
    return out


def bench_training(quick: bool) -> list[str]:
    """Samples per second: DataLoader workers 0/2/4 (mini-batch, Zarr), 1 vs 2 processes.

    Throughput is columns per second of the steady-state epochs (the first epoch, which
    pays process start-up and torch's lazy imports, is reported separately).
    """

    from scalenmf.io import write_matrix
    from scalenmf.models.deep import DNMF

    rng = np.random.default_rng(1)
    m, k = 96, 12
    n = 40_000 if quick else 100_000
    epochs = 2 if quick else 3
    W = rng.random((m, k))
    W /= W.sum(axis=0)
    V = rng.poisson(W @ rng.gamma(0.5, 100, (k, n))).astype(np.float32)
    out = [
        f"| training (96 × {n} Zarr store, k = 12, 10 layers, unsupervised) "
        "| samples / s (steady) | first epoch s |",
        "|---|---|---|",
    ]

    def row(label: str, model: DNMF) -> str:
        secs = model.epoch_seconds_
        steady = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
        return f"| {label} | {n / steady:,.0f} | {secs[0]:.2f} |"

    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "v.zarr"
        write_matrix(store, V, block_cols=4096)
        for workers in (0, 2, 4):
            model = DNMF(
                k, mode="unsupervised", epochs=epochs, batch_size=2048, num_workers=workers
            ).fit(str(store))
            out.append(row(f"mini-batch 2048, 1 process, {workers} DataLoader workers", model))
        for nproc in (1, 2):
            model = DNMF(
                k, mode="unsupervised", epochs=epochs, batch_size=2048, num_workers=0, nproc=nproc
            ).fit(str(store))
            out.append(row(f"mini-batch 2048 (global), {nproc} gloo process(es), 0 workers", model))
        for nproc in (1, 2):
            model = DNMF(k, mode="unsupervised", epochs=epochs + 2, nproc=nproc).fit(str(store))
            out.append(row(f"full batch, {nproc} gloo process(es)", model))
    return out


def bench_depth(quick: bool) -> list[str]:
    """Supervised test error against depth (the paper's Fig. 4): DNMF with L layers vs MU
    with L iterations from the same least-squares basis, first fold of 5, two sets."""
    import torch

    from scalenmf.experiments import dnmf_eval as ev
    from scalenmf.models.deep import DNMF
    from scalenmf.models.deep.mu import nnls_w_from_gram

    torch.set_num_threads(1)
    depths = (5, 10, 20) if quick else (5, 10, 15, 20)
    epochs = 100 if quick else 500
    out = [
        f"| set (fold 1 of 5, {epochs} epochs) | "
        + " | ".join(f"DNMF L={d}" for d in depths)
        + " | "
        + " | ".join(f"MU {d} it." for d in depths)
        + " |",
        "|---|" + "---|" * (2 * len(depths)),
    ]
    for name in ("syn.2.7a.7b.abst_sp.sp", "syn.pancreas_sp.sp"):
        d = ev.load_synsig(ev.default_data_dir() / "synsig" / name)
        assert d.H is not None
        tr, te = ev.kfold_indices(d.V.shape[1], 5, 1)[0]
        Vtr, Htr, Vte, Hte = d.V[:, tr], d.H[:, tr], d.V[:, te], d.H[:, te]
        Wls = nnls_w_from_gram(ev._t(Htr @ Htr.T), ev._t(Vtr @ Htr.T))
        dn, mu = [], []
        for L in depths:
            model = DNMF(d.k, n_layers=L, epochs=epochs).fit(Vtr, Htr)
            dn.append(ev.h_mse(model.transform(Vte), Hte))
            mu.append(ev.h_mse(ev.mu_h(ev._t(Vte), Wls, L, (0.0, 0.0), "frobenius"), Hte))
        out.append(f"| {name} | " + " | ".join(f"{x:.3g}" for x in dn + mu) + " |")
    return out


def bench_eval(quick: bool, full: bool, out_dir: Path) -> list[str]:
    """The evaluation's ratio table, claims and wall time."""
    from scalenmf.experiments import dnmf_eval as ev

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
    p.add_argument("--only", default="infer,train,depth,eval")
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
    if "depth" in only:
        lines += [*bench_depth(args.quick), ""]
    if "eval" in only:
        lines += [*bench_eval(args.quick, args.full_eval, out.parent / "dnmf-eval"), ""]
    text = "\n".join(lines)
    print(text)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
