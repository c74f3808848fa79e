"""Cluster options shared by every command that can run on Dask.

``@cluster_options`` adds ``--scheduler``, ``--scheduler-file``, ``--workers``,
``--tls-ca-file``, ``--tls-cert``, ``--tls-key`` and ``--connect-timeout``; the command
receives them as keyword arguments and turns them into executor arguments with
``cluster_kwargs(...)``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import click

CLUSTER_OPTIONS = (
    "scheduler",
    "scheduler_file",
    "workers",
    "tls_ca_file",
    "tls_cert",
    "tls_key",
    "connect_timeout",
)


def cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with the Dask launcher options."""
    options = [
        click.option(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="Dask scheduler address (tcp://host:8786, tls://host:8786).",
        ),
        click.option(
            "--scheduler-file",
            default=None,
            type=click.Path(dir_okay=False),
            help="JSON file written by `dask scheduler --scheduler-file` (shared file systems).",
        ),
        click.option(
            "--workers",
            type=int,
            default=None,
            help="Start a local Dask cluster with N worker processes (dashboard on 127.0.0.1).",
        ),
        click.option(
            "--tls-ca-file",
            default=None,
            type=click.Path(dir_okay=False),
            help="CA certificate of a TLS cluster.",
        ),
        click.option(
            "--tls-cert",
            default=None,
            type=click.Path(dir_okay=False),
            help="Client certificate (PEM) for a TLS cluster.",
        ),
        click.option(
            "--tls-key",
            default=None,
            type=click.Path(dir_okay=False),
            help="Private key of --tls-cert, if a separate file.",
        ),
        click.option(
            "--connect-timeout",
            default="30s",
            show_default=True,
            help="How long to try reaching the scheduler.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def cluster_kwargs(
    scheduler: str | None,
    scheduler_file: str | None,
    workers: int | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    connect_timeout: str | None,
) -> dict[str, Any]:
    """Executor arguments from the launcher options (checked for contradictions)."""
    from scalenmf.engine.dask_exec import tls_security

    pairs = (
        ("--scheduler", scheduler),
        ("--scheduler-file", scheduler_file),
        ("--workers", workers),
    )
    given = [name for name, value in pairs if value]
    if len(given) > 1:
        raise click.UsageError(f"give {' or '.join(given)}, not both")
    if workers is not None and workers < 1:
        raise click.BadParameter(f"must be at least 1; got {workers}", param_hint="--workers")
    security = tls_security(tls_ca_file, tls_cert, tls_key)
    if security is not None and not (scheduler or scheduler_file):
        raise click.UsageError("--tls-* options need --scheduler tls://… or --scheduler-file")
    return {
        "scheduler": scheduler,
        "scheduler_file": scheduler_file,
        "workers": workers,
        "security": security,
        "connect_timeout": connect_timeout,
    }


@contextlib.contextmanager
def connected(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``{"scheduler": Client | None, "workers": N | None}`` for APIs that take a
    scheduler address or Client: an existing cluster (address or scheduler file, with its
    TLS credentials) is connected here and closed when the command ends; ``--workers``
    passes through (the API starts and stops its LocalCluster)."""
    if not (cluster["scheduler"] or cluster["scheduler_file"]):
        yield {"scheduler": None, "workers": cluster["workers"]}
        return
    from scalenmf.engine.dask_exec import connect

    client, _, _ = connect(
        cluster["scheduler"],
        scheduler_file=cluster["scheduler_file"],
        security=cluster["security"],
        timeout=cluster["connect_timeout"] or "30s",
    )
    try:
        yield {"scheduler": client, "workers": None}
    finally:
        client.close()


@contextlib.contextmanager
def dask_client(cluster: dict[str, Any]) -> Iterator[Any]:
    """A ``distributed.Client`` for APIs that take only a Client (or None): the cluster
    named by the launcher options, or a LocalCluster of ``--workers`` processes, closed
    when the command ends; None when no option was given (work in this process)."""
    if not (cluster["scheduler"] or cluster["scheduler_file"] or cluster["workers"]):
        yield None
        return
    from scalenmf.engine.dask_exec import connect

    client, local, _ = connect(
        cluster["scheduler"],
        cluster["workers"],
        scheduler_file=cluster["scheduler_file"],
        security=cluster["security"],
        timeout=cluster["connect_timeout"] or "30s",
    )
    try:
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()


def scratch_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with ``--scratch DIR`` (its value: ``scratch_for``)."""
    return click.option(
        "--scratch",
        default=None,
        metavar="DIR",
        help="Directory for scratch stores (block states and H kept out of memory under "
        "--memory-limit, the Dask recovery anchor); created if missing, emptied of what the "
        "run wrote when it ends. Default: $SCALENMF_SCRATCH, else the directory of OUT "
        "(with --scheduler: the system's temporary one, as workers elsewhere may not see "
        "it). On a cluster, a location every worker can reach.",
    )(func)


def scratch_for(scratch: str | None, output: str | None, launch: dict[str, Any]) -> str | None:
    """The scratch directory of a command writing ``output``: ``--scratch`` if given, else
    ``$SCALENMF_SCRATCH`` (None here: the executor reads it), else beside ``output``.

    Beside the output, because that is where the user has made room for a result of this
    size (the system's temporary directory is often a small RAM disk). Not for a cluster
    started elsewhere (``--scheduler``, ``--scheduler-file``): its workers may not share
    this disk, so its anchor stays with the client unless ``--scratch`` names a place.
    """
    from scalenmf.io import storage
    from scalenmf.io.state_store import SCRATCH_ENV

    if scratch:
        return scratch
    if os.environ.get(SCRATCH_ENV) or output is None:
        return None
    if launch.get("scheduler") or launch.get("scheduler_file"):
        return None
    out = storage.local_path(str(output))
    if storage.is_url(out):
        return None
    return os.path.dirname(os.path.abspath(str(out).rstrip("/")))


def scheduler_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`cluster_options` and ``--scratch`` for commands whose function takes
    ``scheduler``, ``workers`` and ``scratch`` only: the launcher options become a
    connected Client (or a worker count), ``--scratch`` its directory (``scratch_for``
    the command's ``--output``).

    Place it below ``@user_errors`` so connection errors get the one-line treatment.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        launch = cluster_kwargs(*(kwargs.pop(name) for name in CLUSTER_OPTIONS))
        scratch = scratch_for(kwargs.pop("scratch"), kwargs.get("output"), launch)
        with connected(launch) as target:
            return func(*args, **target, scratch=scratch, **kwargs)

    return cluster_options(scratch_option(wrapper))
