"""``scalenmf plot`` and ``scalenmf report``: figures and the HTML report of a result."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from scalenmf.cli._common import user_errors

#: Plot kinds, listed here so that ``--help`` works without importing matplotlib.
PLOT_KINDS = (
    "basis",
    "coef",
    "consensus",
    "rank",
    "convergence",
    "signatures",
    "exposures",
    "scatter",
)


def _options(kind: str, **given: Any) -> dict[str, Any]:
    """The CLI options a plot kind takes (others are ignored for that kind)."""
    takes = {
        "basis": ("n_top",),
        "coef": ("max_samples", "clusters", "seed"),
        "exposures": ("max_samples", "clusters", "seed"),
        "scatter": ("max_samples", "clusters", "seed"),
        "signatures": ("reference",),
    }.get(kind, ())
    return {name: value for name, value in given.items() if name in takes and value is not None}


@click.command()
@click.argument("source", metavar="RESULT", type=click.Path())
@click.option(
    "--kind",
    required=True,
    metavar="|".join(PLOT_KINDS),
    help="What to draw. rank reads a rank survey DIR, consensus a consensus DIR; "
    "the others a result store (or a consensus DIR's result).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    required=True,
    help="Image file: .png, .pdf or .svg (replaced atomically).",
)
@click.option("--top", "n_top", type=int, default=None, help="basis: features per factor [10].")
@click.option(
    "--max-samples",
    type=int,
    default=None,
    help="coef/exposures/scatter: samples drawn at most (a random sample above).",
)
@click.option(
    "--clusters",
    type=click.Path(),
    default=None,
    help="coef/exposures/scatter: a consensus DIR or clusters.csv to order by.",
)
@click.option(
    "--reference",
    default=None,
    help="signatures: cosmic-v3.4 (default), none, or a labelled CSV/TSV file.",
)
@click.option("--seed", type=int, default=None, help="Seed of the sample of columns.")
@click.option("--dpi", type=float, default=150, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@user_errors
def plot(source: str, kind: str, output: str, dpi: float, overwrite: bool, **given: Any) -> None:
    """Draw one plot of RESULT into an image file.

    \b
    Examples:
      scalenmf plot result.zarr --kind signatures -o signatures.pdf
      scalenmf plot survey/ --kind rank -o rank.png
      scalenmf plot consensus/ --kind consensus -o consensus.svg
    """
    from scalenmf.plot import figure_format
    from scalenmf.plot import plot as draw

    if kind not in PLOT_KINDS:
        raise click.ClickException(
            f"unknown plot kind {kind!r}; choose one of: {', '.join(PLOT_KINDS)}"
        )
    figure_format(output)  # a bad extension fails before anything is read
    if not Path(source).exists():
        raise click.ClickException(f"no such result store or directory: {source!r}")
    from scalenmf.io.atomic import check_output  # io loads zarr: not at start-up

    check_output(output, overwrite)
    t0 = time.perf_counter()
    draw(source, kind, output, dpi=dpi, **_options(kind, **given))
    click.echo(f"wrote {output} ({kind}, {time.perf_counter() - t0:.2f}s)")


@click.command()
@click.argument("source", metavar="RESULT", type=click.Path())
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    default="report.html",
    show_default=True,
    help="The HTML file (self-contained; replaced atomically).",
)
@click.option(
    "--survey",
    "rank",
    type=click.Path(),
    default=None,
    help="A rank survey DIR (scalenmf rank) to include.",
)
@click.option(
    "--rank",
    "old_rank",
    type=click.Path(),
    default=None,
    hidden=True,
    help="Older spelling of --survey (--rank is a number of factors elsewhere).",
)
@click.option(
    "--consensus",
    type=click.Path(),
    default=None,
    help="A consensus DIR (scalenmf consensus) to include; its clusters are used.",
)
@click.option(
    "--reference",
    default="cosmic-v3.4",
    show_default=True,
    help="Signatures to match factors to: cosmic-v3.4, none, or a labelled CSV/TSV.",
)
@click.option(
    "--max-samples",
    type=int,
    default=2000,
    show_default=True,
    help="Samples read for the sample-level views (a random sample above).",
)
@click.option(
    "--discover/--no-discover",
    default=True,
    show_default=True,
    help="Include a consensus or rank DIR that contains RESULT.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@user_errors
def report(
    source: str,
    output: str,
    overwrite: bool,
    rank: str | None,
    consensus: str | None,
    reference: str,
    max_samples: int,
    discover: bool,
    progress: bool | None,
    old_rank: str | None,
) -> None:
    """Write a self-contained HTML report of RESULT (parameters, convergence, factors, top
    features, reference matches, clusters, and the rank survey / consensus when given).

    \b
    Examples:
      scalenmf report result.zarr -o report.html
      scalenmf report result.zarr -o report.html --survey survey/ --consensus consensus/
    """
    from scalenmf.reporting import check_html_path
    from scalenmf.reporting import report as write_report

    if old_rank is not None:
        if rank is not None:
            raise click.UsageError("give --survey, not also --rank")
        rank = old_rank
    check_html_path(output)
    for what, path in (
        ("result store", source),
        ("rank survey directory", rank),
        ("consensus directory", consensus),
    ):
        if path is not None and not Path(path).exists():
            raise click.ClickException(f"no such {what}: {path!r}")
    from scalenmf.io.atomic import check_output  # io loads zarr: not at start-up

    check_output(output, overwrite)
    t0 = time.perf_counter()
    path = write_report(
        source,
        output,
        rank=rank,
        consensus=consensus,
        reference=reference,
        max_samples=max_samples,
        discover=discover,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    size = Path(path).stat().st_size / 1024
    click.echo(f"wrote {path} ({size:,.0f} kB, {time.perf_counter() - t0:.2f}s)")
