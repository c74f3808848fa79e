"""Mutational-signature bar plots in the standard SBS96 layout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from scalenmf.plot._annot import FactorMatch, can_match, load_reference, match_factors
from scalenmf.plot._data import open_result
from scalenmf.plot._style import styled
from scalenmf.plot.sbs import (
    SUBSTITUTION_COLORS,
    SUBSTITUTIONS,
    channel_class,
    channel_context,
    sbs96_channels,
    to_plot_order,
)

#: Size of the 96 trinucleotide labels: as large as fits one per bar on the figure's width
#: (12.5 in for 96 channels; a rotated label needs its height, about 1.3 × the size).
CHANNEL_LABEL_POINTS = 7.5


def _title(name: str, match: FactorMatch | None, ref_name: str) -> str:
    if match is None:
        return f"Factor {name}"
    return f"Factor {name} — best {ref_name} match: {match.best} (cosine {match.best_cosine:.3f})"


@styled
def signature_plot(
    result: Any,
    *,
    factors: Sequence[int] | None = None,
    reference: Any = "cosmic",
    title: str | None = None,
) -> Figure:
    """Every factor of W as a 96-channel SBS bar plot, titled with its best reference match.

    Bars are the factor's share of mutations per channel (%), grouped and coloured by
    substitution class (C>A, C>G, C>T, T>A, T>C, T>G) with the trinucleotide context under
    each bar.

    Parameters
    ----------
    result : NMFResult, path of a result store, or consensus directory
        Its features must be the 96 SBS channels (row labels like ``A[C>A]A``).
    factors : sequence of int, optional
        Factor indices (0-based) to draw; default all.
    reference : "cosmic", path, Reference or None
        Signatures to name factors by (cosine similarity); default COSMIC v3.4 SBS96.
    """
    view = open_result(result)
    W96 = to_plot_order(view.W, view.row_labels)
    chosen = list(range(view.k)) if factors is None else [int(f) for f in factors]
    bad = [f for f in chosen if not 0 <= f < view.k]
    if bad or not chosen:
        raise ValueError(f"factors must be indices in 0..{view.k - 1}; got {list(factors or [])}")
    ref, ref_name = load_reference(reference)
    matches = match_factors(view, ref) if ref is not None and can_match(view, ref) else None
    channels = sbs96_channels()
    colors = [SUBSTITUTION_COLORS[channel_class(c)] for c in channels]
    # Fixed margins (inches) instead of constrained layout: the layout engine measures
    # every label of every panel several times per draw, which made this figure the
    # slowest part of a report. The panels' furniture is the same for every factor, so
    # its size is known: the title and class strip above each panel, the y label on the
    # left, the 96 rotated contexts and the x label under the last.
    top_in, gap_in, bottom_in, panel_in = 0.55, 0.62, 0.62, 1.33
    height = top_in + len(chosen) * panel_in + (len(chosen) - 1) * gap_in + bottom_in
    fig = Figure(figsize=(12.5, height))
    fig.subplots_adjust(
        left=0.62 / 12.5,
        right=1 - 0.12 / 12.5,
        top=1 - top_in / height,
        bottom=bottom_in / height,
        hspace=gap_in / panel_in,
    )
    axes = fig.subplots(len(chosen), 1, squeeze=False)[:, 0]
    x = np.arange(96)
    strip = [
        [(16 * i - 0.4, 1.02), (16 * i + 15.4, 1.02), (16 * i + 15.4, 1.09), (16 * i - 0.4, 1.09)]
        for i in range(len(SUBSTITUTIONS))
    ]
    for ax, f in zip(axes, chosen, strict=True):
        col = W96[:, f]
        pct = 100 * col / max(float(col.sum()), 1e-300)
        # One collection of 96 bars, not 96 patches: drawn in one call.
        ax.add_collection(
            PolyCollection(
                [
                    [(c - 0.375, 0.0), (c - 0.375, h), (c + 0.375, h), (c + 0.375, 0.0)]
                    for c, h in zip(x, pct, strict=True)
                ],
                facecolors=colors,
                linewidths=0,
                gid="sbs96-bars",
            ),
            autolim=False,
        )
        top = max(float(pct.max()) * 1.12, 1e-9)
        ax.set_ylim(0, top)
        ax.set_xlim(-0.6, 95.6)
        ax.set_xticks([])  # channel labels only under the last panel (96 ticks cost)
        # The class strip sits just above the axes, in axes-height units.
        ax.add_collection(
            PolyCollection(
                strip,
                facecolors=[SUBSTITUTION_COLORS[sub] for sub in SUBSTITUTIONS],
                linewidths=0,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            ),
            autolim=False,
        )
        for i, sub in enumerate(SUBSTITUTIONS):
            ax.text(
                16 * i + 7.5,
                1.12,
                sub,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                fontweight="bold",
            )
        ax.set_ylabel("% of mutations")
        ax.grid(axis="y", color="#ececec", lw=0.6)
        ax.set_axisbelow(True)
        name = str(view.factor_labels[f])
        ax.set_title(
            _title(name, None if matches is None else matches[f], ref_name), loc="left", pad=22
        )
    bottom = axes[-1]
    bottom.set_xticks(
        x,
        [channel_context(c) for c in channels],
        rotation=90,
        fontsize=CHANNEL_LABEL_POINTS,
        family="monospace",
    )
    bottom.tick_params(axis="x", length=0, pad=2)
    for label, color in zip(bottom.get_xticklabels(), colors, strict=True):
        label.set_color("#333333" if color in ("#CBCACB", "#EDC8C5") else color)
    bottom.set_xlabel("trinucleotide context (5′ base, mutated base, 3′ base)")
    if title:
        fig.suptitle(title, x=0.01, ha="left")
    return fig
