"""``scalenmf report``: one self-contained HTML file describing a result.

Sections: run parameters, convergence, factors, top features, matches to a reference,
clusters (with the consensus when given) and the rank survey when given. Images are PNGs
embedded as base64, the CSS is inline and there is no script, so the file can be mailed or
attached to a notebook. For large n the sample-level views read only a sample of H's
columns, and the report says so.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scalenmf._version import __version__
from scalenmf.io.errors import user_stacklevel
from scalenmf.io.selection_store import SUMMARY_COLUMNS
from scalenmf.plot import (
    basis_heatmap,
    coef_heatmap,
    consensus_heatmap,
    convergence_plot,
    exposures_plot,
    rank_survey_panel,
    sample_scatter,
    signature_plot,
)
from scalenmf.plot._annot import (
    FactorMatch,
    can_match,
    factor_names,
    load_reference,
    match_factors,
    resolve_clusters,
)
from scalenmf.plot._data import (
    DEFAULT_MAX_SAMPLES,
    RankSurvey,
    ResultView,
    SampleSet,
    find_companions,
    load_consensus,
    load_rank_survey,
    open_result,
)
from scalenmf.plot._style import check_output_file, natural_order, write_atomic
from scalenmf.plot.heatmaps import consensus_clusters, top_features
from scalenmf.plot.samples import DEFAULT_BAR_SAMPLES
from scalenmf.plot.sbs import is_sbs96
from scalenmf.reporting._html import Section, esc, figure_block, fmt, page, table

log = logging.getLogger("scalenmf.report")

#: Top features listed per factor.
N_TOP_FEATURES = 10

#: Cosine at or above which a reference match is called good.
GOOD_COSINE = 0.9

#: Section ids, in page order (the rank survey and consensus appear when given).
SECTION_IDS = (
    "parameters",
    "convergence",
    "factors",
    "top-features",
    "matches",
    "clusters",
    "consensus",
    "rank-survey",
)


def check_html_path(output: str | os.PathLike[str]) -> None:
    if Path(output).suffix.lower() not in (".html", ".htm"):
        raise ValueError(
            f"the report is an HTML file: give a name ending in .html, not {str(output)!r}"
        )


def report(
    result: Any,
    output: str | os.PathLike[str],
    *,
    rank: Any = None,
    consensus: Any = None,
    reference: Any = "cosmic",
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    discover: bool = True,
    title: str | None = None,
    progress: bool | None = None,
) -> str:
    """Write the HTML report of a result, atomically.

    Parameters
    ----------
    result : NMFResult, path of a result store, or consensus directory
    output : path-like
        The ``.html`` file; replaced only once the new one is complete.
    rank : path of a rank survey directory, optional
        Adds the rank survey section.
    consensus : path of a consensus directory, optional
        Adds the consensus heatmap; its clusters order the sample-level plots.
    reference : "cosmic", path, Reference or None
        Signatures the factors are matched to (cosine, Hungarian assignment); the default,
        COSMIC v3.4 SBS96, applies when the features are the 96 SBS channels.
    max_samples : int or None, default 2000
        Samples read for the sample-level views; above it a random sample (said so).
    discover : bool, default True
        Also pick up a consensus or rank survey directory that contains the result
        (``DIR/result.zarr`` next to ``DIR/consensus.zarr`` or ``DIR/summary.csv``).
    progress : bool, optional
        A progress bar on stderr (default: when stderr is a terminal).

    Returns
    -------
    str
        The path written.

    Examples
    --------
    >>> import scalenmf                                                       # doctest: +SKIP
    >>> scalenmf.report("result.zarr", "report.html", rank="survey/")         # doctest: +SKIP
    """
    check_html_path(output)
    check_output_file(output)  # before the work, not after it
    if discover and isinstance(result, (str, os.PathLike)):
        found_rank, found_consensus = find_companions(result)
        rank = rank if rank is not None else found_rank
        consensus = consensus if consensus is not None else found_consensus
    text = build_report(
        result,
        rank=rank,
        consensus=consensus,
        reference=reference,
        max_samples=max_samples,
        title=title,
        progress=progress,
    )
    path = write_atomic(output, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    log.info("report written to %s (%.0f kB)", path, len(text.encode()) / 1024)
    return path


def _check_companions(view: Any, survey: Any, cons: Any) -> None:
    """Refuse a consensus of another k or other samples; warn for a survey without k.

    A report that put them side by side would describe two different analyses as one.
    """
    import warnings

    if cons is not None:
        k = cons.attrs.get("k")
        if k is not None and int(k) != view.k:
            raise ValueError(
                f"the consensus in {cons.path!r} is for k={int(k)}, but the result has "
                f"k={view.k}; give the consensus of this rank (or --no-discover)"
            )
        n_total = cons.attrs.get("n_total")
        if n_total is not None and int(n_total) != view.n:
            raise ValueError(
                f"the consensus in {cons.path!r} was computed on {int(n_total)} samples, "
                f"but the result has {view.n}: they are not of the same data"
            )
        if cons.n <= view.n:
            ours = set(np.asarray(view.labels_at(np.arange(view.n)), dtype=str).tolist())
            theirs = set(np.asarray(cons.samples, dtype=str).tolist())
            if not theirs <= ours:
                raise ValueError(
                    f"the consensus in {cons.path!r} names samples the result does not "
                    "have: they are not of the same data"
                )
        else:
            raise ValueError(
                f"the consensus in {cons.path!r} has {cons.n} samples, more than the "
                f"result's {view.n}: they are not of the same data"
            )
    if survey is not None:
        ks = {int(k) for k in np.asarray(survey.summary["k"]).tolist()}
        if view.k not in ks:
            warnings.warn(
                f"the rank survey in {survey.path!r} covers k={sorted(ks)}, not the "
                f"result's k={view.k}",
                stacklevel=user_stacklevel(),
            )


def build_report(
    result: Any,
    *,
    rank: Any = None,
    consensus: Any = None,
    reference: Any = "cosmic",
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    title: str | None = None,
    progress: bool | None = None,
) -> str:
    """The report as an HTML string (see ``report``)."""
    view = open_result(result)
    survey = load_rank_survey(rank) if rank is not None else None
    cons = load_consensus(consensus) if consensus is not None else None
    _check_companions(view, survey, cons)
    ref, ref_name = load_reference(reference)
    if ref is not None and not can_match(view, ref):
        if reference not in ("cosmic", "cosmic-v3.4"):
            raise ValueError(
                f"the reference's channels ({ref.channels.shape[0]}) are not among the "
                "result's feature labels; cannot match factors to it"
            )
        ref = None
    matches = match_factors(view, ref) if ref is not None else None
    sample = view.sample(max_samples)
    steps: list[tuple[str, Callable[[], Section | None]]] = [
        ("parameters", lambda: _parameters(view)),
        ("convergence", lambda: _convergence(view)),
        ("factors", lambda: _factors(view, matches)),
        ("top features", lambda: _top_features(view, matches)),
        ("matches", lambda: _matches(view, matches, ref_name)),
        ("clusters", lambda: _clusters(view, sample, cons, matches, max_samples)),
        ("consensus", lambda: _consensus(cons) if cons is not None else None),
        ("rank survey", lambda: _rank(survey) if survey is not None else None),
    ]
    bar = _bar(progress, len(steps))
    sections: list[Section] = []
    for name, make in steps:
        log.info("report: %s", name)
        section = make()
        if section is not None:
            sections.append(section)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    heading = title or f"scalenmf report — {view.name}"
    subtitle = (
        f"k = {view.k} · X {view.m:,} × {view.n:,} · "
        f"{view.params.get('solver', '?')} / {view.params.get('loss', '?')} · "
        f"generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    )
    written_by = view.attrs.get("scalenmf_version", "?")
    footer = f"scalenmf {__version__} · result written by scalenmf {written_by}"
    return page(heading, subtitle, _intro(view, sample, survey), sections, footer)


def _bar(progress: bool | None, total: int) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="report", unit="section", leave=False, file=sys.stderr)


def _intro(view: ResultView, sample: SampleSet, survey: RankSurvey | None) -> str:
    a = view.attrs
    cards = [
        ("rank k", fmt(view.k)),
        ("features × samples", f"{view.m:,} × {view.n:,}"),
        ("relative error", fmt(a.get("relative_error"))),
        ("iterations", fmt(a.get("n_iter"))),
        ("converged", fmt(a.get("converged"))),
        ("wall time", f"{(a.get('timings') or {}).get('total_s', float('nan')):.3g} s"),
    ]
    if survey is not None and survey.suggested_k is not None:
        cards.append(("suggested k", fmt(survey.suggested_k)))
    html_cards = "".join(
        f'<div class="card"><span>{esc(t)}</span><b>{esc(v)}</b></div>' for t, v in cards
    )
    out = f'<div class="cards">{html_cards}</div>'
    if sample.sampled:
        out += (
            '<p class="notice" id="sampling-notice"><b>Large result:</b> '
            f"the sample-level views (coefficients, exposures, scatter, cluster sizes) "
            f"summarize {sample.describe()}, read from {sample.chunks_read} of "
            f"{sample.n_chunks} column chunks of H; H was not loaded whole.</p>"
        )
    return out


#: The report's words for parameter values (the API's names are for code).
LOSS_WORDS = {
    "frobenius": "Frobenius (least squares)",
    "kl": "Kullback–Leibler (Poisson counts)",
}
INIT_WORDS = {
    "nndsvda": "NNDSVDa (from an SVD; zeros filled with the mean)",
    "nndsvd": "NNDSVD (from an SVD)",
    "random": "random",
}
#: Where the input came from, by the kind of source that read it.
SOURCE_WORDS = {
    "DenseArraySource": "an array in memory",
    "SparseArraySource": "a sparse matrix in memory",
    "DaskArraySource": "a dask array",
    "ZarrDenseSource": "a Zarr store",
    "ZarrSparseSource": "a Zarr store",
    "H5adSource": "an .h5ad file",
    "MaskedSource": "with missing entries left out",
    "PreparedSource": "prepared (normalised or scaled) as it was read",
    "ChainedSource": "several datasets side by side",
}


def describe_solver(solver: Any, nnls: Any) -> str:
    """``als`` / ``cd`` → "alternating least squares, exact NNLS (coordinate descent …)"."""
    if solver == "als":
        how = (
            "coordinate descent, finished by pivoting"
            if nnls == "cd"
            else "block principal pivoting"
        )
        return f"alternating least squares: exact NNLS for W and H ({how})"
    if solver == "hals":
        return "HALS: a few coordinate sweeps per half-step"
    if solver == "mu":
        return "multiplicative updates"
    return "–" if solver is None else str(solver)


def describe_executor(info: dict[str, Any], params: dict[str, Any]) -> str:
    """ "this machine, 2 threads" or "a Dask cluster of 4 workers"."""
    if info.get("executor") == "dask":
        n = info.get("n_workers") or params.get("workers")
        return f"a Dask cluster of {fmt(n)} workers" if n else "a Dask cluster"
    threads = info.get("threads")
    if info.get("executor") == "local":
        return f"this machine, {fmt(threads)} threads" if threads else "this machine"
    return "–"


def describe_input(source: dict[str, Any]) -> str:
    """The input matrix in words: kind, precision, share of non-zeros, where it was read."""
    kind = "sparse" if source.get("sparse") else "dense"
    density = source.get("density")
    share = f", {100 * float(density):.3g}% non-zero" if density is not None else ""
    where = SOURCE_WORDS.get(str(source.get("source", "")))
    return f"{kind} {source.get('dtype', '')}{share}" + (f", from {where}" if where else "")


def _parameters(view: ResultView) -> Section:
    p = view.params
    a = view.attrs
    info = a.get("info") or {}
    rows: list[tuple[str, Any]] = [
        ("rank k (factors)", view.k),
        ("method", describe_solver(p.get("solver", a.get("solver")), p.get("nnls"))),
        ("loss", LOSS_WORDS.get(str(p.get("loss", a.get("loss"))), p.get("loss"))),
        ("start", INIT_WORDS.get(str(p.get("init")), p.get("init"))),
        (
            "penalties (L1 on W, L1 on H, L2 on W, L2 on H)",
            ", ".join(fmt(p.get(n, 0.0)) for n in ("l1_w", "l1_h", "l2_w", "l2_h")),
        ),
        (
            "iteration limit / tolerance",
            f"{fmt(p.get('max_iter'))} / {fmt(p.get('tol'))}",
        ),
        ("seed", p.get("seed")),
        ("runs (restarts; the best is kept)", p.get("n_runs", len(a.get("runs") or []) or 1)),
        ("ran on", describe_executor(info, p)),
        (
            "column blocks",
            f"{fmt(info.get('n_blocks'))} of up to {fmt(info.get('block_cols'))} columns",
        ),
    ]
    source = info.get("input") or {}
    if source:
        rows.append(("input", describe_input(source)))
    timings = a.get("timings") or {}
    rows.append(
        (
            "time (total, init, loop)",
            ", ".join(
                f"{timings.get(k, float('nan')):.3g} s" for k in ("total_s", "init_s", "loop_s")
            ),
        )
    )
    rows.append(("result", view.path or "in memory"))
    section = Section("parameters", "Run parameters")
    section.add(table(["parameter", "value"], [(k, "–" if v is None else v) for k, v in rows]))
    return section


def _convergence(view: ResultView) -> Section:
    section = Section("convergence", "Convergence")
    a = view.attrs
    try:
        fig = convergence_plot(view)
    except ValueError as exc:
        return section.note(str(exc))
    section.add(
        figure_block(
            fig,
            "Objective after every iteration, one curve per run; the kept run is drawn strongest.",
        )
    )
    runs = a.get("runs") or []
    if runs:
        best = int((a.get("info") or {}).get("best_run", 0) or 0)
        rows = [
            (
                r.get("run", i),
                r.get("objective"),
                r.get("relative_error"),
                r.get("n_iter"),
                r.get("converged"),
                "yes" if r.get("run", i) == best else "",
            )
            for i, r in enumerate(runs)
        ]
        section.add(
            table(
                ["run", "objective", "relative error", "iterations", "converged", "kept"],
                rows,
                numeric=(1, 2, 3),
                row_classes=["kept" if r[5] else "" for r in rows],
            )
        )
    return section


def _factors(view: ResultView, matches: list[FactorMatch] | None) -> Section:
    section = Section("factors", "Factors")
    section.note(
        "The basis W: each factor's heaviest features, each feature drawn relative to the "
        "factor that uses it most."
    )
    section.add(figure_block(basis_heatmap(view), "Basis heatmap (features × factors)."))
    if is_sbs96(view.row_labels, view.m):
        section.add("<h3>Signatures (SBS96)</h3>")
        section.add(
            figure_block(
                signature_plot(view, reference="cosmic" if matches is not None else None),
                "Each factor as a 96-channel mutational signature, titled with its best COSMIC "
                "v3.4 match.",
            )
        )
    return section


def _top_features(view: ResultView, matches: list[FactorMatch] | None) -> Section:
    section = Section("top-features", "Top features")
    section.note(
        f"The {N_TOP_FEATURES} features with the largest share of each factor's weight "
        "(W scaled so that every factor sums to 100%)."
    )
    share = view.W / np.maximum(view.W.sum(axis=0, keepdims=True), 1e-300)
    labels = view.feature_labels()
    names = factor_names(view, matches)
    rows = []
    for f in range(view.k):
        top = np.argsort(-share[:, f], kind="stable")[:N_TOP_FEATURES]
        cells = ", ".join(
            f'<span class="mono">{esc(labels[i])}</span> {100 * share[i, f]:.1f}%' for i in top
        )
        rows.append((names[f], f"{100 * share[top, f].sum():.1f}%", cells))
    section.add(
        table(
            ["factor", "top-10 share", "features (share of the factor)"],
            rows,
            numeric=(1,),
            raw=(2,),
        )
    )
    rows_shown, _ = top_features(view.W, N_TOP_FEATURES)
    section.note(f"{len(rows_shown):,} distinct features appear in the basis heatmap above.")
    return section


def _matches(view: ResultView, matches: list[FactorMatch] | None, ref_name: str) -> Section:
    section = Section("matches", "Matches to a reference")
    if matches is None and not ref_name:
        return section.note("Reference matching was turned off (reference: none).")
    if matches is None:
        return section.note(
            "No reference matching: the features are not the 96 SBS channels of COSMIC. "
            "Give a labelled reference (scalenmf report --reference FILE) to match against."
        )
    section.note(
        f"Cosine similarity of every factor to {ref_name} signatures: the best match of each "
        "factor, and a one-to-one assignment (Hungarian algorithm on cosine)."
    )

    def cos(c: float) -> str:
        cls = "good" if c >= GOOD_COSINE else "weak"
        return f'<span class="{cls}">{c:.3f}</span>'

    rows = [
        (
            str(view.factor_labels[m.factor]),
            m.best,
            cos(m.best_cosine),
            m.assigned,
            cos(m.assigned_cosine),
        )
        for m in matches
    ]
    section.add(
        table(
            ["factor", "best match", "its cosine", "assigned (one-to-one)", "its cosine"],
            rows,
            numeric=(2, 4),
            raw=(2, 4),
        )
    )
    good = sum(m.best_cosine >= GOOD_COSINE for m in matches)
    section.note(f"{good} of {len(matches)} factors match with cosine ≥ {GOOD_COSINE}.")
    return section


def _clusters(
    view: ResultView,
    sample: SampleSet,
    consensus: Any,
    matches: list[FactorMatch] | None,
    max_samples: int | None,
) -> Section:
    section = Section("clusters", "Clusters")
    clusters = consensus if consensus is not None and consensus.clusters else None
    cl = resolve_clusters(view, sample, clusters)
    expo = sample.H * view.W.sum(axis=0)[:, None]
    share = expo / np.maximum(expo.sum(axis=0, keepdims=True), 1e-300)
    names = factor_names(view, matches)
    rows = []
    for c in natural_order([str(x) for x in cl.labels]):
        mask = cl.labels == c
        mean = share[:, mask].mean(axis=1)
        top = np.argsort(-mean)[:3]
        rows.append(
            (
                c,
                int(mask.sum()),
                f"{100 * mask.mean():.1f}%",
                ", ".join(f"{names[f]} {100 * mean[f]:.0f}%" for f in top),
            )
        )
    what = "in the sample" if sample.sampled else ""
    section.note(
        f"Samples are clustered by {cl.source}; {sample.describe()}."
        + (" Sizes are estimated from the sample." if sample.sampled else "")
    )
    section.add(
        table(
            ["cluster", f"samples {what}".strip(), "share", "mean exposure shares (top 3)"],
            rows,
            numeric=(1, 2),
        )
    )
    source = clusters if clusters is not None else None
    section.add(
        figure_block(
            coef_heatmap(view, clusters=source, max_samples=max_samples),
            "Coefficients: each sample's exposure shares, samples ordered by cluster.",
        )
    )
    n_shown = int(sample.index.shape[0])
    n_bars = min(n_shown, DEFAULT_BAR_SAMPLES)
    bars_caption = "Exposures: what each factor accounts for in every sample."
    if n_bars < n_shown:
        # one bar per sample is unreadable beyond a few hundred: say which samples these are
        bars_caption = (
            f"Exposures: what each factor accounts for in a sample, for {n_bars:,} of the "
            f"{n_shown:,} samples of the other views (a random subset of them: more bars "
            "than this would not be readable)."
        )
    section.add(
        figure_block(
            exposures_plot(view, clusters=source, max_samples=n_bars),
            bars_caption,
        )
    )
    if view.k >= 2:
        section.add(
            figure_block(
                sample_scatter(view, clusters=source, max_samples=max_samples),
                "Samples in factor space, coloured by cluster.",
            )
        )
    return section


def _consensus(consensus: Any) -> Section:
    section = Section("consensus", "Consensus clustering")
    a = consensus.attrs
    labels, source = consensus_clusters(consensus)
    facts = [
        ("k", a.get("k")),
        ("runs", a.get("n_runs")),
        ("cophenetic correlation", a.get("cophenetic")),
        ("dispersion", a.get("dispersion")),
        ("samples in the consensus", consensus.n),
        ("clusters", f"{len(set(labels.tolist()))} ({source})"),
    ]
    if a.get("subsampled"):
        facts.append(("subsample", f"{consensus.n:,} of {int(a.get('n_total') or 0):,} samples"))
    section.add(table(["measure", "value"], facts))
    section.add(
        figure_block(
            consensus_heatmap(consensus),
            "Consensus matrix in dendrogram order: how often two samples share a cluster.",
        )
    )
    return section


def _rank(survey: RankSurvey) -> Section:
    section = Section("rank-survey", "Rank survey")
    if survey.suggested_k is not None:
        reason = str((survey.suggestion or {}).get("reason") or "")
        section.add(
            f"<p><b>Suggested k = {survey.suggested_k}</b>"
            + (f": {esc(reason)}" if reason else "")
            + "</p>"
        )
    section.add(
        figure_block(
            rank_survey_panel(survey),
            "Measures against k (blue) and on column-permuted data (grey, the null).",
        )
    )
    columns = [c for c in SUMMARY_COLUMNS if c in survey.summary]
    rows = [
        [int(v) if c == "k" else float(v) for c, v in zip(columns, vals, strict=True)]
        for vals in zip(*(survey.summary[c] for c in columns), strict=True)
    ]
    classes = ["kept" if int(r[0]) == survey.suggested_k else "" for r in rows]
    section.add(table(columns, rows, numeric=tuple(range(1, len(columns))), row_classes=classes))
    return section


__all__ = ["SECTION_IDS", "build_report", "report"]
