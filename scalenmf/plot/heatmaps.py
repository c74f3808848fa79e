"""Heatmaps: the basis W (top features), the coefficients H (by cluster), the consensus matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from scalenmf.plot._annot import NO_CLUSTER, resolve_clusters
from scalenmf.plot._data import DEFAULT_MAX_SAMPLES, Consensus, load_consensus, open_result
from scalenmf.plot._style import (
    categorical_colors,
    clamp,
    natural_order,
    new_figure,
    shorten,
    styled,
)

#: Features shown in full (no top-feature selection) up to this many.
ALL_FEATURES_UP_TO = 50

#: Feature names written beside the basis heatmap up to this many rows.
FEATURE_LABELS_UP_TO = 200

#: Sample names written under a heatmap up to this many samples.
TICK_LABELS_UP_TO = 60

#: Colour of samples without a cluster in annotation strips.
NO_CLUSTER_COLOR = "#d9d9d9"


def top_features(W: np.ndarray, n_top: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to show in a basis heatmap and the factor each one belongs to.

    Each factor's ``n_top`` heaviest features (on W scaled so every factor sums to 1), their
    union, each row assigned to the factor where its scaled weight is largest, ordered by
    factor and then by weight.

    Returns
    -------
    rows : ndarray of int, shape (r,)
    owner : ndarray of int, shape (r,)
    """
    m = W.shape[0]
    share = W / np.maximum(W.sum(axis=0, keepdims=True), 1e-300)
    if m <= max(ALL_FEATURES_UP_TO, n_top):
        chosen = np.arange(m)
    else:
        top = np.argsort(-share, axis=0, kind="stable")[:n_top]
        chosen = np.unique(top.ravel())
    owner = np.argmax(share[chosen], axis=1)
    weight = share[chosen, owner]
    order = np.lexsort((-weight, owner))
    return chosen[order], owner[order]


def _scale_rows(values: np.ndarray) -> np.ndarray:
    return values / np.maximum(values.max(axis=1, keepdims=True), 1e-300)


BASIS_SCALES = {
    "row": ("weight relative to the feature's largest", lambda s: _scale_rows(s)),
    "column": ("share of the factor's total weight", lambda s: s),
    "none": ("W", None),
}


