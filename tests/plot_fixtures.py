"""Tiny seeded inputs for the plot and report tests.

A COSMIC-simulated catalogue fitted for real, and hand-written model-selection directories
in the on-disk contract of ``scalenmf rank`` / ``scalenmf consensus``: ``summary.csv``,
``null_summary.csv``, ``suggestion.json``, ``runs.csv``; ``clusters.csv``, ``consensus.zarr``
(arrays consensus, order, linkage, samples; attrs k, n_runs, cophenetic, dispersion,
subsampled, n_total), ``result.zarr``, ``summary.json``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import scalenmf
from scalenmf.io.zarr_store import write_labels
from scalenmf.signatures import cosmic_reference, simulate_catalogue

PLANTED = ("SBS1", "SBS4", "SBS13")
SURVEY_COLUMNS = (
    "k",
    "error_best",
    "error_mean",
    "cophenetic",
    "dispersion",
    "silhouette",
    "stability",
    "cv_error",
    "cv_error_sd",
)


def catalogue(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(96, n) counts from three planted COSMIC signatures, channel and sample labels."""
    ref = cosmic_reference()
    cols = [int(np.flatnonzero(ref.names == s)[0]) for s in PLANTED]
    counts, _ = simulate_catalogue(ref.matrix[:, cols], n, seed=seed, mean_burden=800)
    return counts, ref.channels, [f"S{j:03d}" for j in range(n)]


def fit_catalogue(n: int = 60, *, n_runs: int = 3, seed: int = 0) -> scalenmf.NMFResult:
    """A real KL fit of the simulated catalogue (k = 3)."""
    counts, channels, samples = catalogue(n, seed)
    source = scalenmf.open_matrix(counts).set_labels(channels, samples)
    return scalenmf.nmf(
        source, 3, loss="kl", max_iter=120, tol=0, n_runs=n_runs, seed=seed, progress=False
    )


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def rank_dir(path: Path, *, ks: tuple[int, ...] = (2, 3, 4, 5, 6), suggested: int = 3) -> Path:
    """A rank survey directory with plausible measures (a knee at ``suggested``)."""
    path.mkdir()
    rng = np.random.default_rng(5)

    def rows(null: bool) -> list[list[object]]:
        out = []
        for k in ks:
            err = 0.6 / k if null else 0.5 * np.exp(-(min(k, suggested) - 1)) + 0.02 * k
            coph = 0.7 - 0.02 * k if null else (0.99 if k <= suggested else 0.85 - 0.03 * k)
            out.append(
                [
                    k,
                    err,
                    err * 1.05,
                    coph,
                    coph - 0.1,
                    coph - 0.2,
                    coph - 0.15,
                    err * 1.2 + (0 if null else 0.01 * (k - suggested) ** 2),
                    abs(rng.normal(0.01, 0.003)),
                    "extra",
                ]
            )
        return out

    header = [*SURVEY_COLUMNS, "note"]
    summary = rows(False)
    write_csv(path / "summary.csv", header, summary)
    write_csv(path / "null_summary.csv", header, rows(True))
    (path / "suggestion.json").write_text(
        json.dumps({"k": suggested, "reason": "cophenetic correlation drops after k=3"})
    )
    write_csv(
        path / "runs.csv",
        ["k", "run", "objective", "relative_error", "n_iter"],
        # Three runs per k whose best is error_best and mean error_mean (= 1.05 × best).
        [
            [row[0], r, 1000 * row[1] * f, row[1] * f, 50]
            for row in summary
            for r, f in enumerate((1.0, 1.05, 1.10))
        ],
    )
    return path


def consensus_dir(path: Path, result: scalenmf.NMFResult, *, subsample: int | None = None) -> Path:
    """A consensus directory for ``result``: the consensus of its dominant-factor clusters."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    path.mkdir()
    samples = np.asarray(result.col_labels)
    n_total = samples.shape[0]
    expo = result.H * result.W.sum(axis=0)[:, None]
    cluster = np.argmax(expo, axis=0) + 1
    idx = (
        np.arange(n_total)
        if subsample is None
        else np.sort(np.random.default_rng(1).choice(n_total, subsample, replace=False))
    )
    rng = np.random.default_rng(2)
    same = (cluster[idx, None] == cluster[None, idx]).astype(np.float64)
    noise = rng.uniform(0, 0.15, same.shape)
    C = np.clip(same - np.triu(noise) - np.triu(noise, 1).T, 0, 1)
    np.fill_diagonal(C, 1.0)
    Z = linkage(squareform(1 - C, checks=False), method="average")
    g = zarr.open_group(str(path / "consensus.zarr"), mode="w")
    g.create_array("consensus", data=C.astype(np.float32), chunks=(32, 32))
    g.create_array("order", data=leaves_list(Z).astype(np.int64))
    g.create_array("linkage", data=Z.astype(np.float64))
    write_labels(g, "samples", samples[idx])
    g.attrs.update(
        {
            "k": 3,
            "n_runs": 30,
            "cophenetic": 0.987,
            "dispersion": 0.91,
            "subsampled": subsample is not None,
            "n_total": int(n_total),
        }
    )
    write_csv(
        path / "clusters.csv",
        ["sample", "cluster"],
        [[s, int(c)] for s, c in zip(samples, cluster, strict=True)],
    )
    result.save(path / "result.zarr")
    (path / "summary.json").write_text(json.dumps({"k": 3, "cophenetic": 0.987}))
    return path


def write_large_store(path: Path, n: int = 200_000, chunk: int = 2000) -> Path:
    """A result store with k = 4 SBS96 factors and n samples, H in n / chunk column chunks."""
    from scalenmf.io.results import write_result

    ref = cosmic_reference()
    rng = np.random.default_rng(7)
    W = ref.matrix[:, [0, 3, 17, 40]]
    H = rng.gamma(0.5, 200.0, (4, n))
    write_result(
        path,
        {"W": W, "H": H},
        attrs={
            "k": 4,
            "params": {"k": 4, "solver": "mu", "loss": "kl"},
            "n_iter": 3,
            "loss_history": [3.0, 2.0, 1.0],
            "relative_error": 0.1,
            "converged": True,
            "runs": [],
            "info": {"best_run": 0},
        },
        labels={"row_labels": ref.channels, "col_labels": np.array([f"c{j}" for j in range(n)])},
        col_chunk=chunk,
    )
    return path


def record_store_reads(monkeypatch: Any) -> list[str]:
    """Record every key read from local Zarr stores (an instrumented reader)."""
    from zarr.storage import LocalStore

    seen: list[str] = []
    original = LocalStore.get

    async def counting(self: LocalStore, key: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting)
    return seen


def h_chunks(keys: list[str]) -> set[str]:
    """The chunks of the result's H among the keys read."""
    return {k for k in keys if k.startswith("H/c/")}
