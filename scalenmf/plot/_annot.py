"""Annotations the plots share: clusters of the shown samples, factor names, reference matches."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scalenmf.io.errors import InputError
from scalenmf.plot._data import (
    Consensus,
    ResultView,
    SampleSet,
    load_clusters,
    load_consensus,
    predict_clusters,
)
from scalenmf.plot.sbs import is_sbs96
from scalenmf.signatures import Reference, align_rows, cosine_matrix, cosmic_reference

#: Label of samples without a cluster.
NO_CLUSTER = "none"


@dataclass
class Clusters:
    """A cluster label per shown sample, and where the labels came from."""

    labels: np.ndarray
    source: str


def resolve_clusters(view: ResultView, sample: SampleSet, clusters: Any = None) -> Clusters:
    """Cluster labels of the sampled columns.

    Parameters
    ----------
    clusters : None, path, Consensus or array-like of length n
        None: each sample's dominant factor (``predict_clusters``). A consensus directory
        or a ``clusters.csv`` file: its labels, matched by sample name. An array: one
        label per sample of the whole result.
    """
    if clusters is None:
        pred = predict_clusters(view.W, sample.H)
        names = np.array([str(view.factor_labels[c]) if c >= 0 else NO_CLUSTER for c in pred])
        return Clusters(names, "dominant factor per sample")
    if isinstance(clusters, (str, os.PathLike, Consensus)):
        mapping, source = _cluster_mapping(clusters)
        labels = np.array([mapping.get(str(s), NO_CLUSTER) for s in sample.labels])
        if (labels == NO_CLUSTER).all():
            raise InputError(
                f"none of the result's sample names appear in {source}: "
                "is it the consensus of this result?"
            )
        return Clusters(labels, source)
    arr = np.asarray(clusters).astype(str)
    if arr.ndim != 1 or arr.shape[0] != sample.n_total:
        raise ValueError(
            f"clusters must have one label per sample ({sample.n_total}); got shape {arr.shape}"
        )
    return Clusters(arr[sample.index], "given clusters")


def _cluster_mapping(clusters: Any) -> tuple[dict[str, str], str]:
    if isinstance(clusters, Consensus):
        return clusters.clusters, f"consensus clusters ({clusters.path})"
    p = Path(clusters)
    if not p.exists():
        raise InputError(f"no such clusters.csv or consensus directory: {str(p)!r}")
    if p.is_file():
        return load_clusters(p), f"clusters from {p.name}"
    consensus = load_consensus(p)
    if not consensus.clusters:
        raise InputError(f"consensus directory {str(p)!r} has no clusters.csv")
    return consensus.clusters, "consensus clusters"


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class FactorMatch:
    """The best reference signature of a factor, and the one-to-one (Hungarian) assignment."""

    factor: int
    best: str
    best_cosine: float
    assigned: str
    assigned_cosine: float


def load_reference(spec: Any) -> tuple[Reference | None, str]:
    """A reference signature matrix and its display name.

    ``"cosmic"`` / ``"cosmic-v3.4"``: the bundled COSMIC v3.4 SBS96. A path: a CSV/TSV with
    a header row of signature names and the channel labels in the first column. None or
    ``"none"``: no matching.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None, ""
    if isinstance(spec, Reference):
        return spec, "reference"
    if isinstance(spec, str) and spec.lower() in ("cosmic", "cosmic-v3.4"):
        return cosmic_reference(), "COSMIC v3.4"
    return read_reference_table(Path(spec)), Path(spec).stem


def read_reference_table(path: Path) -> Reference:
    """A labelled signature matrix (channels × signatures) from a CSV or TSV file."""
    if not path.is_file():
        raise InputError(f"no such reference file: {str(path)!r}")
    text = path.read_text()
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise InputError(
            f"reference {str(path)!r} needs a header row of signature names and one row per "
            "channel (label first)"
        )
    try:
        matrix = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    except ValueError as exc:
        raise InputError(f"reference {str(path)!r} has a non-numeric entry: {exc}") from exc
    if matrix.shape[1] != len(rows[0]) - 1:
        raise InputError(f"reference {str(path)!r}: rows and header differ in length")
    return Reference(matrix, np.array([r[0] for r in rows[1:]]), np.array(rows[0][1:]))


def match_factors(view: ResultView, reference: Reference) -> list[FactorMatch]:
    """Best and assigned reference match of every factor, by cosine similarity.

    Rows are aligned to the reference's channels by label (``signatures.align_rows``).
    """
    from scipy.optimize import linear_sum_assignment

    Wa = align_rows(view.W, view.row_labels, reference.channels)
    cos = cosine_matrix(Wa, reference.matrix)
    rows, cols = linear_sum_assignment(-cos)
    assigned = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    out = []
    for f in range(view.k):
        best = int(np.argmax(cos[f]))
        a = assigned.get(f, best)
        out.append(
            FactorMatch(
                f,
                str(reference.names[best]),
                float(cos[f, best]),
                str(reference.names[a]),
                float(cos[f, a]),
            )
        )
    return out


def can_match(view: ResultView, reference: Reference) -> bool:
    """Whether the result's features can be aligned to the reference's channels."""
    if view.row_labels is None:
        return view.m == reference.channels.shape[0]
    return set(map(str, reference.channels)) <= set(map(str, view.row_labels))


def cosmic_matches(view: ResultView) -> list[FactorMatch] | None:
    """Matches to COSMIC v3.4 when the result's features are the 96 SBS channels."""
    if not is_sbs96(view.row_labels, view.m):
        return None
    return match_factors(view, cosmic_reference())


def factor_names(view: ResultView, matches: list[FactorMatch] | None = None) -> list[str]:
    """``"F1"``, or ``"F1 · SBS1"`` when reference matches are given."""
    names = [str(f) for f in view.factor_labels]
    if matches:
        names = [f"{name} · {m.best}" for name, m in zip(names, matches, strict=True)]
    return names
