"""Output directories of ``rank`` and ``consensus``: CSV tables, JSON, Zarr stores.

A rank directory::

    summary.csv        one row per k: k, error_best, error_mean, cophenetic, dispersion,
                       silhouette, stability, cv_error, cv_error_sd, ...
    null_summary.csv   the same on the column-permuted null (NaN when the null was off)
    suggestion.json    {"k": int, "reason": str, "criterion": str, ...}
    runs.csv           one row per fit of X: k, run, objective, relative_error, n_iter, ...
    cv_runs.csv        one row per held-out replicate (X and null): ..., cv_error
    null_runs.csv      the null's fits
    survey.json        parameters, timings, executor
    best/k{K}.zarr     the lowest-objective fit per k (a result store)
    consensus/k{K}.zarr  consensus matrix, leaf order and tree per k

A consensus directory::

    clusters.csv       sample, cluster (1..k), confidence, in_subsample, factor (F1..Fk)
    consensus.zarr     consensus (n_s × n_s float32), order (int64), linkage ((n_s−1)×4),
                       samples (str); attrs k, n_runs, cophenetic, dispersion,
                       subsampled, n_total
    result.zarr        the consensus factorization (a result store)
    factors.csv        factor, run, cluster, kept, silhouette (factor-level consensus)
    runs.csv           k, run, objective, relative_error, n_iter, converged
    summary.json

Every directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from scalenmf.io.atomic import atomic_output
from scalenmf.io.results import jsonable
from scalenmf.io.tables import write_csv, write_json
from scalenmf.io.zarr_store import _codec, write_labels

#: The columns every rank-survey ``summary.csv`` starts with, in order (the on-disk
#: contract that the plots and the report read; more columns may follow).
SUMMARY_COLUMNS = (
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

RUN_COLUMNS = ("k", "run", "objective", "relative_error", "n_iter", "converged")


def write_consensus_store(
    path: str | os.PathLike[str],
    sc: Any,
    sample_labels: np.ndarray,
    *,
    k: int,
    n_runs: int,
    extra_attrs: dict[str, Any] | None = None,
) -> str:
    """Write one sample consensus (a ``SampleConsensus``) as a Zarr v3 group, atomically."""
    with atomic_output(path) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=3)
        n_s = int(sc.samples.size)
        chunk = max(1, min(n_s, 2048))
        arr = root.create_array(
            "consensus",
            shape=(n_s, n_s),
            chunks=(chunk, chunk),
            dtype="float32",
            compressors=[_codec()],
        )
        arr[...] = np.asarray(sc.matrix, dtype=np.float32)
        order = root.create_array("order", shape=(n_s,), chunks=(max(1, n_s),), dtype="int64")
        order[...] = np.asarray(sc.order, dtype=np.int64)
        Z = np.asarray(sc.linkage, dtype=np.float64).reshape(-1, 4)
        link = root.create_array(
            "linkage", shape=Z.shape, chunks=(max(1, Z.shape[0]), 4), dtype="float64"
        )
        link[...] = Z
        index = root.create_array(
            "sample_index", shape=(n_s,), chunks=(max(1, n_s),), dtype="int64"
        )
        index[...] = np.asarray(sc.samples, dtype=np.int64)
        write_labels(root, "samples", np.asarray(sample_labels)[sc.samples])
        attrs = {
            "k": int(k),
            "n_runs": int(n_runs),
            "cophenetic": _num(sc.cophenetic),
            "dispersion": _num(sc.dispersion),
            "silhouette": _num(sc.silhouette),
            "subsampled": bool(sc.subsampled),
            "n_total": int(sc.n_total),
            "scalenmf": {"kind": "consensus", "format_version": 1},
        }
        attrs.update(extra_attrs or {})
        root.attrs.update(jsonable(attrs))
    return str(path)


def _num(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def write_survey(
    survey: Any,
    directory: str | os.PathLike[str],
    columns: list[str],
    *,
    overwrite: bool = False,
) -> str:
    """Write a ``RankSurvey`` to ``directory`` (see the module docstring).

    ``columns`` are the summary columns, in order.
    """
    with atomic_output(directory, overwrite=overwrite) as tmp:
        out = Path(tmp)
        write_csv(out / "summary.csv", survey.summary, columns)
        null_rows = survey.null_summary
        if null_rows is None:
            null_rows = [{"k": k, **{c: math.nan for c in columns[1:]}} for k in survey.ks]
        write_csv(out / "null_summary.csv", null_rows, columns)
        write_json(out / "suggestion.json", survey.suggestion)
        run_cols = [*RUN_COLUMNS, "variant"]
        fits = [r for r in survey.runs if r["kind"] == "fit"]
        write_csv(out / "runs.csv", [r for r in fits if r["variant"] == "data"], run_cols)
        write_csv(out / "null_runs.csv", [r for r in fits if r["variant"] == "null"], run_cols)
        write_csv(
            out / "cv_runs.csv",
            [r for r in survey.runs if r["kind"] == "cv"],
            [*run_cols, "cv_error"],
        )
        write_json(out / "survey.json", {"params": survey.params, "info": survey.info})
        (out / "best").mkdir()
        for k, res in survey.best.items():
            res.save(out / "best" / f"k{k}.zarr")
        (out / "consensus").mkdir()
        n_runs = int(survey.params.get("n_runs", 0))
        for k, sc in survey.consensus.items():
            write_consensus_store(
                out / "consensus" / f"k{k}.zarr", sc, survey.sample_labels, k=k, n_runs=n_runs
            )
    return str(directory)


def write_consensus(
    result: Any,
    directory: str | os.PathLike[str],
    factor: np.ndarray,
    *,
    overwrite: bool = False,
) -> str:
    """Write a ``ConsensusResult`` to ``directory`` (see the module docstring).

    ``factor`` is the predicted factor of every sample under the consensus factorization.
    """
    sc = result.samples
    labels = np.asarray(result.sample_labels, dtype=str)
    with atomic_output(directory, overwrite=overwrite) as tmp:
        out = Path(tmp)
        in_sub = np.zeros(labels.size, dtype=bool)
        in_sub[sc.samples] = True
        rows = [
            {
                "sample": labels[j],
                "cluster": int(sc.clusters[j]),
                "confidence": float(sc.confidence[j]),
                "in_subsample": bool(in_sub[j]),
                "factor": f"F{int(factor[j]) + 1}",
            }
            for j in range(labels.size)
        ]
        write_csv(
            out / "clusters.csv",
            rows,
            ["sample", "cluster", "confidence", "in_subsample", "factor"],
        )
        write_consensus_store(
            out / "consensus.zarr",
            sc,
            labels,
            k=result.k,
            n_runs=result.n_runs,
            extra_attrs={"stability": _num(result.stability)},
        )
        result.result.save(out / "result.zarr")
        fc = result.factors
        if fc is not None:
            frows = [
                {
                    "factor": f"F{i + 1}",
                    "run": r,
                    "cluster": int(fc.labels[r, i]),
                    "kept": bool(fc.kept[r, i]),
                    "silhouette": float(fc.silhouettes[r, i]),
                }
                for r in range(fc.labels.shape[0])
                for i in range(fc.labels.shape[1])
            ]
            write_csv(
                out / "factors.csv", frows, ["factor", "run", "cluster", "kept", "silhouette"]
            )
        write_csv(out / "runs.csv", result.runs, list(RUN_COLUMNS))
        write_json(
            out / "summary.json",
            {**result.summary(), "params": result.params, "info": result.info},
        )
    return str(directory)
