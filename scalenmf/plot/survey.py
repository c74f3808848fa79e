"""Model selection and convergence: the rank survey panel and loss-against-iteration curves."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator

from scalenmf.plot._data import RankSurvey, load_rank_survey, open_result
from scalenmf.plot._style import categorical_colors, clamp, new_figure, styled

OBSERVED_COLOR = "#1f4e79"
NULL_COLOR = "#9a9a9a"
SUGGESTED_COLOR = "#c0392b"
LOSS_NAMES = {"frobenius": "Frobenius", "kl": "KL"}


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


class PowerFormatter(LogFormatter):
    """Log-axis labels as ``10⁴`` and ``3×10⁴``, in plain text.

    The same labels and the same choice of which ticks get one as matplotlib's default
    (``LogFormatterSciNotation``), without mathtext: its parser costs a few tenths of a
    second the first time a process draws a log axis, a large share of a quick report.
    """

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        exponent = int(np.floor(np.log10(x) + 1e-9))
        coeff = x / 10.0**exponent
        power = "10" + str(exponent).translate(_SUPERSCRIPT)
        if abs(coeff - round(coeff)) < 1e-6:
            return power if round(coeff) == 1 else f"{round(coeff)}×{power}"
        return f"{coeff:.3g}×{power}"


@dataclass(frozen=True)
class Panel:
    """One measure of the survey against k."""

    column: str
    title: str
    ylabel: str
    spread: str | None = None
    second: str | None = None
    better: str = ""
    per_run: str | None = None


#: The measures the rank panel draws, in reading order.
PANELS = (
    Panel(
        "error_best",
        "Reconstruction error",
        "relative error",
        second="error_mean",
        better="lower is better",
        per_run="relative_error",
    ),
    Panel("cophenetic", "Cophenetic correlation", "cophenetic", better="higher is more stable"),
    Panel("dispersion", "Dispersion", "dispersion", better="higher is more stable"),
    Panel("silhouette", "Consensus silhouette", "mean silhouette", better="higher is better"),
    Panel("stability", "Factor stability", "factor silhouette", better="higher is better"),
    Panel(
        "cv_error",
        "Cross-validation error",
        "held-out error",
        spread="cv_error_sd",
        better="lower is better",
    ),
)


def _draw_measure(ax: Axes, survey: RankSurvey, panel: Panel) -> bool:
    ks = survey.ks
    y = survey.column(panel.column)
    ax.set_title(panel.title, loc="left")
    ax.set_xlabel("rank k")
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", color="#e6e6e6", lw=0.6)
    if y is None:
        ax.text(
            0.5,
            0.5,
            "not computed",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color=NULL_COLOR,
            fontstyle="italic",
        )
        ax.set_xlim(ks.min() - 0.5, ks.max() + 0.5)
        return False
    sd = survey.column(panel.spread) if panel.spread else None
    if sd is not None:
        ax.fill_between(ks, y - sd, y + sd, color=OBSERVED_COLOR, alpha=0.15, lw=0)
    ax.plot(ks, y, "o-", color=OBSERVED_COLOR, ms=4, lw=1.6)
    runs = survey.runs
    if panel.per_run and runs is not None and {"k", panel.per_run} <= set(runs):
        # Every run of every k as a faint dot, slightly spread so they do not hide each other.
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, runs["k"].shape)
        ax.scatter(
            runs["k"] + jitter,
            runs[panel.per_run],
            s=7,
            color=OBSERVED_COLOR,
            alpha=0.25,
            lw=0,
            zorder=1,
        )
    second = survey.column(panel.second) if panel.second else None
    if second is not None:
        ax.plot(ks, second, "s--", color=OBSERVED_COLOR, ms=3, lw=1, alpha=0.6)
    if survey.null is not None:
        null = survey.column(panel.column, null=True)
        if null is not None and "k" in survey.null:
            nk = survey.null["k"]
            null_sd = survey.column(panel.spread, null=True) if panel.spread else None
            if null_sd is not None:
                ax.fill_between(
                    nk, null - null_sd, null + null_sd, color=NULL_COLOR, alpha=0.15, lw=0
                )
            ax.plot(nk, null, "o--", color=NULL_COLOR, ms=3, lw=1.2)
    if panel.better:
        ax.text(
            1.0,
            1.02,
            panel.better,
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="#707070",
            fontstyle="italic",
        )
    return True


@styled
def rank_survey_panel(survey: Any, *, title: str | None = None) -> Figure:
    """Error, cophenetic, dispersion, silhouette, stability and CV error against k.

    The same measures on column-permuted data (``null_summary.csv``) are overlaid in grey,
    and the suggested k (``suggestion.json``) is marked.

    Parameters
    ----------
    survey : path of a rank survey directory, or a ``RankSurvey``
    """
    s = load_rank_survey(survey)
    fig = new_figure(11.5, 6.6)
    axes = fig.subplots(2, 3).ravel()
    suggested = s.suggested_k
    for ax, panel in zip(axes, PANELS, strict=True):
        drawn = _draw_measure(ax, s, panel)
        if suggested is not None and drawn:
            ax.axvline(suggested, color=SUGGESTED_COLOR, ls=":", lw=1.3)
    handles = [
        Line2D([], [], color=OBSERVED_COLOR, marker="o", ms=4, label="data"),
        Line2D(
            [],
            [],
            color=OBSERVED_COLOR,
            marker="s",
            ms=3,
            ls="--",
            alpha=0.6,
            label="mean over runs (error)",
        ),
    ]
    if s.runs is not None and "relative_error" in s.runs:
        handles.append(
            Line2D(
                [],
                [],
                color=OBSERVED_COLOR,
                marker="o",
                ms=3,
                ls="",
                alpha=0.35,
                label="single runs (error)",
            )
        )
    if s.null is not None:
        handles.append(
            Line2D(
                [],
                [],
                color=NULL_COLOR,
                marker="o",
                ms=3,
                ls="--",
                label="column-permuted data (null)",
            )
        )
    if suggested is not None:
        handles.append(
            Line2D([], [], color=SUGGESTED_COLOR, ls=":", label=f"suggested k = {suggested}")
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    ks = s.ks
    text = title or f"Rank survey, k = {ks.min()}–{ks.max()}"
    if title is None and suggested is not None:
        reason = str((s.suggestion or {}).get("reason") or "").strip()
        text += f": suggested k = {suggested}"
        if reason:
            text += "\n" + textwrap.shorten(reason, 160, placeholder=" …")
    fig.suptitle(text, x=0.01, ha="left")
    return fig


# --------------------------------------------------------------------------- convergence


def run_histories(attrs: dict[str, Any]) -> tuple[list[tuple[int, list[float]]], int, bool]:
    """``[(run, loss_history), ...]``, the kept run, and whether every run's history is known.

    Results written before per-run histories were stored have only the kept run's.
    """
    best = int((attrs.get("info") or {}).get("best_run", 0) or 0)
    runs = attrs.get("runs") or []
    per_run = [
        (int(r.get("run", i)), list(r["loss_history"]))
        for i, r in enumerate(runs)
        if r.get("loss_history")
    ]
    if per_run:
        return per_run, best, len(per_run) == len(runs)
    history = [float(v) for v in attrs.get("loss_history") or []]
    return ([(best, history)] if history else []), best, len(runs) <= 1


@styled
def convergence_plot(result: Any, *, log: bool | None = None, title: str | None = None) -> Figure:
    """Objective against iteration, one curve per run (the kept run drawn strongest).

    Parameters
    ----------
    result : NMFResult, path of a result store, or consensus directory
    log : bool, optional
        Logarithmic objective axis (default: when every value is positive).
    """
    view = open_result(result)
    histories, best, complete = run_histories(view.attrs)
    if not histories:
        raise ValueError(f"{view.name} has no loss history to plot")
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    colors = categorical_colors(max(len(histories), 1))
    for (run, hist), color in zip(histories, colors, strict=True):
        it = np.arange(1, len(hist) + 1)
        kept = run == best
        ax.plot(
            it,
            hist,
            color=color if kept or len(histories) <= 10 else "#9aaec7",
            lw=2.2 if kept else 1.0,
            alpha=1.0 if kept else 0.75,
            zorder=3 if kept else 2,
            label=f"run {run}" + (" (kept)" if kept else ""),
        )
    values = np.concatenate([np.asarray(h, dtype=float) for _, h in histories])
    if log if log is not None else bool(np.all(values[np.isfinite(values)] > 0)):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PowerFormatter())
        ax.yaxis.set_minor_formatter(PowerFormatter(labelOnlyBase=False))
    ax.set_xlabel("iteration")
    p = view.params
    loss = LOSS_NAMES.get(str(p.get("loss", view.attrs.get("loss"))), "?")
    ax.set_ylabel(f"objective ({loss} loss + penalties)")
    ax.grid(color="#ececec", lw=0.6)
    if len(histories) <= 12:
        ax.legend(loc="upper right", ncols=1 if len(histories) <= 6 else 2)
    n_runs = len(view.attrs.get("runs") or histories)
    n_iter = view.attrs.get("n_iter", len(histories[0][1]))
    state = "converged" if view.attrs.get("converged") else "stopped at max_iter"
    ax.set_title(
        title
        or f"Convergence: k = {view.k}, {p.get('solver', view.attrs.get('solver', '?'))} / "
        f"{loss}, {n_runs} run{'s' * (n_runs != 1)}; kept run {best}: {n_iter} iterations, "
        f"{state}",
        loc="left",
        fontsize=clamp(11 - len(str(n_runs)) * 0.3, 8, 10),
    )
    if not complete:
        ax.text(
            0.01,
            0.02,
            "only the kept run's history is stored",
            transform=ax.transAxes,
            fontsize=7,
            color="#707070",
        )
    return fig
