"""The ``scalenmf`` command line: thin click commands over the Python API."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import click

from scalenmf._version import __version__
from scalenmf.cli._common import (
    PROGRESS_HELP,
    InputPath,
    backend_options,
    input_source,
    text_layout_options,
    threads_option,
    user_errors,
)
from scalenmf.cli.cluster import (
    CLUSTER_OPTIONS,
    cluster_kwargs,
    cluster_options,
    scratch_for,
    scratch_option,
)

log = logging.getLogger("scalenmf")

#: dask reads its config from the environment when first imported.
DASK_LOG_ENV = "DASK_LOGGING__DISTRIBUTED"


class _Group(click.Group):
    """The command group; Ctrl-C ends any command with one line and exit status 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Outputs are published atomically: an interrupted write left the old one.
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(130) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalenmf")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Out-of-core, Dask-parallel non-negative matrix factorization (X ≈ W·H).

    X is features × samples (genes or the 96 mutation channels × samples or cells).
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # distributed logs connection churn at INFO (with tracebacks); show it only with -vv.
    # It sets its loggers' levels from dask's config when first imported, so say it there:
    # through the environment when dask is not imported yet (most commands never need
    # it, and importing it costs a second of start-up), else in its live config.
    dask_level = "warning" if verbose < 2 else "debug"
    if "dask" in sys.modules:
        sys.modules["dask"].config.set({"logging.distributed": dask_level})
        return
    # Only for this command (and the processes it starts): restored when it ends, so an
    # in-process caller's later subprocesses do not inherit it.
    previous = os.environ.get(DASK_LOG_ENV)
    os.environ[DASK_LOG_ENV] = dask_level

    def restore() -> None:
        if previous is None:
            os.environ.pop(DASK_LOG_ENV, None)
        else:
            os.environ[DASK_LOG_ENV] = previous

    click.get_current_context().call_on_close(restore)
    logging.getLogger("distributed").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


