"""What the CLI modules share: the one-line treatment of user errors and INPUT opening.

No CLI module imports ``cli.main`` (the group); ``main`` imports them and registers
their commands.
"""

from __future__ import annotations

import functools
import os
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
            raise click.ClickException(str(exc)) from exc
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
