"""Errors raised on bad input; each names the problem and where it was found."""

from __future__ import annotations


class InputError(ValueError):
    """The input matrix, file or store cannot be used as given."""


class OutputError(ValueError):
    """An output cannot be written (unwritable directory, full disk, ...); names the path."""
