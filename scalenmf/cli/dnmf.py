"""``scalenmf dnmf``: train, transform and evaluate deep unrolled NMF models.

Thin click commands over :class:`scalenmf.models.deep.DNMF` and
:mod:`scalenmf.experiments.dnmf_eval`. torch is imported only when a command runs, so the
main CLI works without the torch extra.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from scalenmf.cli._common import InputPath, progress_options
from scalenmf.cli.cluster import CLUSTER_OPTIONS, cluster_kwargs, cluster_options, dask_client

logger = logging.getLogger(__name__)


def _deep() -> Any:
    try:
        from scalenmf.models import deep
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc
    return deep


def _fail(exc: BaseException) -> click.ClickException:
    return click.ClickException(str(exc) or type(exc).__name__)


def _check_output(out: str, overwrite: bool) -> None:
    """Reject an existing output (without --overwrite) or a missing parent before any work."""
    path = Path(out)
    if path.exists() and not overwrite:
        raise click.BadParameter(
            f"{out!r} already exists; pass --overwrite to replace it", param_hint="-o/--output"
        )
    if not path.parent.exists():
        raise click.BadParameter(
            f"directory {str(path.parent)!r} does not exist", param_hint="-o/--output"
        )


def _open_input(path: str, what: str) -> Any:
    from scalenmf.io import open_matrix

    try:
        return open_matrix(path)
    except (OSError, ValueError, TypeError) as exc:
        raise click.BadParameter(f"cannot open {path!r}: {exc}", param_hint=what) from exc


def _refuse_workers(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None:
        raise click.UsageError(
            "--workers means Dask workers, which dnmf train does not use; the DataLoader "
            "reader processes are now --loader-workers N",
            ctx=ctx,
        )


@click.group(name="dnmf")
def dnmf() -> None:
    """Deep unrolled NMF (Nasser, Eldar & Sharan 2021) in torch."""


@dnmf.command()
@click.argument("input", type=InputPath())
@click.option(
    "-k", "--rank", "--n-components", "k", type=int, required=True, help="Number of factors."
)
@click.option(
    "-o", "--output", "--out", "out", required=True, type=click.Path(), help="Model directory."
)
@click.option("--h", "h_path", type=InputPath("H"), help="Known H (k × n), supervised.")
@click.option(
    "--mode",
    type=click.Choice(["supervised", "unsupervised"]),
    default=None,
    help="Default: supervised when --h is given, else unsupervised.",
)
@click.option(
    "--loss", type=click.Choice(["frobenius", "kl"]), default="frobenius", show_default=True
)
@click.option("--layers", "n_layers", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--layer",
    "layer",
    type=click.Choice(["mu", "pgd", "hals"]),
    default="mu",
    show_default=True,
    help="Iteration each layer unrolls: the paper's MU, projected gradient (LISTA-style) "
    "or a HALS sweep (pgd, hals: Frobenius only).",
)
@click.option(
    "--start",
    type=click.Choice(["ones", "lsq"]),
    default=None,
    help="H0: all ones or the learned clipped least-squares start (default: ones for mu, "
    "lsq for pgd/hals).",
)
@click.option("--epochs", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--lr", type=float, default=None, help="Adam lr (default 1e-3 sup. / 5e-4 unsup.).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Global mini-batch size in columns (default: full batch).",
)
@click.option(
    "--loader-workers",
    "num_workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="DataLoader reader processes per training process.",
)
@click.option(
    "--workers",
    "dask_workers",
    type=int,
    default=None,
    hidden=True,
    expose_value=False,
    callback=_refuse_workers,
    help="Refused: Dask workers, which training does not use (see --loader-workers).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Data-parallel training processes (gloo on 127.0.0.1).",
)
@click.option("--lambda1", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--lambda2", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option(
    "--learn-lambdas/--fixed-lambdas",
    default=None,
    help="Default: learned when supervised, fixed when unsupervised.",
)
@click.option("--init", type=click.Choice(["mu", "constant"]), default="mu", show_default=True)
@click.option(
    "--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Write a checkpoint every N optimiser steps.",
)
@click.option(
    "--checkpoint",
    "checkpoint_path",
    type=click.Path(),
    default=None,
    help="Checkpoint file (default: OUT.ckpt.pt beside the model).",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint.")
@click.option(
    "--keep-best/--keep-last",
    default=True,
    show_default=True,
    help="Keep the parameters of the epoch with the lowest training loss, or the last ones.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default="cpu",
    show_default=True,
    help="torch device for training (auto: a GPU when present); --nproc > 1 trains on the CPU.",
)
@progress_options
def train(
    input: str,
    k: int,
    out: str,
    h_path: str | None,
    mode: str | None,
    loss: str,
    n_layers: int,
    layer: str,
    start: str | None,
    epochs: int,
    lr: float | None,
    batch_size: int | None,
    num_workers: int,
    nproc: int,
    lambda1: float,
    lambda2: float,
    learn_lambdas: bool | None,
    init: str,
    dtype: str,
    seed: int,
    checkpoint_every: int,
    checkpoint_path: str | None,
    resume: bool,
    keep_best: bool,
    overwrite: bool,
    device: str,
    progress: bool,
) -> None:
    """Train a DNMF model on INPUT (features × samples; Zarr store, .npy, ...)."""
    deep = _deep()
    mode = mode or ("supervised" if h_path else "unsupervised")
    if mode == "supervised" and not h_path:
        raise click.BadParameter("supervised training needs the known H", param_hint="--h")
    _check_output(out, overwrite)
    src = _open_input(input, "INPUT")
    m, n = src.shape
    if not 1 <= k <= (m if mode == "supervised" else min(m, n)):
        raise click.BadParameter(
            f"k={k} is out of range for a {m} × {n} input (1 ≤ k ≤ "
            f"{m if mode == 'supervised' else min(m, n)})",
            param_hint="-k",
        )
    H = None
    if h_path:
        H = _open_input(h_path, "--h")
        if tuple(H.shape) != (k, n):
            raise click.BadParameter(
                f"H has shape {tuple(H.shape)}, expected (k, n) = {(k, n)}", param_hint="--h"
            )
    ckpt = checkpoint_path or str(Path(out).with_name(Path(out).name + ".ckpt.pt"))
    if resume and not Path(ckpt).exists():
        raise click.BadParameter(f"no checkpoint at {ckpt!r} to resume from", param_hint="--resume")
    model = deep.DNMF(
        k,
        n_layers=n_layers,
        mode=mode,
        loss=loss,
        lambda1=lambda1,
        lambda2=lambda2,
        learn_lambdas=learn_lambdas,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        num_workers=num_workers,
        nproc=nproc,
        init=init,
        dtype=dtype,
        seed=seed,
        checkpoint_every=checkpoint_every,
        checkpoint_path=ckpt if (checkpoint_every or resume) else None,
        resume=resume,
        keep_best=keep_best,
        device=device,
        layer=layer,
        start=start,
    )
    # with several processes the inputs travel by path; each process opens its own view
    V_arg: Any = input if nproc > 1 else src
    H_arg: Any = (h_path if nproc > 1 else H) if h_path else None
    try:
        model.fit(V_arg, H_arg, progress=progress)
        model.save(out, overwrite=overwrite)
    except (ValueError, OSError, RuntimeError) as exc:
        raise _fail(exc) from exc
    final = model.loss_history_[-1] if model.loss_history_ else float("nan")
    click.echo(f"wrote {out} (k={k}, {n_layers} {layer} layers, {mode}, final loss {final:.6g})")


@dnmf.command()
@click.argument("model_dir", type=InputPath("model directory", file_okay=False))
@click.argument("input", type=InputPath())
@click.option(
    "-o", "--output", "--out", "out", required=True, type=click.Path(), help="Result store (H)."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=65536,
    show_default=True,
    help="Columns densified and pushed through the network at once.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default=None,
    help="torch device (default: the model's; auto: a GPU when present, each worker its own).",
)
@progress_options
@cluster_options
def transform(
    model_dir: str,
    input: str,
    out: str,
    batch_size: int,
    overwrite: bool,
    device: str | None,
    progress: bool,
    **cluster: Any,
) -> None:
    """Compute H for INPUT with a trained model; write it as a chunked Zarr store.

    With a cluster option the Dask workers transform their own blocks (the store must be
    on a file system they share); otherwise this process does.
    """
    deep = _deep()
    launch = cluster_kwargs(*(cluster.pop(name) for name in CLUSTER_OPTIONS))
    _check_output(out, overwrite)
    try:
        model = deep.DNMF.load(model_dir, device=device)
    except (OSError, ValueError, KeyError) as exc:
        raise click.BadParameter(f"cannot load model: {exc}", param_hint="MODEL_DIR") from exc
    src = _open_input(input, "INPUT")
    try:
        with dask_client(launch) as client:
            model.transform_to_zarr(
                src,
                out,
                scheduler=client,
                batch_size=batch_size,
                overwrite=overwrite,
                progress=progress,
            )
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    click.echo(f"wrote {out} (H: {model.n_components} × {src.shape[1]})")


@dnmf.command()
@click.option(
    "--data",
    "data_dir",
    type=InputPath("data folder", file_okay=False),
    default=None,
    help="Folder with synsig/ and icgc_brca560_sbs96_counts.npy (default: $SCALENMF_SHARED_DATA).",
)
@click.option("--sets", default=None, help="Comma-separated synsig set names (default: all 12).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--layers", "n_layers", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--lambdas", default="0,1,2", show_default=True, help="Unsupervised λ grid.")
@click.option(
    "--brca/--no-brca",
    default=True,
    show_default=True,
    help="Also run the 560 breast genomes (unsupervised, Frobenius and KL).",
)
@click.option(
    "--max-samples",
    type=click.IntRange(min=10),
    default=None,
    help="Use only the first N samples of each set (quick runs).",
)
@click.option(
    "-o",
    "--output",
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for results.csv, summary.md, claims.md and box plots.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Folds evaluated in parallel processes.",
)
@click.option(
    "--paper-split",
    is_flag=True,
    help="Score on the original code's leaky test columns (to show the leak).",
)
@click.option(
    "--layer",
    "layer_types",
    type=click.Choice(["mu", "pgd", "hals"]),
    multiple=True,
    help="Compare these layer types (repeatable) with exact NNLS and MU/HALS at a fixed "
    "basis instead of re-running the paper's claims; writes layers.csv and layers.md.",
)
@click.option(
    "--depths",
    default="10,20",
    show_default=True,
    help="Network depths of the layer comparison.",
)
@click.option(
    "--fold-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate only the first N folds of the split (layer comparison; quick runs).",
)
@progress_options
def evaluate(
    data_dir: str | None,
    sets: str | None,
    folds: int,
    epochs: int,
    n_layers: int,
    lambdas: str,
    brca: bool,
    max_samples: int | None,
    out: str,
    seed: int,
    jobs: int,
    paper_split: bool,
    layer_types: tuple[str, ...],
    depths: str,
    fold_limit: int | None,
    progress: bool,
) -> None:
    """Re-run the paper's comparison with disjoint folds and fair baselines (or, with
    --layer, compare the layer types at a fixed basis)."""
    _deep()
    from scalenmf.experiments import dnmf_eval as ev

    try:
        lam = tuple(float(x) for x in lambdas.split(","))
    except ValueError as exc:
        raise click.BadParameter(
            f"not a list of numbers: {lambdas!r}", param_hint="--lambdas"
        ) from exc
    try:
        root = Path(data_dir) if data_dir else ev.default_data_dir()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if not (root / "synsig").exists():
        raise click.BadParameter(f"{str(root)!r} has no synsig/ folder", param_hint="--data")
    try:
        depth_list = tuple(int(x) for x in depths.split(","))
    except ValueError as exc:
        raise click.BadParameter(
            f"not a list of integers: {depths!r}", param_hint="--depths"
        ) from exc
    if not depth_list or min(depth_list) < 1:
        raise click.BadParameter(f"depths must be >= 1, got {depths!r}", param_hint="--depths")
    names = sets.split(",") if sets else None
    cfg = ev.EvalConfig(
        folds=folds,
        epochs=epochs,
        n_layers=n_layers,
        lambdas=lam,
        max_samples=max_samples,
        seed=seed,
        brca=brca,
        jobs=jobs,
        paper_split=paper_split,
        layer_types=layer_types or ("mu", "pgd", "hals"),
        layer_depths=depth_list,
        fold_limit=fold_limit,
    )
    try:
        if layer_types:
            report = ev.run_layer_evaluation(root, Path(out), cfg, sets=names, progress=progress)
            click.echo(report.summary_markdown)
            click.echo(report.claims_markdown)
            click.echo(f"wrote {out}/layers.csv, layers.md (wall time {report.wall_s:.1f} s)")
            return
        report = ev.run_evaluation(root, Path(out), cfg, sets=names, progress=progress)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    click.echo(report.summary_markdown)
    click.echo(f"wrote {out}/results.csv, summary.md, claims.md (wall time {report.wall_s:.1f} s)")
