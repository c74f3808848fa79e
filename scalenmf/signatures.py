"""Mutational-signature helpers: the bundled COSMIC reference, simulation and matching."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from scalenmf.io.errors import InputError

COSMIC_FILE = "COSMIC_v3.4_SBS_GRCh37.tsv"


@dataclass(frozen=True)
class Reference:
    """A labelled signature matrix: ``matrix`` (channels × signatures)."""

    matrix: np.ndarray
    channels: np.ndarray
    names: np.ndarray


#: Names under which the bundled COSMIC reference can be asked for.
COSMIC_NAMES = ("cosmic-v3.4", "cosmic", "cosmic-v3.4-sbs96", "sbs96")


def cosmic_reference() -> Reference:
    """COSMIC v3.4 SBS96 (GRCh37), shipped inside the package."""
    text = resources.files("scalenmf.data").joinpath(COSMIC_FILE).read_text()
    lines = [line.split("\t") for line in text.strip().splitlines()]
    names = np.array(lines[0][1:])
    channels = np.array([row[0] for row in lines[1:]])
    matrix = np.array([[float(v) for v in row[1:]] for row in lines[1:]])
    return Reference(matrix, channels, names)


def read_reference(path: str | os.PathLike[str]) -> Reference:
    """A labelled signature matrix from CSV/TSV: a header row of signature names, channel
    labels in the first column (SigProfiler / COSMIC layout)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such reference file: {str(p)!r}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read reference {str(p)!r}: {exc}") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise InputError(f"reference {str(p)!r} needs a header row and at least one channel")
    sep = "\t" if "\t" in lines[0] else ","
    rows = [line.split(sep) for line in lines]
    names = np.array([c.strip() for c in rows[0][1:]])
    if names.size == 0:
        raise InputError(f"reference {str(p)!r} has no signature columns")
    channels = []
    values = []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != names.size + 1:
            raise InputError(
                f"reference {str(p)!r} line {i} has {len(row) - 1} values, expected {names.size}"
            )
        channels.append(row[0].strip())
        try:
            values.append([float(v) for v in row[1:]])
        except ValueError as exc:
            raise InputError(f"reference {str(p)!r} line {i}: {exc}") from exc
    matrix = np.array(values)
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise InputError(f"reference {str(p)!r} must hold finite, non-negative values")
    if len(set(channels)) != len(channels):
        raise InputError(f"reference {str(p)!r} repeats channel labels")
    return Reference(matrix, np.array(channels), names)


def load_reference(name: str | os.PathLike[str]) -> Reference:
    """The bundled COSMIC v3.4 SBS96 (``"cosmic-v3.4"``) or a reference file (see
    ``read_reference``)."""
    if isinstance(name, str) and name.lower() in COSMIC_NAMES:
        return cosmic_reference()
    if isinstance(name, str) and not Path(name).exists() and name.lower().startswith("cosmic"):
        raise InputError(
            f"unknown reference {name!r}; the bundled one is 'cosmic-v3.4' (or give a file)"
        )
    return read_reference(name)


def align_rows(
    matrix: np.ndarray, labels: np.ndarray | None, reference_labels: np.ndarray
) -> np.ndarray:
    """Reorder the rows of ``matrix`` to the reference's channel order, by label.

    Raises
    ------
    InputError
        When labels are missing for some reference channels.
    """
    if labels is None:
        if matrix.shape[0] != reference_labels.shape[0]:
            raise InputError(
                f"cannot align {matrix.shape[0]} unlabelled rows "
                f"to {reference_labels.shape[0]} channels"
            )
        return matrix
    index = {str(label): i for i, label in enumerate(labels)}
    missing = [str(c) for c in reference_labels if str(c) not in index]
    if missing:
        raise InputError(
            f"{len(missing)} reference channels are missing from the data's row labels "
            f"(first: {missing[:3]})"
        )
    return matrix[[index[str(c)] for c in reference_labels]]


def cosine_matrix(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosine similarity of every column of A (m, p) with every column of B (m, q)."""
    an = A / np.maximum(np.linalg.norm(A, axis=0, keepdims=True), 1e-300)
    bn = B / np.maximum(np.linalg.norm(B, axis=0, keepdims=True), 1e-300)
    return an.T @ bn


@dataclass(frozen=True)
class Match:
    factor: int
    match: str
    cosine: float


def match_signatures(
    W: np.ndarray, reference: Reference, row_labels: np.ndarray | None = None
) -> list[Match]:
    """Match each factor (column of W) to a distinct reference signature (Hungarian, on cosine).

    Parameters
    ----------
    W : ndarray, shape (m, k)
    reference : Reference
    row_labels : ndarray of str, optional
        Channel labels of W's rows (aligned to the reference by label).
    """
    from scipy.optimize import linear_sum_assignment

    Wa = align_rows(W, row_labels, reference.channels)
    cos = cosine_matrix(Wa, reference.matrix)
    rows, cols = linear_sum_assignment(-cos)
    out = [
        Match(int(r), str(reference.names[c]), float(cos[r, c]))
        for r, c in zip(rows, cols, strict=True)
    ]
    # More factors than signatures: the leftovers get no name, only their best cosine.
    for r in sorted(set(range(W.shape[1])) - {int(r) for r in rows}):
        out.append(Match(int(r), "", float(cos[r].max()) if cos.shape[1] else float("nan")))
    return sorted(out, key=lambda m: m.factor)


def simulate_catalogue(
    signatures: np.ndarray,
    n_samples: int,
    *,
    seed: int = 0,
    mean_burden: float = 2000.0,
    active_per_sample: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson catalogue (channels × samples) from signatures with sparse gamma exposures.

    Returns
    -------
    counts : ndarray, shape (96, n_samples), float64
    exposures : ndarray, shape (n_sig, n_samples)
    """
    rng = np.random.default_rng(seed)
    n_sig = signatures.shape[1]
    exposures = np.zeros((n_sig, n_samples))
    for j in range(n_samples):
        chosen = rng.choice(n_sig, size=min(active_per_sample, n_sig), replace=False)
        burden = rng.lognormal(np.log(mean_burden), 0.6)
        weights = rng.dirichlet(np.ones(chosen.size))
        exposures[chosen, j] = burden * weights
    counts = rng.poisson(signatures @ exposures).astype(np.float64)
    return counts, exposures
