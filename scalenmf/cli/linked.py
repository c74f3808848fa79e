"""``scalenmf lnmf``, ``inmf``, ``lnmf-ranks`` and ``project``: thin commands over the API."""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
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
    threads_option,
    user_errors,
    write_text_atomic,
)
from scalenmf.cli.cluster import scheduler_options

# -- shared options ---------------------------------------------------------------------


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError as exc:
        raise click.BadParameter(
            f"expected integers separated by commas (e.g. 2,2); got {text!r}", param_hint=what
        ) from exc
    if not values:
        raise click.BadParameter(f"expected at least one integer; got {text!r}", param_hint=what)
    return values


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",")]


def _check_output(output: str, overwrite: bool) -> None:
    out = Path(output)
    if out.exists() and not overwrite:
        raise click.ClickException(
            f"output {output!r} already exists (use --overwrite to replace it)"
        )
    if not out.parent.exists():
        raise click.ClickException(f"output directory {str(out.parent)!r} does not exist")


def _echo_warnings(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    return out


def fit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every multi-dataset fit takes (as ``scalenmf fit``)."""
    options: list[Callable[[Any], Any]] = [
        click.option(
            "--solver",
            type=click.Choice(["als", "hals", "mu"]),
            default=None,
            help="Default: als (Frobenius), mu (KL).",
        ),
        click.option("--max-iter", type=click.IntRange(min=1), default=200, show_default=True),
        click.option("--tol", type=float, default=1e-4, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--n-runs", type=click.IntRange(min=1), default=1, show_default=True, help="Restarts."
        ),
        click.option("--names", default=None, help="Dataset names, comma-separated."),
        click.option("--memory-limit", default=None, help="Memory budget, e.g. 2GB."),
        click.option("--block-cols", type=click.IntRange(min=1), default=None),
        click.option("--nnls", type=click.Choice(["cd", "bpp"]), default="bpp", show_default=True),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None),
        threads_option,
        click.option("--overwrite", is_flag=True, help="Replace OUT if it exists."),
        click.option(
            "--progress/--no-progress", default=True, show_default=True, help=PROGRESS_HELP
        ),
        click.option(
            "-o", "--output", type=click.Path(), required=True, help="Result store (OUT.zarr)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return backend_options(func)


def _dataset_lines(result: Any) -> str:
    return "\n".join(
        f"  {ds.name}: {ds.n} samples, relative error {ds.relative_error:.5g}"
        for ds in result.datasets
    )


# -- lnmf -------------------------------------------------------------------------------


@click.command(name="lnmf")
@click.argument("inputs", nargs=-1, required=True, type=InputPath())
@click.option("--k-shared", type=click.IntRange(min=0), required=True, help="Rank of W.")
@click.option(
    "--k-unique", required=True, help="Rank of every U_d: one value, or one per dataset (2,2)."
)
@click.option(
    "--loss", type=click.Choice(["frobenius", "kl"]), default="frobenius", show_default=True
)
@click.option("--l1-w", type=float, default=0.0, show_default=True)
@click.option("--l1-h", type=float, default=0.0, show_default=True)
@click.option("--l2-w", type=float, default=0.0, show_default=True)
@click.option("--l2-h", type=float, default=0.0, show_default=True)
@click.option(
    "--init",
    type=click.Choice(["jnmf", "random"]),
    default="jnmf",
    show_default=True,
    help="jnmf: start from joint NMF, its factors sorted into W and U_d.",
)
@click.option(
    "--init-iter",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Iterations of the jNMF start.",
)
@fit_options
@user_errors
@scheduler_options
def lnmf_command(
    inputs: tuple[str, ...],
    k_shared: int,
    k_unique: str,
    output: str,
    names: str | None,
    scheduler: str | None,
    workers: int | None,
    overwrite: bool,
    progress: bool,
    **opts: Any,
) -> None:
    """Linked NMF of datasets A.zarr B.zarr …: A_d ≈ W H_d + U_d V_d (k-unique 0: jNMF)."""
    from scalenmf import lnmf

    _check_output(output, overwrite)
    ku = _int_list(k_unique, "--k-unique")
    start = time.perf_counter()
    result = _echo_warnings(
        lambda: lnmf(
            list(inputs),
            k_shared,
            ku[0] if len(ku) == 1 else ku,
            names=_names(names),
            scheduler=scheduler,
            workers=workers,
            progress=progress,
            **opts,
        )
    )
    result.save(output, overwrite=overwrite)
    click.echo(
        f"lnmf k_shared={result.k_shared} k_unique={','.join(map(str, result.k_unique))}  "
        f"X {result.W.shape[0]}×{sum(ds.n for ds in result.datasets)}  "
        f"iterations={result.n_iter}{'' if result.converged else ' (max_iter reached)'}  "
        f"relative error={result.relative_error:.5g}  "
        f"wall time={time.perf_counter() - start:.2f}s  → {output}"
    )
    click.echo(_dataset_lines(result))


# -- inmf -------------------------------------------------------------------------------


@click.command(name="inmf")
@click.argument("inputs", nargs=-1, required=True, type=InputPath())
@click.option("-k", "--rank", "k", type=click.IntRange(min=1), required=True)
@click.option("--lam", type=click.FloatRange(min=0), default=5.0, show_default=True, help="λ.")
@fit_options
@user_errors
@scheduler_options
def inmf_command(
    inputs: tuple[str, ...],
    k: int,
    lam: float,
    output: str,
    names: str | None,
    scheduler: str | None,
    workers: int | None,
    overwrite: bool,
    progress: bool,
    **opts: Any,
) -> None:
    """Integrative NMF (LIGER): X_d ≈ (W + V_d) H_d with λ‖V_d H_d‖²."""
    from scalenmf import inmf

    _check_output(output, overwrite)
    start = time.perf_counter()
    result = _echo_warnings(
        lambda: inmf(
            list(inputs),
            k,
            lam,
            names=_names(names),
            scheduler=scheduler,
            workers=workers,
            progress=progress,
            **opts,
        )
    )
    result.save(output, overwrite=overwrite)
    click.echo(
        f"inmf k={result.k} lam={result.lam:g}  iterations={result.n_iter}"
        f"{'' if result.converged else ' (max_iter reached)'}  "
        f"relative error={result.relative_error:.5g}  "
        f"wall time={time.perf_counter() - start:.2f}s  → {output}"
    )
    click.echo(_dataset_lines(result))


# -- lnmf-ranks -------------------------------------------------------------------------


@click.command(name="lnmf-ranks")
@click.argument("inputs", nargs=-1, required=True, type=InputPath())
@click.option(
    "--ks", required=True, help="Rank of every separate fit: one value, or one per dataset."
)
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=0.9, show_default=True)
@click.option(
    "--loss", type=click.Choice(["frobenius", "kl"]), default="frobenius", show_default=True
)
@click.option(
    "--solver", type=click.Choice(["als", "hals", "mu"]), default=None, help="Of the fits."
)
@click.option("--max-iter", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--tol", type=float, default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--n-runs", type=click.IntRange(min=1), default=1, show_default=True)
@threads_option
@click.option("--names", default=None, help="Dataset names, comma-separated.")
@json_option("the proposal and its evidence")
@click.option("--progress/--no-progress", default=True, show_default=True, help=PROGRESS_HELP)
@backend_options
@user_errors
@scheduler_options
def lnmf_ranks_command(
    inputs: tuple[str, ...],
    ks: str,
    min_cosine: float,
    names: str | None,
    scheduler: str | None,
    workers: int | None,
    json_path: str | None,
    **opts: Any,
) -> None:
    """Propose --k-shared / --k-unique from separate fits matched by cosine (Hungarian)."""
    from scalenmf import lnmf_ranks

    check_json_path(json_path)
    values = _int_list(ks, "--ks")
    proposal = _echo_warnings(
        lambda: lnmf_ranks(
            list(inputs),
            values[0] if len(values) == 1 else values,
            min_cosine=min_cosine,
            names=_names(names),
            scheduler=scheduler,
            workers=workers,
            **opts,
        )
    )
    if json_path != "-":
        click.echo(format_proposal(proposal, list(inputs)))
    if json_path is not None:
        emit_json(json_path, proposal.as_dict())


def format_proposal(proposal: Any, inputs: list[str]) -> str:
    """The evidence table and the proposal of ``lnmf_ranks`` as terminal text."""
    ref = proposal.names[proposal.reference]
    others = [n for i, n in enumerate(proposal.names) if i != proposal.reference]
    lines = [
        "separate fits: "
        + ", ".join(f"{n} k={k}" for n, k in zip(proposal.names, proposal.ks, strict=True)),
        f"factors of {ref} matched by cosine (Hungarian); conserved when every match ≥ "
        f"{proposal.min_cosine:g}",
        "",
        "  ".join([f"{ref:>12}"] + [f"{n:>16}" for n in others] + ["conserved"]),
    ]
    for mt in proposal.matches:
        cells = [f"{'F' + str(mt['factor'] + 1):>12}"]
        for other in mt["matches"]:
            cell = f"F{other['factor'] + 1} cos {other['cosine']:.3f}"
            cells.append(f"{cell:>16}")
        cells.append("yes" if mt["conserved"] else "no")
        lines.append("  ".join(cells))
    lines.append("")
    note = "" if proposal.n_conserved else " (no factor conserved; the floor of 1 applies)"
    ku = ",".join(map(str, proposal.k_unique))
    lines.append(f"proposal: k_shared={proposal.k_shared}  k_unique={ku}{note}")
    lines.append(
        f"  scalenmf lnmf {' '.join(inputs)} --k-shared {proposal.k_shared} --k-unique {ku} "
        "-o OUT.zarr"
    )
    return "\n".join(lines)


# -- project ----------------------------------------------------------------------------


def _open_basis(path: str) -> Any:
    """A result store (its W and labels), or any matrix file read as a labelled basis."""
    from scalenmf.io.errors import InputError
    from scalenmf.io.info import describe

    kind = describe(path).get("kind")
    if kind == "result":
        from scalenmf.results.nmf import load

        # W and the labels only: H (k × n of the fit) is not needed to project.
        return load(path, lazy=True)
    import numpy as np

    from scalenmf.io import open_matrix

    src = open_matrix(path)
    block = src.read_columns(0, src.shape[1])
    dense = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
    if dense.size == 0:
        raise InputError(f"basis {path!r} is empty")
    return _Basis(dense, src.row_labels, src.col_labels)


class _Basis:
    """A basis read from a matrix file: W with its feature and factor labels."""

    def __init__(self, W: Any, rows: Any, cols: Any):
        self.W = W
        self.row_labels = rows
        self.factor_labels = cols
        self.params: dict[str, Any] = {}


def _qc_table(path: str, result: Any) -> None:
    """Per-sample QC as TSV, written under a temporary name and renamed."""
    n = result.H.shape[1]
    names = result.col_labels if result.col_labels is not None else [str(i) for i in range(n)]
    header = ["sample", "cosine", "relative_error", "novel"]
    columns = [result.cosine, result.relative_error, result.novel.astype(int)]
    if result.k_new:
        header += ["basis_cosine", "basis_relative_error", "new_share"]
        columns += [result.basis_cosine, result.basis_relative_error, result.new_share]
    lines = ["\t".join(header)]
    for i in range(n):
        lines.append("\t".join([str(names[i])] + [f"{c[i]:.6g}" for c in columns]))
    write_text_atomic(path, "\n".join(lines) + "\n")


def _optional_float(text: str | None, what: str) -> float | None:
    if text is None or text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"expected a number or 'none'; got {text!r}", param_hint=what
        ) from exc


@click.command(name="project")
@click.argument("basis", metavar="RESULT", type=InputPath("basis"))
@click.argument("new_input", metavar="NEW_INPUT", type=InputPath())
@click.option("-o", "--output", type=click.Path(), required=True, help="Projection store.")
@click.option(
    "--loss", type=click.Choice(["frobenius", "kl"]), default=None, help="Default: RESULT's."
)
@click.option("--l1-h", type=float, default=0.0, show_default=True)
@click.option("--l2-h", type=float, default=0.0, show_default=True)
@click.option("--solver", type=click.Choice(["als", "hals", "mu"]), default=None)
@click.option("--nnls", type=click.Choice(["cd", "bpp"]), default="bpp", show_default=True)
@click.option(
    "--k-new",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="New factors learned alongside W (linked transfer learning).",
)
@click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--resample",
    type=click.Choice(["poisson", "multinomial"]),
    default="poisson",
    show_default=True,
)
@click.option("--ci", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True)
@click.option("--novelty-cosine", default="0.9", show_default=True, help="Or 'none'.")
@click.option("--novelty-z", default="3.5", show_default=True, help="Or 'none'.")
@click.option("--drop-extra-features", is_flag=True, help="Ignore features W does not have.")
@click.option("--transpose", is_flag=True, help="NEW_INPUT is samples × features.")
@click.option("--qc", "qc_path", type=click.Path(), default=None, help="Per-sample QC as TSV.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--memory-limit", default=None)
@click.option("--block-cols", type=click.IntRange(min=1), default=None)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None)
@threads_option
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--progress/--no-progress", default=True, show_default=True, help=PROGRESS_HELP)
@backend_options
@user_errors
@scheduler_options
def project_command(
    basis: str,
    new_input: str,
    output: str,
    novelty_cosine: str,
    novelty_z: str,
    transpose: bool,
    qc_path: str | None,
    scheduler: str | None,
    workers: int | None,
    overwrite: bool,
    **opts: Any,
) -> None:
    """H of NEW_INPUT's samples on the basis of RESULT (a result store or a matrix file)."""
    from scalenmf import project

    _check_output(output, overwrite)
    if qc_path is not None:
        _check_output(qc_path, overwrite)
    start = time.perf_counter()
    W = _open_basis(basis)
    out = Path(output)
    workdir = Path(tempfile.mkdtemp(prefix=".scalenmf-", dir=out.parent)) if transpose else None
    try:
        source = input_source(new_input, transpose, workdir)
        result = _echo_warnings(
            lambda: project(
                W,
                source,
                novelty_cosine=_optional_float(novelty_cosine, "--novelty-cosine"),
                novelty_z=_optional_float(novelty_z, "--novelty-z"),
                scheduler=scheduler,
                workers=workers,
                **opts,
            )
        )
        result.save(output, overwrite=overwrite)
        if qc_path is not None:
            _qc_table(qc_path, result)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    s = result.summary()
    parts = [
        f"projected {s['n_samples']} samples on k={result.k}",
        f"median cosine={s['median_cosine']:.4g}",
        f"novel={s['n_novel']}",
        f"basis R²={s['basis_r2']:.4g}",
    ]
    if result.k_new:
        parts.append(
            f"k_new={result.k_new} total R²={s['total_r2']:.4g} "
            f"new share of counts={s['new_count_share']:.3g}"
        )
    parts.append(f"wall time={time.perf_counter() - start:.2f}s  → {output}")
    click.echo("  ".join(parts))


COMMANDS = (lnmf_command, inmf_command, lnmf_ranks_command, project_command)


def register(group: click.Group) -> None:
    """Add the commands of this module to the ``scalenmf`` group."""
    for command in COMMANDS:
        group.add_command(command)
