"""Reading a factorization: clusters, top features, feature scores, sparseness, matching.

Everything here works on a fitted ``NMFResult`` (or on W and H arrays) in memory; H of
shape (k, n) takes 8·k bytes per sample, so this is fine at cohort scale.

- ``predict``: the factor of every sample (or feature), R NMF's ``predict``.
- ``top_features``: the features with the largest weight in every factor.
- ``feature_scores`` / ``extract_features``: Kim & Park (2007) specificity scores and the
  features they select.
- ``sparseness``: Hoyer's (2004) sparseness of every factor and every sample.
- ``match``: name every factor by its best reference signature (cosine similarity,
  Hungarian assignment), against COSMIC v3.4 SBS96 or a labelled user matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scalenmf.results.nmf import NMFResult
from scalenmf.signatures import Match, Reference, load_reference, match_signatures


def _factors(result: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(result, NMFResult):
        return np.asarray(result.W, dtype=np.float64), np.asarray(result.H, dtype=np.float64)
    return np.asarray(result, dtype=np.float64), None


def normalized_h(W: np.ndarray, H: np.ndarray) -> np.ndarray:
    """H rescaled as if W's columns summed to 1: ``diag(Σ_i W_iq) · H`` (k, n).

    NMF's factors are defined up to a scale per factor; on this scale ``H[q, j]`` is the
    amount of sample j that factor q explains, comparable across factors.
    """
    return np.asarray(H, dtype=np.float64) * np.asarray(W, dtype=np.float64).sum(axis=0)[:, None]


def predict(result: NMFResult, what: str = "samples") -> np.ndarray:
    """The dominant factor (0..k−1) of every sample, or of every feature.

    ``what="samples"``: argmax over factors of the normalized H (``normalized_h``), as R
    NMF's ``predict``. ``what="features"``: argmax of W with its columns scaled to unit sum.

    Returns
    -------
    ndarray of int64, shape (n,) or (m,)
    """
    W, H = np.asarray(result.W, dtype=np.float64), np.asarray(result.H, dtype=np.float64)
    if what == "samples":
        return np.argmax(normalized_h(W, H), axis=0).astype(np.int64)
    if what == "features":
        sums = W.sum(axis=0)
        return np.argmax(W / np.where(sums > 0, sums, 1.0), axis=1).astype(np.int64)
    raise ValueError(f"what must be 'samples' or 'features'; got {what!r}")


def top_features(result: Any, n: int = 10) -> np.ndarray:
    """Indices of the ``n`` largest-weight features of every factor, (min(n, m), k).

    Column q lists factor q's features by decreasing weight in W.
    """
    W, _ = _factors(result)
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    order = np.argsort(-W, axis=0, kind="stable")
    return order[: min(n, W.shape[0])]


def feature_scores(result: Any) -> np.ndarray:
    """Kim & Park (2007) feature scores: 1 for a feature specific to one factor, 0 for none.

    ``score_i = 1 + (1 / log2 k) Σ_q p_iq log2 p_iq`` with ``p_iq = W_iq / Σ_q W_iq``.
    Features with an all-zero row get 0; with k = 1 every score is 1.

    Returns
    -------
    ndarray, shape (m,)
    """
    W, _ = _factors(result)
    k = W.shape[1]
    if k == 1:
        return np.ones(W.shape[0])
    rows = W.sum(axis=1, keepdims=True)
    P = W / np.where(rows > 0, rows, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(P > 0, P * np.log2(np.where(P > 0, P, 1.0)), 0.0)
    scores = 1.0 + plogp.sum(axis=1) / np.log2(k)
    return np.where(rows[:, 0] > 0, scores, 0.0)


def extract_features(result: Any) -> list[np.ndarray]:
    """Kim & Park's feature selection: the specific features of every factor.

    A feature is selected when its score exceeds ``median + 3·MAD`` of all scores and its
    largest weight exceeds the median of all of W; it goes to the factor where its weight
    is largest.

    Returns
    -------
    list of k int arrays (feature indices, by decreasing weight)
    """
    W, _ = _factors(result)
    scores = feature_scores(W)
    med = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - med)))
    keep = (scores > med + 3.0 * mad) & (W.max(axis=1) > float(np.median(W)))
    owner = np.argmax(W, axis=1)
    out = []
    for q in range(W.shape[1]):
        idx = np.flatnonzero(keep & (owner == q))
        out.append(idx[np.argsort(-W[idx, q], kind="stable")])
    return out


def hoyer_sparseness(V: np.ndarray, axis: int = 0) -> np.ndarray:
    """Hoyer's sparseness ``(√n − ‖v‖₁/‖v‖₂) / (√n − 1)`` of every vector along ``axis``.

    1 for a vector with one non-zero, 0 for a constant vector; NaN for zero vectors and
    for vectors of length 1.
    """
    V = np.asarray(V, dtype=np.float64)
    n = V.shape[axis]
    l1 = np.abs(V).sum(axis=axis)
    l2 = np.sqrt((V * V).sum(axis=axis))
    if n < 2:
        return np.full(l1.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (np.sqrt(n) - l1 / l2) / (np.sqrt(n) - 1.0)
    return np.where(l2 > 0, s, np.nan)


@dataclass
class Sparseness:
    """Hoyer sparseness of the factors (columns of W), of the coefficient rows (rows of H)
    and of the samples (columns of H)."""

    factors: np.ndarray  # (k,)
    coefficients: np.ndarray  # (k,)
    samples: np.ndarray  # (n,)

    @property
    def mean_factors(self) -> float:
        return float(np.nanmean(self.factors))

    @property
    def mean_samples(self) -> float:
        return float(np.nanmean(self.samples))


def sparseness(result: NMFResult) -> Sparseness:
    """Sparseness of every factor (W column), coefficient row (H row) and sample (H column)."""
    return Sparseness(
        factors=hoyer_sparseness(result.W, axis=0),
        coefficients=hoyer_sparseness(result.H, axis=1),
        samples=hoyer_sparseness(result.H, axis=0),
    )


def match(
    result: Any,
    reference: str | Reference = "cosmic-v3.4",
    *,
    row_labels: Any = None,
) -> list[Match]:
    """Match every factor to a distinct reference signature (cosine, Hungarian assignment).

    Parameters
    ----------
    result : NMFResult or ndarray (m, k)
    reference : "cosmic-v3.4", a path to a labelled matrix (CSV/TSV: channels in the first
        column, one signature per further column) or a ``Reference``
    row_labels : sequence of str, optional
        Channel labels of W's rows (default: the result's ``row_labels``). Rows are aligned
        to the reference's channels by label; without labels the order must match.

    Returns
    -------
    list of Match (factor, match, cosine), by factor. When k exceeds the number of
    reference signatures, the factors left over get ``match=""`` and their best cosine.
    """
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    W, _ = _factors(result)
    labels = row_labels
    if labels is None and isinstance(result, NMFResult):
        labels = result.row_labels
    return match_signatures(W, ref, None if labels is None else np.asarray(labels, dtype=str))


def f_name(q: Any) -> str:
    """The name of factor ``q`` (0-based) in every table and figure: F1…Fk."""
    return f"F{int(q) + 1}"


def write_interpretation(
    result: NMFResult, directory: Any, *, top: int = 10, overwrite: bool = False
) -> dict[str, Any]:
    """Write the interpretation tables of a result into ``directory`` (atomically).

    ``clusters.csv`` (sample, cluster 1..k, factor F1..Fk), ``top_features.csv`` (factor,
    rank, feature, weight, score), ``feature_scores.csv`` (feature, score, factor,
    specific) and ``sparseness.csv`` (what, index, label, sparseness). Factors are named
    F1…Fk in every table, as in the plots and the report; ``index`` counts from 0.

    Returns
    -------
    dict
        A short summary (cluster sizes, mean sparseness, number of specific features).
    """
    from pathlib import Path

    from scalenmf.io.atomic import atomic_output
    from scalenmf.io.tables import write_csv

    m, k = result.W.shape
    n = result.H.shape[1]
    rows_lab = result.row_labels if result.row_labels is not None else np.arange(m).astype(str)
    cols_lab = result.col_labels if result.col_labels is not None else np.arange(n).astype(str)
    factor = predict(result)
    scores = feature_scores(result)
    specific = extract_features(result)
    owner = np.full(m, -1)
    for q, idx in enumerate(specific):
        owner[idx] = q
    tops = top_features(result, top)
    sp_ = sparseness(result)
    with atomic_output(directory, overwrite=overwrite) as tmp:
        out = Path(tmp)
        write_csv(
            out / "clusters.csv",
            [
                {"sample": cols_lab[j], "cluster": int(factor[j]) + 1, "factor": f_name(factor[j])}
                for j in range(n)
            ],
            ["sample", "cluster", "factor"],
        )
        write_csv(
            out / "top_features.csv",
            [
                {
                    "factor": f_name(q),
                    "rank": r + 1,
                    "feature": rows_lab[i],
                    "weight": float(result.W[i, q]),
                    "score": float(scores[i]),
                }
                for q in range(k)
                for r, i in enumerate(tops[:, q])
            ],
            ["factor", "rank", "feature", "weight", "score"],
        )
        write_csv(
            out / "feature_scores.csv",
            [
                {
                    "feature": rows_lab[i],
                    "score": float(scores[i]),
                    "factor": f_name(np.argmax(result.W[i])),
                    "specific": bool(owner[i] >= 0),
                }
                for i in range(m)
            ],
            ["feature", "score", "factor", "specific"],
        )
        sp_rows = [
            {"what": "factor", "index": q, "label": f_name(q), "sparseness": float(v)}
            for q, v in enumerate(sp_.factors)
        ]
        sp_rows += [
            {"what": "coefficients", "index": q, "label": f_name(q), "sparseness": float(v)}
            for q, v in enumerate(sp_.coefficients)
        ]
        sp_rows += [
            {"what": "sample", "index": j, "label": cols_lab[j], "sparseness": float(v)}
            for j, v in enumerate(sp_.samples)
        ]
        write_csv(out / "sparseness.csv", sp_rows, ["what", "index", "label", "sparseness"])
    sizes = np.bincount(factor, minlength=k)
    return {
        "cluster_sizes": {str(q + 1): int(c) for q, c in enumerate(sizes)},
        "sparseness_factors": sp_.mean_factors,
        "sparseness_samples": sp_.mean_samples,
        "n_specific": int(sum(idx.size for idx in specific)),
    }
