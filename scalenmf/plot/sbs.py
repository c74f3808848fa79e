"""The standard 96-channel single-base-substitution (SBS96) layout.

Channels are written ``5'[REF>ALT]3'`` (``A[C>A]G``), as in COSMIC and SigProfiler. The
plotting order groups them by substitution class (C>A, C>G, C>T, T>A, T>C, T>G), and within a
class by 5' base, then 3' base.
"""

from __future__ import annotations

import numpy as np

from scalenmf.io.errors import InputError
from scalenmf.signatures import cosmic_reference

SUBSTITUTIONS = ("C>A", "C>G", "C>T", "T>A", "T>C", "T>G")
BASES = ("A", "C", "G", "T")

#: The conventional colours of the six classes (cyan, black, red, grey, green, pink).
SUBSTITUTION_COLORS = {
    "C>A": "#1EBFF0",
    "C>G": "#050708",
    "C>T": "#E62725",
    "T>A": "#CBCACB",
    "T>C": "#A1CF64",
    "T>G": "#EDC8C5",
}


def sbs96_channels() -> list[str]:
    """The 96 channel names in plotting order."""
    return [f"{five}[{sub}]{three}" for sub in SUBSTITUTIONS for five in BASES for three in BASES]


def channel_class(channel: str) -> str:
    """``"A[C>A]G"`` → ``"C>A"``."""
    return channel[2:5]


def channel_context(channel: str) -> str:
    """``"A[C>A]G"`` → ``"ACG"`` (the trinucleotide, reference base in the middle)."""
    return channel[0] + channel[2] + channel[6]


def is_sbs96(labels: np.ndarray | None, m: int) -> bool:
    """Whether rows with these labels (or m unlabelled rows) are the 96 SBS channels."""
    if labels is None:
        return m == 96
    return m == 96 and set(map(str, labels)) == set(sbs96_channels())


def to_plot_order(W: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Rows of W (96, k) reordered to ``sbs96_channels()``.

    Unlabelled rows are taken to be in COSMIC's file order (alphabetical by 5' base), as
    ``scalenmf.signatures.align_rows`` assumes.
    """
    if labels is None:
        if W.shape[0] != 96:
            raise InputError(f"a signature plot needs the 96 SBS channels; W has {W.shape[0]} rows")
        labels = cosmic_reference().channels
    if not is_sbs96(labels, W.shape[0]):
        raise InputError(
            "a signature plot needs the 96 SBS channels as row labels (like 'A[C>A]A'); "
            f"this result has {W.shape[0]} features"
            + (f" (first: {', '.join(map(str, labels[:3]))})" if len(labels) else "")
        )
    index = {str(label): i for i, label in enumerate(labels)}
    return W[[index[c] for c in sbs96_channels()]]
