"""Sample-level plots: exposure stacked bars and the 2-D scatter of samples in factor space."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from scalenmf.plot._annot import NO_CLUSTER, cosmic_matches, factor_names, resolve_clusters
from scalenmf.plot._data import open_result
from scalenmf.plot._style import categorical_colors, clamp, natural_order, new_figure, styled
from scalenmf.plot.heatmaps import NO_CLUSTER_COLOR, TICK_LABELS_UP_TO, order_by_cluster
from scalenmf.plot.sbs import is_sbs96

#: Samples drawn as bars by default (bars thinner than a pixel say nothing).
DEFAULT_BAR_SAMPLES = 300

#: Above this many samples the bars touch and are drawn as one step patch per factor.
THIN_BARS_ABOVE = 80

#: Samples drawn as points by default.
DEFAULT_SCATTER_SAMPLES = 5000


def _unit(view: Any) -> str:
    return "mutations" if is_sbs96(view.row_labels, view.m) else "counts"


@styled
def exposures_plot(
    result: Any,
    *,
    clusters: Any = None,
    relative: bool = False,
    max_samples: int | None = DEFAULT_BAR_SAMPLES,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Stacked bars of every sample's exposures, samples ordered by cluster.

    The exposure of sample j to factor f is ``(Σ_i W_if) H_fj``: the part of the sample's
    total (mutations, counts) the factor accounts for, whatever the scaling of W and H.

    Parameters
    ----------
    result : NMFResult, path of a result store, or consensus directory
    clusters : None, consensus directory, clusters.csv path or array of length n
    relative : bool, default False
        Bars as shares of each sample (they sum to 1) instead of absolute exposures.
    max_samples : int or None, default 300
        Samples drawn at most; above it a seeded random sample, said in the axis label.
    """
    view = open_result(result)
    sample = view.sample(max_samples, seed)
    expo = sample.H * view.W.sum(axis=0)[:, None]
    cl = resolve_clusters(view, sample, clusters)
    total = expo.sum(axis=0)
    order, _ = order_by_cluster(cl.labels, total)
    values = (expo / np.maximum(total, 1e-300))[:, order] if relative else expo[:, order]
    k, s = values.shape
    names = factor_names(view, cosmic_matches(view))
    colors = categorical_colors(k)
    fig = new_figure(clamp(4 + s * 0.06, 7, 14), 4.4)
    ax = fig.add_subplot()
    x = np.arange(s)
    bottom = np.zeros(s)
    for f in range(k):
        if s > THIN_BARS_ABOVE:
            # Touching bars: one filled step patch per factor instead of s rectangles.
            ax.stairs(
                bottom + values[f],
                np.arange(s + 1) - 0.5,
                baseline=bottom.copy(),
                fill=True,
                color=colors[f],
                label=names[f],
                lw=0,
            )
        else:
            ax.bar(
                x, values[f], bottom=bottom, width=0.8, color=colors[f], label=names[f], linewidth=0
            )
        bottom += values[f]
    boundaries = np.flatnonzero(cl.labels[order][1:] != cl.labels[order][:-1]) + 0.5
    for b in boundaries:
        ax.axvline(b, color="#555555", lw=0.7, ls=":")
    ax.set_xlim(-0.6, s - 0.4)
    if s <= TICK_LABELS_UP_TO:
        ax.set_xticks(x, [str(v) for v in sample.labels[order]], rotation=90, fontsize=6)
    else:
        ax.set_xticks([])
    ax.set_xlabel(f"{sample.describe()}, ordered by cluster ({cl.source}) and total")
    ax.set_ylabel("share of the sample" if relative else f"{_unit(view)} attributed")
    fig.legend(
        *ax.get_legend_handles_labels(),
        loc="outside right upper",
        title="factor",
        ncols=1 if k <= 14 else 2,
    )
    ax.set_title(title or f"Exposures: k = {k}, {sample.describe()}", loc="left")
    return fig


