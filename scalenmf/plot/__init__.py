"""Plots of scalenmf results (needs the ``plot`` extra: matplotlib).

Every function takes a result (an ``NMFResult``, the path of a result store, or a consensus
directory for its ``result.zarr``) or a model-selection directory, and returns a
``matplotlib.figure.Figure``; ``save_figure`` writes it atomically. Sample-level plots read
only a sample of H's columns for large n.

>>> import scalenmf, scalenmf.plot as sp                                    # doctest: +SKIP
>>> fig = sp.signature_plot("result.zarr")                                  # doctest: +SKIP
>>> sp.save_figure(fig, "signatures.pdf")                                   # doctest: +SKIP
>>> sp.plot("survey_dir", "rank", "rank.png")                               # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("scalenmf.plot needs matplotlib: pip install 'scalenmf[plot]'") from exc

from scalenmf.plot._data import (
    Consensus,
    RankSurvey,
    ResultView,
    SampleSet,
    load_consensus,
    load_rank_survey,
    open_result,
    predict_clusters,
)
from scalenmf.plot._style import FIGURE_FORMATS, figure_format, save_figure
from scalenmf.plot.heatmaps import basis_heatmap, coef_heatmap, consensus_heatmap
from scalenmf.plot.samples import exposures_plot, sample_scatter
from scalenmf.plot.sigplot import signature_plot
from scalenmf.plot.survey import convergence_plot, rank_survey_panel


@dataclass(frozen=True)
class Kind:
    """A plot kind of ``scalenmf plot``: its function and what it reads."""

    draw: Callable[..., Figure]
    reads: str
    description: str


#: ``scalenmf plot --kind`` choices, in the order the help lists them.
KINDS: dict[str, Kind] = {
    "basis": Kind(basis_heatmap, "result", "heatmap of W, top features per factor"),
    "coef": Kind(coef_heatmap, "result", "heatmap of H, samples ordered by cluster"),
    "consensus": Kind(consensus_heatmap, "consensus", "consensus matrix with dendrogram"),
    "rank": Kind(rank_survey_panel, "rank", "rank survey measures against k, with the null"),
    "convergence": Kind(convergence_plot, "result", "objective against iteration, per run"),
    "signatures": Kind(signature_plot, "result", "SBS96 bar plot per factor, COSMIC matches"),
    "exposures": Kind(exposures_plot, "result", "stacked exposure bars per sample"),
    "scatter": Kind(sample_scatter, "result", "samples in factor space, coloured by cluster"),
}


def plot(
    source: Any,
    kind: str,
    output: str | os.PathLike[str] | None = None,
    *,
    dpi: float = 150,
    **options: Any,
) -> Figure:
    """Draw one plot ``kind`` of ``source`` and, with ``output``, save it (atomically).

    Parameters
    ----------
    source : NMFResult, path of a result store, rank survey or consensus directory
    kind : str
        One of ``KINDS``: basis, coef, consensus, rank, convergence, signatures,
        exposures, scatter.
    output : path-like, optional
        ``.png``, ``.pdf`` or ``.svg``; checked before anything is drawn.
    options
        Passed on to the plot function (``n_top``, ``max_samples``, ``clusters``, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if output is not None:
        figure_format(output)
    fig = KINDS[kind].draw(source, **options)
    if output is not None:
        save_figure(fig, output, dpi=dpi)
    return fig


__all__ = [
    "FIGURE_FORMATS",
    "KINDS",
    "Consensus",
    "RankSurvey",
    "ResultView",
    "SampleSet",
    "basis_heatmap",
    "coef_heatmap",
    "consensus_heatmap",
    "convergence_plot",
    "exposures_plot",
    "load_consensus",
    "load_rank_survey",
    "open_result",
    "plot",
    "predict_clusters",
    "rank_survey_panel",
    "sample_scatter",
    "save_figure",
    "signature_plot",
]