@styled
def basis_heatmap(
    result: Any,
    *,
    n_top: int = 10,
    scale: str = "row",
    cmap: str = "YlGnBu",
    title: str | None = None,
) -> Figure:
    """Heatmap of the basis W: features × factors, the top features of every factor.

    Parameters
    ----------
    result : NMFResult, path of a result store, or consensus directory
    n_top : int, default 10
        Features per factor when there are more than 50 features (all are shown otherwise).
    scale : {"row", "column", "none"}
        ``"row"``: each feature scaled to its largest factor (which factor owns it);
        ``"column"``: W with every factor summing to 1; ``"none"``: raw W.
    cmap : str
        A matplotlib colour map.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if scale not in BASIS_SCALES:
        raise ValueError(f"scale must be one of {sorted(BASIS_SCALES)}; got {scale!r}")
    if n_top < 1:
        raise ValueError(f"n_top must be at least 1; got {n_top}")
    view = open_result(result)
    rows, owner = top_features(view.W, n_top)
    share = view.W / np.maximum(view.W.sum(axis=0, keepdims=True), 1e-300)
    label, fn = BASIS_SCALES[scale]
    values = view.W[rows] if fn is None else fn(share[rows])
    r, k = values.shape
    fig = new_figure(clamp(2.6 + 0.5 * k, 4.5, 12), clamp(1.4 + 0.14 * r, 3.2, 24))
    ax = fig.add_subplot()
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0)
    for boundary in np.flatnonzero(np.diff(owner)) + 0.5:
        ax.axhline(boundary, color="white", lw=1.2)
    names = view.feature_labels()[rows]
    if r <= FEATURE_LABELS_UP_TO:
        ax.set_yticks(
            np.arange(r), [shorten(str(s)) for s in names], fontsize=clamp(9 - r / 40, 5, 8)
        )
    else:  # unreadable at this many rows: the top-features table of the report lists them
        ax.set_yticks([])
    ax.set_xticks(np.arange(k), [str(f) for f in view.factor_labels])
    ax.tick_params(length=0)
    ax.set_xlabel("factor")
    shown = "all features" if r == view.m else f"top {n_top} features per factor"
    ax.set_ylabel(f"feature ({shown})")
    cbar = fig.colorbar(im, ax=ax, shrink=0.6, pad=0.02)
    cbar.set_label(label)
    ax.set_title(
        title or f"Basis W: {shown} ({r:,} of {view.m:,}), k = {k}",
        loc="left",
    )
    return fig


def _cluster_strip(ax: Axes, labels: np.ndarray, order: list[str]) -> dict[str, str]:
    """Draw one row of cluster colours; returns the colour of every cluster."""
    palette = dict(zip(order, categorical_colors(len(order)), strict=True))
    palette[NO_CLUSTER] = NO_CLUSTER_COLOR
    keys = list(palette)
    codes = np.array([keys.index(str(c)) for c in labels])[None, :]
    ax.imshow(
        codes,
        aspect="auto",
        cmap=ListedColormap(list(palette.values())),
        vmin=0,
        vmax=len(keys) - 1,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([0], ["cluster"])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return palette


def _cluster_legend(fig: Figure, palette: dict[str, str], present: set[str]) -> None:
    handles = [Patch(color=c, label=name) for name, c in palette.items() if name in present]
    fig.legend(
        handles=handles,
        loc="outside right upper",
        title="cluster",
        ncols=1 if len(handles) <= 12 else 2,
    )


COEF_SCALES = {
    "column": "share of the sample",
    "row": "relative to the factor's largest",
    "none": "exposure (W column sum × H)",
}


def order_by_cluster(labels: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Sample order: by cluster (natural order, unclustered last), then by weight, descending."""
    clusters = [c for c in natural_order([str(x) for x in labels]) if c != NO_CLUSTER]
    rank = {c: i for i, c in enumerate([*clusters, NO_CLUSTER])}
    code = np.array([rank[str(x)] for x in labels])
    return np.lexsort((-weight, code)), clusters


