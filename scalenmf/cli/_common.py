"""What the CLI modules share: the one-line treatment of user errors and INPUT opening.

No CLI module imports ``cli.main`` (the group); ``main`` imports them and registers
their commands.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

#: Exceptions that mean "the user's input or options are wrong", not "scalenmf is broken".
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad-input exceptions into a one-line error and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as exc:
            raise click.ClickException(flag_message(str(exc))) from exc
        except ImportError as exc:
            raise click.ClickException(f"a dependency is missing: {exc}") from exc
        except MemoryError as exc:
            # A declared shape too large to allocate: numpy's message gives the size.
            raise click.ClickException(
                f"not enough memory: {exc or 'an allocation failed'} (is the input's declared "
                "shape right? see --memory-limit and `scalenmf plan`)"
            ) from exc
        except Exception as exc:
            if type(exc).__name__ == "UnpicklingError":
                # torch's message advises weights_only=False, i.e. running the file's code.
                raise click.ClickException(
                    "refused to load a file that holds pickled Python objects other than "
                    "tensors (scalenmf never unpickles those: they could run code); "
                    "re-create it with scalenmf"
                ) from exc
            if type(exc).__name__ in ("ClosedClientError", "CommClosedError"):
                raise click.ClickException(
                    f"lost the Dask scheduler ({type(exc).__name__}: {' '.join(str(exc).split())})"
                    "; continue the fit from its last checkpoint with --resume once a scheduler "
                    "is up"
                ) from exc
            raise

    return wrapper


#: Python parameters whose command-line flag is not the parameter's own option.
API_FLAGS = {"checkpoint": "--checkpoint", "num_workers": "--loader-workers"}

_LEADING_NAME = re.compile(r"^([a-z][a-z0-9_]*)(?=(?: must |: | is |\[))")
_INTERVAL = re.compile(r"must be in ([\[(])(-?[\d.e+-]+|-inf), (-?[\d.e+-]+|inf)\]")


def _flag_of(name: str) -> str | None:
    """The flag of the current command that sets Python parameter ``name``, if any."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        for param in ctx.command.params:
            if isinstance(param, click.Option) and param.name == name and param.opts:
                short = f"-{name}"
                if short in param.opts:
                    return short
                longs = [o for o in param.opts if o.startswith("--")]
                return longs[0] if longs else param.opts[0]
    return API_FLAGS.get(name)


def _interval(match: re.Match[str]) -> str:
    opening, low, high = match.groups()
    above = "≥" if opening == "[" else ">"
    if high == "inf":
        return f"must be {above} {low}"
    if low == "-inf":
        return f"must be ≤ {high}"
    return f"must be {above} {low} and ≤ {high}"


def flag_message(message: str) -> str:
    """An API error as the command line says it: the leading parameter name becomes the
    flag that sets it (``max_iter`` → ``--max-iter``) and ``in [1, inf]`` becomes ``≥ 1``.

    The API's messages name Python parameters; at the command line the user typed flags.
    """
    found = _LEADING_NAME.match(message)
    if found is not None:
        flag = _flag_of(found.group(1))
        if flag is not None:
            message = flag + message[found.end(1) :]
            message = _INTERVAL.sub(_interval, message, count=1)
    return message


class InputPath(click.Path):
    """A path that must exist; a missing one is a one-line error with exit status 1 (as
    every other bad input), not click's usage error (status 2). URLs pass to the reader."""

    def __init__(self, what: str = "input", **kwargs: Any) -> None:
        kwargs.setdefault("dir_okay", True)
        super().__init__(**kwargs)
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if "://" not in text and not os.path.exists(text):
            raise click.ClickException(f"{self.what} {text!r} does not exist")
        return super().convert(value, param, ctx)


