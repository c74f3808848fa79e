"""``scalenmf update``: refine a fitted result with new samples (incremental refit)."""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import click

from scalenmf.cli._common import (
    PROGRESS_HELP,
    InputPath,
    backend_options,
    check_json_path,
    emit_json,
    input_source,
    json_option,
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


@click.command(name="update")
@click.argument("result_path", metavar="RESULT", type=InputPath("result"))
@click.argument("new_input", metavar="NEW_INPUT", type=InputPath())
@click.option(
    "-o", "--output", required=True, help="Result store of the update (OUT.zarr, or a URL)."
)
@click.option(
    "-k",
    "--rank",
    "k",
    type=int,
    default=None,
    help="Rank, if given: must be RESULT's (an update keeps its factors).",
)
@click.option("--freeze-w", is_flag=True, help="Keep RESULT's W; solve only H of the new samples.")
@click.option(
    "--forget-factor",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Weight of RESULT's samples (1: as in the fit; 0: refit W on the new samples alone).",
)
@click.option(
    "--solver",
    type=click.Choice(["als", "hals", "mu"]),
    default=None,
    help="Default: RESULT's (online becomes als; KL is mu).",
)
@click.option("--nnls", type=click.Choice(["cd", "bpp"]), default=None, help="Default: RESULT's.")
@click.option("--max-iter", type=int, default=200, show_default=True)
@click.option("--tol", type=float, default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@cluster_options
@scratch_option
@threads_option
@click.option("--memory-limit", default=None, help="Memory budget, e.g. 2GB.")
@click.option("--transpose", is_flag=True, help="NEW_INPUT is samples × features.")
@click.option("--block-cols", type=int, default=None, help="Columns per block (default: planned).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None)
@text_layout_options
@backend_options
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@json_option("the update report (how far W moved)")
@click.option("--progress/--no-progress", default=True, show_default=True, help=PROGRESS_HELP)
@user_errors
def update_command(
    result_path: str,
    new_input: str,
    output: str,
    transpose: bool,
    overwrite: bool,
    json_path: str | None,
    has_header: bool | None,
    has_row_labels: bool | None,
    **opts: Any,
) -> None:
    """Update RESULT (a store of `scalenmf fit`) with the samples of NEW_INPUT into OUT.zarr.

    W starts from RESULT's and is refined on the new samples, RESULT's own samples kept
    through their statistics (or, with --freeze-w, only the new samples' H is solved, as
    `scalenmf project` does). OUT holds the updated W and the new samples' H. Reported:
    per factor the cosine of the old and the new W (factors paired by the Hungarian
    assignment) and the explained variance of the new samples before and after.
    """
    from scalenmf import update
    from scalenmf.io import storage
    from scalenmf.io.lock import acquire as acquire_output
    from scalenmf.io.lock import release as release_output

    cluster = cluster_kwargs(*(opts.pop(name) for name in CLUSTER_OPTIONS))
    cluster["scratch"] = scratch_for(opts.pop("scratch"), output, cluster)
    if storage.exists(output) and not overwrite:
        raise click.ClickException(
            f"output {output!r} already exists (use --overwrite to replace it)"
        )
    if not storage.parent_exists(output):
        raise click.ClickException(f"the directory of output {output!r} does not exist")
    check_json_path(json_path)
    lock = acquire_output(output)
    start = time.perf_counter()
    local_out = not storage.is_url(storage.local_path(output))
    workdir = None
    if transpose:
        base = Path(storage.local_path(output)).parent if local_out else None
        workdir = Path(tempfile.mkdtemp(prefix=".scalenmf-", dir=base))
    try:
        text = {"has_header": has_header, "has_row_labels": has_row_labels}
        source = input_source(new_input, transpose, workdir, **text)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = update(result_path, source, **cluster, **opts)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        result.save(output, overwrite=overwrite)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        release_output(lock)
    report = result.info["update"]
    wall = time.perf_counter() - start
    if json_path is not None:
        emit_json(json_path, {**report, "output": output, "k": result.k})
        if json_path == "-":
            return
    m, n = result.W.shape[0], result.H.shape[1]
    before = report["explained_variance_before"]
    after = report["explained_variance_after"]
    click.echo(
        f"k={result.k}  new samples {m}×{n}  "
        f"{'W frozen' if report['freeze_w'] else f'iterations={result.n_iter}'}  "
        f"W moved: cosine min {report['min_cosine']:.4f} mean {report['mean_cosine']:.4f}  "
        f"explained variance {before:.4f} → {after:.4f} ({after - before:+.4f})  "
        f"wall time={wall:.2f}s  → {output}"
    )