@styled
def coef_heatmap(
    result: Any,
    *,
    clusters: Any = None,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    scale: str = "column",
    cmap: str = "YlOrRd",
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Heatmap of the coefficients: factors × samples, samples ordered by cluster.

    For large n only a sample of columns is read (``max_samples``, from a few column chunks
    of the store), and the title says so.

    Parameters
    ----------
    result : NMFResult, path of a result store, or consensus directory
    clusters : None, consensus directory, clusters.csv path or array of length n
        Default: each sample's dominant factor.
    max_samples : int or None, default 2000
        Columns shown at most (None: all).
    scale : {"column", "row", "none"}
        ``"column"``: each sample's exposures as shares (they sum to 1); ``"row"``: each
        factor scaled to its largest; ``"none"``: exposures ``(Σ_i W_if) H_fj``.
    seed : int
        Seed of the column sample.
    """
    if scale not in COEF_SCALES:
        raise ValueError(f"scale must be one of {sorted(COEF_SCALES)}; got {scale!r}")
    view = open_result(result)
    sample = view.sample(max_samples, seed)
    expo = sample.H * view.W.sum(axis=0)[:, None]
    cl = resolve_clusters(view, sample, clusters)
    share = expo / np.maximum(expo.sum(axis=0, keepdims=True), 1e-300)
    order, cluster_names = order_by_cluster(cl.labels, share.max(axis=0))
    values = {"column": share, "row": _scale_rows(expo), "none": expo}[scale][:, order]
    k, s = values.shape
    fig = new_figure(clamp(4 + s / 40, 7, 13), clamp(1.9 + 0.32 * k, 3.2, 9))
    grid = fig.add_gridspec(2, 2, height_ratios=[0.6, max(3.0, k)], width_ratios=[60, 1])
    strip = fig.add_subplot(grid[0, 0])
    ax = fig.add_subplot(grid[1, 0], sharex=strip)
    palette = _cluster_strip(strip, cl.labels[order], cluster_names)
    strip.tick_params(labelbottom=False, bottom=False)
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0)
    boundaries = np.flatnonzero(cl.labels[order][1:] != cl.labels[order][:-1]) + 0.5
    for b in boundaries:
        ax.axvline(b, color="white", lw=0.8)
    ax.set_yticks(np.arange(k), [str(f) for f in view.factor_labels])
    if s <= TICK_LABELS_UP_TO:
        ax.set_xticks(
            np.arange(s),
            [shorten(str(x), 16) for x in sample.labels[order]],
            rotation=90,
            fontsize=6,
        )
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    ax.set_xlabel(f"{sample.describe()}, ordered by cluster ({cl.source})")
    ax.set_ylabel("factor")
    cbar = fig.colorbar(im, cax=fig.add_subplot(grid[1, 1]))
    cbar.set_label(COEF_SCALES[scale])
    _cluster_legend(fig, palette, set(map(str, cl.labels)))
    sampled = f", {s:,} of {sample.n_total:,} samples sampled" if sample.sampled else ""
    strip.set_title(title or f"Coefficients H: k = {k}{sampled}", loc="left")
    return fig


# --------------------------------------------------------------------------- consensus


def dendrogram_segments(linkage: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """Line segments of a dendrogram whose leaf ``leaves[i]`` sits at x = i + 0.5.

    Iterative (no recursion limit for large trees): every merge is drawn at the height
    ``linkage[t, 2]`` between its children's midpoints.

    Returns
    -------
    ndarray, shape (3·(n − 1), 2, 2)
        ``[[x0, y0], [x1, y1]]`` per segment.
    """
    n = leaves.shape[0]
    x = np.empty(2 * n - 1)
    y = np.zeros(2 * n - 1)
    x[leaves] = np.arange(n) + 0.5
    segments = np.empty((3 * (n - 1), 2, 2))
    for t, (a, b, height, _) in enumerate(linkage):
        a, b = int(a), int(b)
        x[n + t] = 0.5 * (x[a] + x[b])
        y[n + t] = height
        segments[3 * t] = [[x[a], y[a]], [x[a], height]]
        segments[3 * t + 1] = [[x[b], y[b]], [x[b], height]]
        segments[3 * t + 2] = [[x[a], height], [x[b], height]]
    return segments


def consensus_leaf_order(c: Consensus) -> np.ndarray:
    """The dendrogram's leaf order (``order`` when there is no usable tree)."""
    from scipy.cluster.hierarchy import is_valid_linkage, leaves_list

    if c.linkage is not None and is_valid_linkage(c.linkage):
        return np.asarray(leaves_list(c.linkage), dtype=np.int64)
    return c.order


def consensus_clusters(c: Consensus) -> tuple[np.ndarray, str]:
    """A cluster label per row: clusters.csv, else the tree cut into ``k`` clusters."""
    if c.clusters:
        return c.cluster_of_samples(), "clusters.csv"
    k = c.attrs.get("k")
    if c.linkage is not None and k:
        from scipy.cluster.hierarchy import fcluster

        return fcluster(c.linkage, int(k), criterion="maxclust").astype(str), f"tree cut at k={k}"
    return np.full(c.n, NO_CLUSTER), "no clusters"


def _consensus_title(c: Consensus) -> str:
    a = c.attrs
    parts = ["Consensus matrix"]
    if a.get("k") is not None:
        parts.append(f"k = {a['k']}")
    if a.get("n_runs") is not None:
        parts.append(f"{a['n_runs']} runs")
    stats = []
    for key in ("cophenetic", "dispersion"):
        if isinstance(a.get(key), (int, float)):
            stats.append(f"{key} {a[key]:.3f}")
    text = ", ".join(parts)
    if stats:
        text += " — " + ", ".join(stats)
    if a.get("subsampled"):
        text += f"\nestimated on {c.n:,} of {int(a.get('n_total') or c.n):,} samples (subsample)"
    return text


@styled
def consensus_heatmap(
    consensus: Any,
    *,
    max_display: int = 1500,
    cmap: str = "RdYlBu_r",
    title: str | None = None,
) -> Figure:
    """Consensus matrix in dendrogram order, with the dendrogram and a cluster strip on top.

    Parameters
    ----------
    consensus : path of a consensus directory (or its consensus.zarr), or a ``Consensus``
    max_display : int, default 1500
        Above this many samples every ⌈n / max_display⌉-th sample in leaf order is drawn
        (only those rows and columns are read from the store).
    cmap : str
        Colour map for the consensus values in [0, 1].
    """
    c = load_consensus(consensus)
    n = c.n
    leaves = consensus_leaf_order(c)
    step = max(1, -(-n // max_display))
    shown = leaves[::step]
    sorted_idx = np.sort(shown)
    block = np.asarray(c.matrix.oindex[sorted_idx, sorted_idx], dtype=np.float64)
    pos = np.searchsorted(sorted_idx, shown)
    values = block[np.ix_(pos, pos)]
    labels, source = consensus_clusters(c)
    names = [x for x in natural_order([str(v) for v in labels]) if x != NO_CLUSTER]

    fig = new_figure(8.2, 8.0)
    has_tree = c.linkage is not None
    grid = fig.add_gridspec(
        3, 2, height_ratios=[1.4 if has_tree else 0.01, 0.28, 6], width_ratios=[40, 1]
    )
    tree_ax = fig.add_subplot(grid[0, 0])
    strip = fig.add_subplot(grid[1, 0])
    ax = fig.add_subplot(grid[2, 0])
    if has_tree and c.linkage is not None:
        segs = dendrogram_segments(c.linkage, leaves)
        tree_ax.add_collection(LineCollection(list(segs), colors="#404040", linewidths=0.6))
        tree_ax.set_xlim(0, n)
        tree_ax.set_ylim(0, max(float(c.linkage[:, 2].max()), 1e-12) * 1.03)
        tree_ax.set_ylabel("distance", fontsize=7)
        tree_ax.tick_params(labelsize=6)
        tree_ax.spines["bottom"].set_visible(False)
    tree_ax.set_xticks([])
    if not has_tree:
        tree_ax.set_axis_off()
    palette = _cluster_strip(strip, labels[shown], names)
    strip.set_xlim(-0.5, len(shown) - 0.5)
    im = ax.imshow(
        values,
        cmap=cmap,
        vmin=0,
        vmax=1,
        aspect="auto",
        extent=(0, n, n, 0),
        interpolation="nearest" if len(shown) < 600 else "antialiased",
    )
    if len(shown) <= TICK_LABELS_UP_TO:
        ticks = (np.arange(len(shown)) + 0.5) * step
        tick_names = [shorten(str(s), 16) for s in c.samples[shown]]
        ax.set_xticks(ticks, tick_names, rotation=90, fontsize=6)
        ax.set_yticks(ticks, tick_names, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel(
        "samples (dendrogram order"
        + (f", every {step}th shown" if step > 1 else "")
        + f"; clusters: {source})"
    )
    ax.set_ylabel("samples")
    cbar = fig.colorbar(im, cax=fig.add_subplot(grid[2, 1]))
    cbar.set_label("fraction of runs clustering the pair together")
    _cluster_legend(fig, palette, set(map(str, labels)))
    (tree_ax if has_tree else strip).set_title(title or _consensus_title(c), loc="left")
    return fig