@main.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-k", "--rank", "k", type=int, required=True, help="Number of factors.")
@click.option(
    "-o", "--output", required=True, help="Result store (OUT.zarr, or a URL such as s3://…)."
)
@click.option(
    "--solver",
    type=click.Choice(["als", "hals", "mu", "online"]),
    default=None,
    help="Default: als (Frobenius), mu (KL); online: mini-batches (--max-iter counts epochs).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="--solver online: columns per batch.",
)
@click.option(
    "--forget-factor",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="--solver online: share of the statistics one epoch keeps (default: a schedule, "
    "forgetting in the first epoch only).",
)
@click.option(
    "--loss", type=click.Choice(["frobenius", "kl"]), default="frobenius", show_default=True
)
@click.option("--l1-w", type=float, default=0.0, show_default=True, help="L1 penalty on W.")
@click.option("--l1-h", type=float, default=0.0, show_default=True, help="L1 penalty on H.")
@click.option("--l2-w", type=float, default=0.0, show_default=True, help="L2 penalty on W.")
@click.option("--l2-h", type=float, default=0.0, show_default=True, help="L2 penalty on H.")
@click.option(
    "--init",
    type=click.Choice(["nndsvda", "nndsvd", "random"]),
    default="nndsvda",
    show_default=True,
)
@click.option("--max-iter", type=int, default=200, show_default=True)
@click.option("--tol", type=float, default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--n-runs", type=int, default=1, show_default=True, help="Restarts; the best is kept."
)
@cluster_options
@scratch_option
@threads_option
@click.option("--memory-limit", default=None, help="Memory budget, e.g. 2GB.")
@click.option("--transpose", is_flag=True, help="INPUT is samples × features.")
@click.option("--block-cols", type=int, default=None, help="Columns per block (default: planned).")
@click.option("--nnls", type=click.Choice(["cd", "bpp"]), default="bpp", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None)
@click.option(
    "--mask", default=None, help="Missing entries: a matrix file (non-zero = missing) or 'nan'."
)
@backend_options
@click.option(
    "--checkpoint",
    "checkpoint_path",
    default=None,
    help="Checkpoint location (default: OUT.checkpoint beside the output).",
)
@click.option("--checkpoint-every", type=int, default=None, help="Checkpoint every N iterations.")
@click.option(
    "--checkpoint-seconds",
    type=float,
    default=600.0,
    show_default=True,
    help="Checkpoint when this many seconds passed since the last one.",
)
@click.option("--no-checkpoint", is_flag=True, help="Write no checkpoints.")
@click.option(
    "--resume", is_flag=True, help="Continue from the newest checkpoint (same INPUT and options)."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@text_layout_options
@click.option(
    "--anndata-out",
    default=None,
    help="Also write the result as AnnData (cells × genes: obsm X_nmf, varm nmf_W, uns nmf) "
    "to this .h5ad or .zarr.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help=PROGRESS_HELP)
@user_errors
def fit(
    input_path: str,
    k: int,
    output: str,
    transpose: bool,
    overwrite: bool,
    progress: bool,
    checkpoint_path: str | None,
    checkpoint_every: int | None,
    checkpoint_seconds: float | None,
    no_checkpoint: bool,
    resume: bool,
    has_header: bool | None,
    has_row_labels: bool | None,
    anndata_out: str | None,
    **opts: Any,
) -> None:
    """Factorize INPUT (Zarr store, CSV/TSV, .mtx, .h5ad, .npy, or a Zarr URL) into OUT.zarr.

    Long fits checkpoint beside OUT (every 10 minutes by default); after a crash of this
    process or of the scheduler, the same command with --resume continues and ends with
    the result the uninterrupted fit would have given.
    """
    from scalenmf import nmf
    from scalenmf.io import storage
    from scalenmf.io.checkpoint import remove_checkpoints
    from scalenmf.io.lock import acquire as acquire_output
    from scalenmf.io.lock import release as release_output

    cluster = cluster_kwargs(*(opts.pop(name) for name in CLUSTER_OPTIONS))
    cluster["scratch"] = scratch_for(opts.pop("scratch"), output, cluster)
    if not storage.exists(input_path):
        raise click.ClickException(f"input {input_path!r} does not exist")
    if resume and not overwrite and _finished(output, checkpoint_path, no_checkpoint):
        click.echo(f"{output} is complete: the fit finished; nothing to resume")
        return
    if storage.exists(output) and not overwrite:
        raise click.ClickException(
            f"output {output!r} already exists (use --overwrite to replace it)"
        )
    if not storage.parent_exists(output):
        raise click.ClickException(f"the directory of output {output!r} does not exist")
    if anndata_out is not None:
        from scalenmf.cli.anndata_out import check_anndata_out

        check_anndata_out(anndata_out, overwrite, output)
    if no_checkpoint and (resume or checkpoint_every):
        raise click.UsageError("--no-checkpoint contradicts --resume / --checkpoint-every")
    ckpt_kwargs: dict[str, Any] = {}
    if not no_checkpoint:
        ckpt_kwargs = {
            "checkpoint": checkpoint_path or f"{str(output).rstrip('/')}.checkpoint",
            "checkpoint_every": checkpoint_every,
            "checkpoint_seconds": checkpoint_seconds,
            "resume": resume,
        }
    # Held for the whole fit (checkpoints included), and the first write: an unwritable
    # directory is found here, before any work.
    lock = acquire_output(output)
    start = time.perf_counter()
    local_out = not storage.is_url(storage.local_path(output))
    workdir = None
    if transpose:
        base = Path(storage.local_path(output)).parent if local_out else None
        workdir = Path(tempfile.mkdtemp(prefix=".scalenmf-", dir=base))
    try:
        source = input_source(
            input_path,
            transpose,
            workdir,
            has_header=has_header,
            has_row_labels=has_row_labels,
            missing=opts.get("mask") is not None,  # NaN cells of a CSV are then missing
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = nmf(source, k, progress=progress, **cluster, **ckpt_kwargs, **opts)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        result.save(output, overwrite=overwrite)
        if anndata_out is not None:
            from scalenmf.cli.anndata_out import write_anndata_out

            write_anndata_out(result, anndata_out)
        if ckpt_kwargs:
            # The result is published: its checkpoints have served their purpose.
            remove_checkpoints(ckpt_kwargs["checkpoint"])
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        release_output(lock)
    wall = time.perf_counter() - start
    m, n = result.W.shape[0], result.H.shape[1]
    resumed = result.info.get("resumed_from_iteration")
    click.echo(
        f"k={result.k}  X {m}×{n}  solver={result.params['solver']}  loss={result.params['loss']}  "
        f"iterations={result.n_iter}{'' if result.converged else ' (max_iter reached)'}"
        f"{f' (resumed after {resumed})' if resumed else ''}  "
        f"relative error={result.relative_error:.5g}  wall time={wall:.2f}s  → {output}"
    )


def _finished(output: str, checkpoint_path: str | None, no_checkpoint: bool) -> bool:
    """True if OUT exists and no checkpoint is left: a ``--resume`` has nothing to do."""
    from scalenmf.io import storage
    from scalenmf.io.checkpoint import latest_checkpoint

    if no_checkpoint or not storage.exists(output):
        return False
    location = checkpoint_path or f"{str(output).rstrip('/')}.checkpoint"
    return latest_checkpoint(location) is None


@main.command()
@click.argument("src", type=InputPath())
@click.argument("dst", type=click.Path())
@click.option("--block-cols", type=int, default=None, help="Columns per chunk (default: planned).")
@click.option("--memory-limit", default=None, help="Memory budget while converting, e.g. 1GB.")
@click.option("--transpose", is_flag=True, help="SRC is samples × features.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None)
@click.option(
    "--sparse/--dense", "sparse", default=None, help="Force the stored kind (default: keep)."
)
@text_layout_options
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars with the read rate (default: when stderr is a terminal).",
)
@click.option("--overwrite", is_flag=True)
@cluster_options
@user_errors
def convert(
    src: str,
    dst: str,
    block_cols: int | None,
    memory_limit: str | None,
    transpose: bool,
    dtype: str | None,
    sparse: bool | None,
    overwrite: bool,
    has_header: bool | None,
    has_row_labels: bool | None,
    progress: bool | None,
    **launch: Any,
) -> None:
    """Stream SRC (CSV/TSV, .mtx, .h5ad, .npy, Zarr) into a scalenmf Zarr matrix store DST.

    With a Dask cluster (--scheduler, --scheduler-file or --workers), the workers parse a
    Matrix Market file sorted by column, several chunks at once."""
    from scalenmf import convert as convert_api
    from scalenmf.cli.cluster import dask_client
    from scalenmf.io import open_matrix
    from scalenmf.io.atomic import check_output

    check_output(dst, overwrite)
    cluster = cluster_kwargs(*(launch.pop(name) for name in CLUSTER_OPTIONS))
    t0 = time.perf_counter()
    with dask_client(cluster) as client:
        convert_api(
            src,
            dst,
            block_cols=block_cols,
            memory_limit=memory_limit,
            transpose=transpose,
            dtype=dtype,
            sparse=sparse,
            overwrite=overwrite,
            progress=sys.stderr.isatty() if progress is None else progress,
            has_header=has_header,
            has_row_labels=has_row_labels,
            scheduler=client,
        )
    out = open_matrix(dst)
    kind = "sparse" if out.is_sparse else "dense"
    click.echo(
        f"wrote {dst}: {out.shape[0]}×{out.shape[1]} {kind} in {time.perf_counter() - t0:.2f}s"
    )


@main.command()
@click.argument("store", type=InputPath("store"))
@user_errors
def info(store: str) -> None:
    """Describe an input matrix or a result store."""
    from scalenmf.io.info import describe, format_description

    click.echo(format_description(describe(store)))


@main.command()
@click.option("-o", "--output", type=click.Path(), default="scalenmf-demo.zarr", show_default=True)
@click.option("-k", "--rank", "k", type=int, default=6, show_default=True)
@click.option("--samples", type=int, default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite/--no-overwrite", default=True, show_default=True)
@click.option(
    "--report",
    default="auto",
    show_default=True,
    help="HTML report to write (auto: OUTPUT with .html; none: no report).",
)
@user_errors
def demo(output: str, k: int, samples: int, seed: int, overwrite: bool, report: str) -> None:
    """Factorize a bundled mutation catalogue simulated from COSMIC signatures."""
    from scalenmf.demo import run_demo

    run_demo(
        output,
        k=k,
        n_samples=samples,
        seed=seed,
        overwrite=overwrite,
        echo=click.echo,
        report=None if report == "none" else report,
    )


def _register_optional() -> None:
    from scalenmf.cli.plot import plot, report

    main.add_command(plot)
    main.add_command(report)
    from scalenmf.cli.selection import COMMANDS

    for command in COMMANDS:
        main.add_command(command)
    from scalenmf.cli.plan import plan

    main.add_command(plan)
    from scalenmf.cli.prepare import prepare

    main.add_command(prepare)
    from scalenmf.cli.update import update_command

    main.add_command(update_command)
    from scalenmf.cli.linked import register as register_linked

    register_linked(main)
    try:
        from scalenmf.cli.dnmf import dnmf
    except ImportError:  # the DNMF commands arrive with their module
        return
    main.add_command(dnmf)


_register_optional()

if __name__ == "__main__":  # pragma: no cover
    main()
