"""``scalenmf rank``, ``consensus``, ``match`` and ``interpret``: thin commands over the API."""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from scalenmf.cli._common import (
    PROGRESS_HELP,
    InputPath,
    backend_options,
    input_source,
    threads_option,
    user_errors,
)
from scalenmf.cli.cluster import scheduler_options


def _fit_options(func: Any) -> Any:
    """The options shared by ``rank`` and ``consensus`` (model, stopping, executor)."""
    options: list[Callable[[Any], Any]] = [
        click.option(
            "--solver",
            type=click.Choice(["als", "hals", "mu"]),
            default=None,
            help="Default: als (Frobenius), mu (KL).",
        ),
        click.option(
            "--loss",
            type=click.Choice(["frobenius", "kl"]),
            default="frobenius",
            show_default=True,
        ),
        click.option("--l1-w", type=float, default=0.0, show_default=True),
        click.option("--l1-h", type=float, default=0.0, show_default=True),
        click.option("--l2-w", type=float, default=0.0, show_default=True),
        click.option("--l2-h", type=float, default=0.0, show_default=True),
        click.option("--max-iter", type=int, default=200, show_default=True),
        click.option("--tol", type=float, default=1e-4, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--mask",
            default=None,
            help="Missing entries: a matrix file of X's shape (non-zero = missing), or "
            "'nan' (NaN in INPUT are missing).",
        ),
        click.option("--memory-limit", default=None, help="Memory budget, e.g. 2GB."),
        click.option("--block-cols", type=int, default=None, help="Columns per block."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None),
        click.option(
            "--init",
            type=click.Choice(["random", "nndsvda", "nndsvd"]),
            default="random",
            show_default=True,
            help="Start of every run: random (each run its own seed). NNDSVD is one "
            "deterministic start, so every run would be the same: refused here.",
        ),
        click.option("--transpose", is_flag=True, help="INPUT is samples × features."),
        threads_option,
        click.option("--overwrite", is_flag=True, help="Replace the output directory."),
        click.option(
            "--progress/--no-progress", default=True, show_default=True, help=PROGRESS_HELP
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return backend_options(func)


def _check_output(output: str, overwrite: bool) -> None:
    out = Path(output)
    if out.exists() and not overwrite:
        raise click.ClickException(
            f"output {output!r} already exists (use --overwrite to replace it)"
        )
    if not out.parent.exists():
        raise click.ClickException(f"output directory {str(out.parent)!r} does not exist")


@contextlib.contextmanager
def _opened(input_path: str, transpose: bool, output: str) -> Iterator[Any]:
    """INPUT as a source (with --transpose, read the other way round; an on-disk store is
    transposed into a working directory beside the output, removed at the end)."""
    workdir = None
    if transpose:
        workdir = Path(tempfile.mkdtemp(prefix=".scalenmf-", dir=Path(output).absolute().parent))
    try:
        yield input_source(input_path, transpose, workdir)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _check_init(init: str, what: str) -> None:
    if init != "random":
        raise click.BadParameter(
            f"{init} is one deterministic start: every run of {what} would be the same fit; "
            "use --init random",
            param_hint="--init",
        )


def _run(call: Any) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    for w in caught:
        if issubclass(w.category, (UserWarning, RuntimeWarning)):
            click.echo(f"warning: {w.message}", err=True)
    return out


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return format(float(value), spec)


def _common(opts: dict[str, Any]) -> dict[str, Any]:
    # the launcher options were checked and connected by @scheduler_options
    return opts


@click.command()
@click.argument("input_path", metavar="INPUT", type=InputPath())
@click.option("--ks", default="2-10", show_default=True, help="Ranks: '2-10', '2,4,6'.")
@click.option("--n-runs", type=int, default=20, show_default=True, help="Restarts per rank.")
@click.option("-o", "--output", type=click.Path(), required=True, help="Output directory.")
@click.option(
    "--cv-reps",
    type=int,
    default=3,
    show_default=True,
    help="Held-out replicates per rank (0: no cross-validation).",
)
@click.option(
    "--cv-fraction",
    type=float,
    default=0.05,
    show_default=True,
    help="Share of entries held out per replicate.",
)
@click.option(
    "--null/--no-null",
    default=True,
    show_default=True,
    help="Also survey a column-permuted copy of X.",
)
@click.option(
    "--consensus-samples",
    type=int,
    default=2000,
    show_default=True,
    help="Samples used for each rank's consensus matrix.",
)
@_fit_options
@user_errors
@scheduler_options
def rank(
    input_path: str,
    ks: str,
    n_runs: int,
    output: str,
    overwrite: bool,
    progress: bool,
    init: str,
    transpose: bool,
    **opts: Any,
) -> None:
    """Survey ranks KS on INPUT: errors, consensus, stability, held-out error; suggest k.

    Writes DIR/summary.csv, null_summary.csv, suggestion.json, runs.csv (and more).
    """
    from scalenmf.api.selection import rank_survey

    _check_init(init, "a rank survey")
    _check_output(output, overwrite)
    opts = _common(opts)
    start = time.perf_counter()
    with _opened(input_path, transpose, output) as source:
        survey = _run(lambda: rank_survey(source, ks, n_runs, progress=progress, **opts))
    survey.save(output, overwrite=overwrite)
    wall = time.perf_counter() - start
    from scalenmf.io.selection_store import SUMMARY_COLUMNS

    cols = SUMMARY_COLUMNS
    click.echo("  ".join(f"{c:>11}" for c in cols))
    for row in survey.summary:
        click.echo("  ".join(f"{_fmt(row[c]):>11}" for c in cols))
    first = survey.summary[0]
    if first.get("subsampled"):
        click.echo(
            f"(consensus measures of every rank on a random subsample of "
            f"{first['consensus_samples']} of {source.shape[1]} samples)"
        )
    sug = survey.suggestion
    click.echo(f"suggested k = {sug['k']}: {sug['reason']}")
    click.echo(f"{len(survey.runs)} fits in {wall:.2f}s → {output}")


@click.command(name="consensus")
@click.argument("input_path", metavar="INPUT", type=InputPath())
@click.option("-k", "--rank", "k", type=int, required=True, help="Number of factors.")
@click.option("--n-runs", type=int, default=30, show_default=True)
@click.option("-o", "--output", type=click.Path(), required=True, help="Output directory.")
@click.option(
    "--max-samples",
    type=int,
    default=10_000,
    show_default=True,
    help="Above this many samples the consensus matrix uses a subsample.",
)
@click.option(
    "--density-threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="Outlier filter of the factor-level consensus.",
)
@_fit_options
@user_errors
@scheduler_options
def consensus_cmd(
    input_path: str,
    k: int,
    n_runs: int,
    output: str,
    overwrite: bool,
    progress: bool,
    init: str,
    transpose: bool,
    **opts: Any,
) -> None:
    """Consensus clustering of N_RUNS fits at rank K; factor-level consensus; refit.

    Writes DIR/clusters.csv, consensus.zarr, result.zarr, summary.json.
    """
    from scalenmf.api.selection import consensus

    _check_init(init, "consensus clustering")
    _check_output(output, overwrite)
    opts = _common(opts)
    start = time.perf_counter()
    with _opened(input_path, transpose, output) as source:
        res = _run(lambda: consensus(source, k, n_runs, progress=progress, **opts))
    res.save(output, overwrite=overwrite)
    wall = time.perf_counter() - start
    s = res.summary()
    sub = (
        f"  (consensus matrix on a random subsample of {s['consensus_samples']} of "
        f"{s['n_total']} samples)"
        if res.subsampled
        else ""
    )
    click.echo(
        f"k={k}  runs={n_runs}  cophenetic={_fmt(s['cophenetic'])}  "
        f"dispersion={_fmt(s['dispersion'])}  silhouette={_fmt(s['silhouette'])}  "
        f"stability={_fmt(s['stability'])}{sub}"
    )
    sizes = ", ".join(f"{c}: {n}" for c, n in s["cluster_sizes"].items())
    click.echo(
        f"cluster sizes {sizes}; relative error of the consensus fit "
        f"{res.result.relative_error:.5g}; {wall:.2f}s → {output}"
    )


@click.command()
@click.argument("result_path", metavar="RESULT.zarr", type=InputPath("result store"))
@click.option(
    "--reference",
    default="cosmic-v3.4",
    show_default=True,
    help="'cosmic-v3.4' (bundled SBS96) or a CSV/TSV file: channels × signatures.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    default=None,
    help="CSV to write (default: RESULT_matches.csv beside the store).",
)
@click.option("--overwrite", is_flag=True, help="Replace the CSV if it exists.")
@user_errors
def match(result_path: str, reference: str, output: str | None, overwrite: bool) -> None:
    """Name every factor of RESULT.zarr by its best reference signature (cosine)."""
    from scalenmf.interpret import f_name
    from scalenmf.interpret import match as match_api
    from scalenmf.io.atomic import check_output
    from scalenmf.io.tables import write_csv
    from scalenmf.results.nmf import load

    target = Path(output) if output else _beside(result_path, "_matches.csv")
    check_output(target, overwrite)
    res = load(result_path)
    matches = match_api(res, reference)
    rows = [{"factor": f_name(m.factor), "match": m.match, "cosine": m.cosine} for m in matches]
    write_csv(target, rows, ["factor", "match", "cosine"])
    click.echo(f"{'factor':>6}  {'match':<16} {'cosine':>7}")
    for m in matches:
        click.echo(f"{f_name(m.factor):>6}  {m.match or '–':<16} {m.cosine:>7.4f}")
    click.echo(f"→ {target}")


def _beside(store: str, suffix: str) -> Path:
    p = Path(store.rstrip("/"))
    stem = p.name[:-5] if p.name.endswith(".zarr") else p.name
    return p.with_name(stem + suffix)


@click.command()
@click.argument("result_path", metavar="RESULT.zarr", type=InputPath("result store"))
@click.option("-o", "--output", type=click.Path(), required=True, help="Output directory.")
@click.option("--top", type=int, default=10, show_default=True, help="Top features per factor.")
@click.option("--overwrite", is_flag=True)
@user_errors
def interpret(result_path: str, output: str, top: int, overwrite: bool) -> None:
    """Clusters, top features, Kim & Park scores and sparseness of RESULT.zarr.

    Writes DIR/clusters.csv, top_features.csv, feature_scores.csv, sparseness.csv.
    """
    from scalenmf.interpret import write_interpretation
    from scalenmf.results.nmf import load

    _check_output(output, overwrite)
    from scalenmf.io.atomic import check_output

    check_output(output, overwrite=True)  # writable (existence is _check_output's rule)
    res = load(result_path)
    summary = write_interpretation(res, output, top=top, overwrite=overwrite)
    click.echo(
        f"k={res.k}: cluster sizes {summary['cluster_sizes']}; mean sparseness of factors "
        f"{_fmt(summary['sparseness_factors'], '.3f')}, of samples "
        f"{_fmt(summary['sparseness_samples'], '.3f')}; "
        f"{summary['n_specific']} specific features (Kim & Park) → {output}"
    )


COMMANDS = (rank, consensus_cmd, match, interpret)
