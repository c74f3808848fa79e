"""Errors raised on bad input; each names the problem and where it was found."""

from __future__ import annotations


class InputError(ValueError):
    """The input matrix, file or store cannot be used as given."""


class OutputError(ValueError):
    """An output cannot be written (unwritable directory, full disk, ...); names the path."""


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by the caller that points at the
    user's code: the first frame outside the scalenmf package (a fixed level points inside
    it whenever the public function calls the warning site through a different depth).
    The outermost frame when every frame is ours (the CLI)."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    frame = sys._getframe(1)  # the function that is about to warn: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(root):
        frame = frame.f_back
        level += 1
    return level