def simplex_coordinates(shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Place samples inside a regular k-gon: corner f is factor f, a sample sits at the
    share-weighted mean of the corners.

    Parameters
    ----------
    shares : ndarray, shape (k, s)
        Columns summing to 1.

    Returns
    -------
    points : ndarray, shape (s, 2)
    corners : ndarray, shape (k, 2)
    """
    k = shares.shape[0]
    angle = np.pi / 2 - 2 * np.pi * np.arange(k) / k
    corners = np.column_stack([np.cos(angle), np.sin(angle)])
    return shares.T @ corners, corners


@styled
def sample_scatter(
    result: Any,
    *,
    dims: Sequence[int] | None = None,
    clusters: Any = None,
    max_samples: int | None = DEFAULT_SCATTER_SAMPLES,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Samples as points in factor space, coloured by cluster.

    With ``dims=(i, j)`` (and always for k = 2) the axes are the exposures of factors i and
    j. Otherwise every factor is a corner of a regular k-gon and each sample sits at the
    mean of the corners weighted by its exposure shares: pure samples lie at a corner,
    mixtures in between.

    Parameters
    ----------
    result : NMFResult, path of a result store, or consensus directory
    dims : pair of int, optional
        Two factor indices (0-based) for the axes.
    clusters : None, consensus directory, clusters.csv path or array of length n
    max_samples : int or None, default 5000
    """
    view = open_result(result)
    if view.k < 2:
        raise ValueError("a sample scatter needs at least 2 factors; this result has k = 1")
    if dims is not None:
        dims = [int(d) for d in dims]
        if len(dims) != 2 or len(set(dims)) != 2 or not all(0 <= d < view.k for d in dims):
            raise ValueError(f"dims must be two distinct factor indices in 0..{view.k - 1}")
    elif view.k == 2:
        dims = [0, 1]
    sample = view.sample(max_samples, seed)
    expo = sample.H * view.W.sum(axis=0)[:, None]
    cl = resolve_clusters(view, sample, clusters)
    names = factor_names(view, cosmic_matches(view))
    fig = new_figure(6.6, 5.6)
    ax = fig.add_subplot()
    if dims is None:
        shares = expo / np.maximum(expo.sum(axis=0, keepdims=True), 1e-300)
        points, corners = simplex_coordinates(shares)
        ax.add_patch(Polygon(corners, closed=True, fill=False, ec="#b0b0b0", lw=0.8))
        for (cx, cy), name in zip(corners, names, strict=True):
            ax.text(
                cx * 1.08, cy * 1.08, name, ha="center", va="center", fontsize=8, fontweight="bold"
            )
        ax.set_aspect("equal")
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        ax.set_xlim(lo[0] - 0.3, hi[0] + 0.3)
        ax.set_ylim(lo[1] - 0.15, hi[1] + 0.15)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_xlabel("each sample at the mean of the factor corners, weighted by its shares")
        ax.set_ylabel("")
        what = f"factor simplex (k = {view.k})"
    else:
        points = expo[dims].T
        unit = _unit(view)
        ax.set_xlabel(f"{names[dims[0]]} exposure ({unit})")
        ax.set_ylabel(f"{names[dims[1]]} exposure ({unit})")
        ax.grid(color="#ececec", lw=0.6)
        what = f"{names[dims[0]]} against {names[dims[1]]}"
    present = natural_order([str(c) for c in cl.labels])
    order = [c for c in present if c != NO_CLUSTER] + (
        [NO_CLUSTER] if NO_CLUSTER in present else []
    )
    palette = dict(zip(order, categorical_colors(len(order)), strict=True))
    palette[NO_CLUSTER] = NO_CLUSTER_COLOR
    size = clamp(2400 / max(len(points), 1), 3, 28)
    for name in order:
        mask = cl.labels == name
        ax.scatter(
            points[mask, 0],
            points[mask, 1],
            s=size,
            color=palette[name],
            alpha=0.75,
            lw=0,
            label=f"{name} ({int(mask.sum()):,})",
            rasterized=len(points) > 2000,
        )
    fig.legend(
        *ax.get_legend_handles_labels(),
        loc="outside right upper",
        title=f"cluster\n({cl.source})",
        markerscale=1.5,
    )
    ax.set_title(title or f"Samples in factor space: {what}, {sample.describe()}", loc="left")
    return fig
