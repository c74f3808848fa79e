"""I/O: matrix sources, the Zarr layout, format readers and atomic output. No math here."""

from __future__ import annotations

from scalenmf.io.atomic import OutputExistsError, atomic_output
from scalenmf.io.errors import InputError
from scalenmf.io.matrix import as_source, open_matrix, write_matrix
from scalenmf.io.readers import Reader, open_path, register_reader
from scalenmf.io.source import MatrixSource

__all__ = [
    "InputError",
    "MatrixSource",
    "OutputExistsError",
    "Reader",
    "as_source",
    "atomic_output",
    "open_matrix",
    "open_path",
    "register_reader",
    "write_matrix",
]