def threads_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--threads N``: threads of the local executor (every command that fits)."""
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="Threads of the local executor (default: all cores); not used on Dask.",
    )(func)


PROGRESS_HELP = "Progress bar on stderr (a line every few percent when not a terminal)."


def progress_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress`` (on by default), and ``--quiet``, its older spelling
    (hidden): the command receives ``progress`` only."""

    @functools.wraps(func)
    def wrapper(*args: Any, quiet: bool = False, **kwargs: Any) -> Any:
        if quiet:
            kwargs["progress"] = False
        return func(*args, **kwargs)

    wrapper = click.option(
        "--quiet", is_flag=True, hidden=True, help="Same as --no-progress (older spelling)."
    )(wrapper)
    return click.option(
        "--progress/--no-progress", default=True, show_default=True, help=PROGRESS_HELP
    )(wrapper)


def json_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--json [FILE]``, the same in every command: write ``what`` as JSON to FILE, or with
    no FILE (``--json`` last, or ``--json -``) print it instead of the table."""
    return click.option(
        "--json",
        "json_path",
        is_flag=False,
        flag_value="-",
        default=None,
        metavar="[FILE]",
        help=f"Write {what} as JSON to FILE; without FILE (or with -), print it instead.",
    )


def emit_json(json_path: str, data: Any) -> None:
    """Print ``data`` as JSON (``json_path == "-"``) or write it atomically to the file."""
    import json

    text = json.dumps(data, indent=2)
    if json_path == "-":
        click.echo(text)
    else:
        write_text_atomic(json_path, text + "\n")


def check_json_path(json_path: str | None) -> None:
    """Refuse a --json FILE whose directory does not exist, before any work."""
    if json_path not in (None, "-") and not Path(str(json_path)).absolute().parent.exists():
        raise click.ClickException(f"directory of --json {json_path!r} does not exist")


def input_source(path: str, transpose: bool, workdir: Path | None, **text: Any) -> Any:
    """Open INPUT; with --transpose read a samples × features file the other way round.

    ``text``: ``has_header``, ``has_row_labels``, ``missing`` for CSV/TSV input.
    """
    import scipy.sparse as sp

    from scalenmf.io import open_matrix
    from scalenmf.io.matrix import as_source
    from scalenmf.io.source import DenseArraySource

    src = open_matrix(path, **text)
    if not transpose:
        return src
    if src.in_memory or isinstance(src, DenseArraySource):
        # In memory or memory-mapped: the transpose is a view (or one cheap sparse copy).
        block = src.read_columns(0, src.shape[1])
        flipped = as_source(sp.csc_matrix(block.T) if sp.issparse(block) else block.T)
        return flipped.set_labels(src.col_labels, src.row_labels)
    if workdir is None:
        raise click.ClickException("--transpose of an on-disk store needs a working directory")
    from scalenmf import convert

    tmp = workdir / "transposed.zarr"
    convert(src, tmp, transpose=True)
    return open_matrix(tmp)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name beside it, then rename: a reader
    (or a crash) never sees half a file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def text_layout_options(f: Any) -> Any:
    """``--header/--no-header`` and ``--row-labels/--no-row-labels``: whether a CSV/TSV
    input's first line and first column are labels (default: judged from the file)."""
    f = click.option(
        "--row-labels/--no-row-labels",
        "has_row_labels",
        default=None,
        help="CSV/TSV: column 1 holds feature labels, or is data (default: from the file).",
    )(f)
    return click.option(
        "--header/--no-header",
        "has_header",
        default=None,
        help="CSV/TSV: line 1 holds sample names, or is data (default: from the file).",
    )(f)


def backend_options(f: Any) -> Any:
    """``--backend``, ``--device`` and ``--gpu-memory-limit``: where the block kernels run."""
    f = click.option(
        "--gpu-memory-limit",
        default=None,
        help="Bytes of X that may stay resident on the GPU, e.g. 8GB (default: half its memory).",
    )(f)
    f = click.option(
        "--device",
        type=click.Choice(["cpu", "cuda", "auto"]),
        default=None,
        help="torch device (implies --backend torch); auto: a GPU wherever one is present.",
    )(f)
    return click.option(
        "--backend",
        type=click.Choice(["numpy", "torch"]),
        default=None,
        help="Block kernels on numpy (default) or torch (the [torch] extra).",
    )(f)
