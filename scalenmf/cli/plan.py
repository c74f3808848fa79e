"""``scalenmf plan INPUT -k K``: estimate memory, time per iteration, blocks and workers."""

from __future__ import annotations

import click

from scalenmf.cli._common import check_json_path, emit_json, json_option, user_errors


@click.command(name="plan")
@click.argument("input_path", metavar="INPUT")
@click.option("-k", "--rank", "k", type=int, required=True, help="Number of factors.")
@click.option(
    "--plan-workers",
    type=int,
    default=None,
    help="Plan for a fit on N Dask workers (default: suggested).",
)
@click.option(
    "--workers",
    "old_workers",
    type=int,
    default=None,
    hidden=True,
    help="Older spelling of --plan-workers.",
)
@click.option("--memory-limit", default=None, help="Memory per worker, e.g. 8GB.")
@click.option("--block-cols", type=int, default=None, help="Columns per block (default: planned).")
@click.option("--n-runs", type=int, default=1, show_default=True)
@click.option("--solver", type=click.Choice(["als", "hals", "mu"]), default=None)
@click.option("--loss", type=click.Choice(["frobenius", "kl"]), default="frobenius")
@click.option("--probe-blocks", type=int, default=2, show_default=True, help="Blocks to time.")
@json_option("the plan")
def plan(
    input_path: str,
    k: int,
    plan_workers: int | None,
    old_workers: int | None,
    memory_limit: str | None,
    block_cols: int | None,
    n_runs: int,
    solver: str | None,
    loss: str,
    probe_blocks: int,
    json_path: str | None,
) -> None:
    """Dry run: how a fit of INPUT at rank K would be blocked, sized and timed.

    Reads a few blocks and runs the real block step on them (a short measured probe);
    nothing is written.
    """
    from scalenmf.io import storage
    from scalenmf.planner import format_plan
    from scalenmf.planner import plan as make_plan

    @user_errors
    def run() -> None:
        if not storage.exists(input_path):
            raise click.ClickException(f"input {input_path!r} does not exist")
        workers = plan_workers
        if old_workers is not None:
            if plan_workers is not None:
                raise click.UsageError("give --plan-workers, not also --workers")
            click.echo(
                "warning: plan --workers is now spelled --plan-workers (--workers means the "
                "Dask workers a command runs on)",
                err=True,
            )
            workers = old_workers
        if workers is not None and workers < 1:
            raise click.BadParameter(
                f"must be at least 1; got {workers}", param_hint="--plan-workers"
            )
        check_json_path(json_path)
        from scalenmf.io import open_matrix

        result = make_plan(
            open_matrix(input_path),
            k,
            workers=workers,
            memory_limit=memory_limit,
            block_cols=block_cols,
            n_runs=n_runs,
            solver=solver,
            loss=loss,
            probe_blocks=probe_blocks,
        )
        if json_path is None:
            click.echo(format_plan(result))
        else:
            emit_json(json_path, result.to_dict())
            if json_path != "-":
                click.echo(format_plan(result))

    run()
