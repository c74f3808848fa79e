"""Turning the fits of a rank survey into one row of measures per rank, and a suggestion.

Pure bookkeeping on a ``MultiFitOutcome``: no pass over X happens here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalenmf.io.selection_store import SUMMARY_COLUMNS
from scalenmf.models.consensus import (
    FactorConsensus,
    SampleConsensus,
    factor_consensus,
    sample_consensus,
)
from scalenmf.models.fits import FitSpec, MultiFitOutcome, label_matrix

EXTRA_COLUMNS = (
    "objective_best",
    "n_runs",
    "n_iter_mean",
    "converged",
    "cv_reps",
    "consensus_samples",
    "subsampled",
)


def survey_fits(ks: list[int], n_runs: int, cv_reps: int, null: bool) -> list[FitSpec]:
    """Every fit of a survey: restarts on X (and on the null), held-out replicates."""
    variants = ["data", "null"] if null else ["data"]
    fits = []
    for variant in variants:
        for k in ks:
            fits += [FitSpec(k, variant, -1, r) for r in range(n_runs)]
            fits += [FitSpec(k, variant, rep, 0) for rep in range(cv_reps)]
    return fits


@dataclass
class RankMeasures:
    """Everything measured at one rank on one variant (X or its null)."""

    row: dict[str, Any]
    consensus: SampleConsensus | None
    factors: FactorConsensus | None
    cv: list[float] = field(default_factory=list)
    best_fit: int = -1


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def measure_rank(
    outcome: MultiFitOutcome,
    k: int,
    variant: str,
    *,
    consensus_samples: int,
    sample_seed: int = 0,
) -> RankMeasures:
    """The summary row of rank ``k`` on ``variant`` ("data" or "null")."""
    runs = [
        f for f, s in enumerate(outcome.fits) if s.k == k and s.variant == variant and s.rep < 0
    ]
    reps = [
        f for f, s in enumerate(outcome.fits) if s.k == k and s.variant == variant and s.rep >= 0
    ]
    finals = [outcome.objectives[f][-1] for f in runs]
    errors = [outcome.relative_errors[f][-1] for f in runs]
    best = runs[int(np.argmin(finals))]
    labels = label_matrix(outcome.labels, runs)
    sc = sample_consensus(labels, k, max_samples=consensus_samples, seed=sample_seed)
    fc = factor_consensus([outcome.Ws[f] for f in runs], finals) if len(runs) > 1 else None
    cv = [outcome.test_errors[f] for f in reps]
    cv_ok = [v for v in cv if not math.isnan(v)]
    row: dict[str, Any] = {
        "k": k,
        "error_best": float(outcome.relative_errors[best][-1]),
        "error_mean": float(np.mean(errors)),
        "cophenetic": sc.cophenetic,
        "dispersion": sc.dispersion,
        "silhouette": sc.silhouette,
        "stability": fc.silhouette if fc is not None else math.nan,
        "cv_error": float(np.mean(cv_ok)) if cv_ok else math.nan,
        "cv_error_sd": float(np.std(cv_ok, ddof=1)) if len(cv_ok) > 1 else math.nan,
        "objective_best": float(outcome.objectives[best][-1]),
        "n_runs": len(runs),
        "n_iter_mean": float(np.mean([outcome.n_iter[f] for f in runs])),
        "converged": float(np.mean([outcome.converged[f] for f in runs])),
        "cv_reps": len(cv_ok),
        "consensus_samples": int(sc.samples.size),
        "subsampled": bool(sc.subsampled),
    }
    return RankMeasures(row=row, consensus=sc, factors=fc, cv=cv, best_fit=best)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))


def suggest_rank(
    measures: dict[int, RankMeasures], null: dict[int, RankMeasures] | None = None
) -> dict[str, Any]:
    """Suggest a rank, and say why.

    With held-out replicates: the rank of lowest held-out error, or a smaller rank whose
    held-out error is within one standard error of it, the error differences taken
    replicate by replicate (the same held-out entries at every rank). Without them: the
    rank with the highest ``cophenetic + stability`` (the consensus is both crisp and
    reproducible), ties to the smaller rank.

    Returns
    -------
    dict
        ``k``, ``reason``, ``criterion`` and the measures at ``k`` (and their null values).
    """
    ks = sorted(measures)
    cv = {k: measures[k].row["cv_error"] for k in ks}
    with_cv = [k for k in ks if _finite(cv[k])]
    if len(with_cv) >= 2:
        best = min(with_cv, key=lambda k: (cv[k], k))
        chosen = best
        for k in with_cv:
            if k >= best:
                break
            a, b = np.array(measures[k].cv), np.array(measures[best].cv)
            ok = ~(np.isnan(a) | np.isnan(b))
            diff = a[ok] - b[ok]
            if diff.size >= 2:
                se = float(np.std(diff, ddof=1) / math.sqrt(diff.size))
                if float(diff.mean()) <= se:
                    chosen = k
                    break
        row = measures[chosen].row
        sd = row["cv_error_sd"]
        reason = (
            f"k={chosen} has the lowest held-out error"
            if chosen == best
            else f"k={chosen} is within one standard error of the lowest held-out error "
            f"(k={best}: {cv[best]:.4g})"
        )
        reason += f": {row['cv_error']:.4g}" + (f" ± {sd:.2g}" if _finite(sd) else "")
        reason += f" over {row['cv_reps']} held-out replicates"
        criterion = "cross-validation"
    else:

        def score(k: int) -> float:
            r = measures[k].row
            return sum(float(r[c]) for c in ("cophenetic", "stability") if _finite(r[c]))

        chosen = max(ks, key=lambda k: (score(k), -k))
        row = measures[chosen].row
        reason = f"k={chosen} has the highest cophenetic + stability ({score(chosen):.4g})"
        criterion = "consensus"
    extras = []
    if _finite(row["cophenetic"]):
        extras.append(f"cophenetic {row['cophenetic']:.3f}")
    if _finite(row["stability"]):
        extras.append(f"stability {row['stability']:.3f}")
    if null is not None and chosen in null:
        nrow = null[chosen].row
        if _finite(nrow["cophenetic"]):
            extras.append(f"cophenetic on permuted data {nrow['cophenetic']:.3f}")
        if _finite(nrow["cv_error"]) and _finite(row["cv_error"]):
            extras.append(f"held-out error on permuted data {nrow['cv_error']:.4g}")
    if extras:
        reason += "; " + ", ".join(extras)
    out: dict[str, Any] = {"k": int(chosen), "reason": reason, "criterion": criterion}
    out.update({c: row[c] for c in SUMMARY_COLUMNS if c != "k"})
    if null is not None and chosen in null:
        out["null"] = {c: null[chosen].row[c] for c in SUMMARY_COLUMNS if c != "k"}
    return out
