"""Shared look of the plots, categorical colours, and atomic saving of figures."""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
from matplotlib import rc_context
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

#: The look every plot is drawn with (a quiet, paper-ready style).
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 11,
    "figure.titleweight": "bold",
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.08,
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
    "image.interpolation": "nearest",
}

#: Formats ``save_figure`` writes, chosen by the file extension.
FIGURE_FORMATS = ("png", "pdf", "svg")

F = TypeVar("F", bound=Callable[..., Figure])


def style_context() -> Any:
    """``matplotlib.rc_context`` with ``STYLE``."""
    return rc_context(cast(Any, STYLE))


def styled(func: F) -> F:
    """Draw the figure under ``STYLE`` (rcParams are read when artists are created)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with style_context():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure (no global state, works headless) with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def clamp(value: float, lo: float, hi: float) -> float:
    return float(min(max(value, lo), hi))


def categorical_colors(n: int) -> list[str]:
    """``n`` distinguishable colours: tab10, then tab20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [to_hex(c) for c in colormaps["tab10"].colors[:n]]  # type: ignore[attr-defined]
    if n <= 20:
        return [to_hex(c) for c in colormaps["tab20"].colors[:n]]  # type: ignore[attr-defined]
    return [to_hex(c) for c in colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))]


def natural_order(labels: Sequence[str]) -> list[str]:
    """Distinct labels sorted so that ``"2"`` < ``"10"`` and ``"F2"`` < ``"F10"``."""

    def key(s: str) -> list[Any]:
        return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]

    return sorted(set(labels), key=key)


def shorten(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def figure_format(path: str | os.PathLike[str]) -> str:
    """The format a figure path asks for, from its extension (png, pdf or svg)."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FIGURE_FORMATS:
        raise ValueError(
            f"cannot tell the image format of {str(path)!r}: use a file name ending in "
            + ", ".join(f".{f}" for f in FIGURE_FORMATS)
        )
    return ext


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Fail early (before any drawing) when the output's directory is missing."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"output {str(target)!r} is a directory; give a file name")
    if not target.parent.exists():
        raise FileNotFoundError(f"output directory {str(target.parent)!r} does not exist")
    return target


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], object]) -> str:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    A failure leaves ``path`` as it was (absent, or the previous file): never half a file.
    """
    target = check_output_file(path)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        write(str(tmp))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(target)


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float = 150) -> str:
    """Write ``fig`` to ``path`` (.png, .pdf or .svg, by extension), atomically.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : path-like
        The image file; an existing file is replaced only once the new one is complete.
    dpi : float, default 150
        Resolution of raster output (and of rasterized layers in PDF/SVG).
    """
    fmt = figure_format(path)

    def write(tmp: str) -> None:
        with style_context():  # the savefig.* and *.fonttype settings apply at save time
            fig.savefig(tmp, format=fmt, dpi=dpi)

    return write_atomic(path, write)
