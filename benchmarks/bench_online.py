"""Online (mini-batch) NMF against full batch: passes and wall time to within 0.5%.

A seeded COSMIC-like catalogue (96 × n, k = 10, Poisson counts). Full-batch ALS runs to
convergence (``tol=1e-7``): its objective is the target. Then full-batch ALS and HALS and
``solver="online"`` (exact NNLS for H, exact statistics) each report the passes over X and
the wall time until their objective is within 0.5% of the target, and scikit-learn's
MiniBatchNMF (where installed) its time to the same objective.

    python benchmarks/bench_online.py --n 100000

``--partial-fit`` instead compares the estimator's ``NMF.partial_fit`` with scikit-learn's
``MiniBatchNMF.partial_fit`` on the same batches (samples × features, both from their
nndsvda start): seconds and the objective's gap to the full-batch target after each epoch.

    python benchmarks/bench_online.py --partial-fit --n 20000 --batch-size 1000 --epochs 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import scalenmf


def catalogue(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.full(96, 0.3), size=k).T
    H = rng.gamma(0.6, 1.0, (k, n)) * 400
    return rng.poisson(W @ H).astype(np.float64)


def to_target(X, k, target, **kw):
    """(passes, seconds) until the objective is within 0.5% of ``target``, by callback."""
    hits: list[tuple[int, float]] = []

    def seen(info):
        if not hits and info.objectives[0] <= 1.005 * target:
            hits.append((info.iteration, info.elapsed_s))

    t = time.perf_counter()
    res = scalenmf.nmf(X, k, callback=seen, progress=False, **kw)
    total = time.perf_counter() - t
    if not hits and res.loss_history[-1] <= 1.005 * target:
        hits.append((res.n_iter + 1, total))
    return (hits[0] if hits else (None, None)), res, total


def frobenius_gap(est, X, target: float) -> float:
    """Objective of ``est.components_`` (H solved exactly by scalenmf) over the target."""
    res = scalenmf.project(
        np.ascontiguousarray(est.components_.T), X, novelty_cosine=None, novelty_z=None
    )
    return res.objective / target - 1


def partial_fit_rows(args: argparse.Namespace) -> None:
    """``NMF.partial_fit`` against ``MiniBatchNMF.partial_fit``, epoch by epoch."""
    import warnings

    from sklearn.decomposition import MiniBatchNMF

    X = catalogue(args.n, args.k)
    full = scalenmf.nmf(X, args.k, max_iter=1000, tol=1e-7, progress=False)
    target = full.loss_history[-1]
    Xs = np.ascontiguousarray(X.T)  # samples × features
    batches = np.array_split(np.arange(args.n), max(1, args.n // args.batch_size))
    print(
        f"96 × {args.n:,}, k={args.k}, Frobenius, {len(batches)} batches of ~{args.batch_size}"
        f": gap to the full-batch objective {target:.6g} after each epoch\n"
    )
    print("| estimator | epoch | cumulative seconds | gap |")
    print("|---|---|---|---|")
    estimators = [
        ("scalenmf NMF.partial_fit", scalenmf.NMF(args.k, random_state=0)),
        (
            "sklearn MiniBatchNMF.partial_fit",
            MiniBatchNMF(args.k, init="nndsvda", batch_size=args.batch_size, random_state=0),
        ),
    ]
    for name, est in estimators:
        spent = 0.0
        for epoch in range(1, args.epochs + 1):
            order = np.random.default_rng(epoch).permutation(args.n)
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for rows in batches:
                    est.partial_fit(Xs[order[rows]])
            spent += time.perf_counter() - t
            gap = frobenius_gap(est, X, target)
            print(f"| {name} | {epoch} | {spent:.2f} | {gap:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--partial-fit", action="store_true", help="NMF.partial_fit vs sklearn")
    ap.add_argument("--epochs", type=int, default=3, help="--partial-fit: passes over X")
    args = ap.parse_args()
    if args.partial_fit:
        partial_fit_rows(args)
        return
    X = catalogue(args.n, args.k)
    full = scalenmf.nmf(X, args.k, max_iter=1000, tol=1e-7, progress=False)
    target = full.loss_history[-1]
    print(
        f"96 × {args.n:,}, k={args.k}: target objective {target:.6g} "
        f"(ALS, {full.n_iter} iterations)\n"
    )
    print("| method | passes to 0.5% | seconds to 0.5% | final gap |")
    print("|---|---|---|---|")
    rows = [
        ("full-batch ALS (bpp)", {"max_iter": 300, "tol": 0}),
        ("full-batch HALS", {"solver": "hals", "max_iter": 300, "tol": 0}),
        (
            f"online (batch {args.batch_size})",
            {"solver": "online", "batch_size": args.batch_size, "max_iter": 10, "tol": 0},
        ),
    ]
    for name, kw in rows:
        (passes, secs), res, _ = to_target(X, args.k, target, **kw)
        gap = res.loss_history[-1] / target - 1
        print(f"| {name} | {passes} | {secs if secs is None else round(secs, 2)} | {gap:.4f} |")
    try:
        from sklearn.decomposition import MiniBatchNMF
    except ImportError:
        print("| scikit-learn MiniBatchNMF | not installed | | |")
        return
    t = time.perf_counter()
    est = MiniBatchNMF(args.k, batch_size=args.batch_size, max_iter=10, tol=0, random_state=0)
    Hs = est.fit_transform(X.T)
    secs = time.perf_counter() - t
    obj = 0.5 * float(((X.T - Hs @ est.components_) ** 2).sum())
    print(
        f"| scikit-learn MiniBatchNMF (10 epochs) | – | {secs:.2f} (all) | {obj / target - 1:.4f} |"
    )


if __name__ == "__main__":
    main()
