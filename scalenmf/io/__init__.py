"""I/O: matrix sources, the Zarr layout, format readers and atomic output. No math here.

The names below are imported on first use (PEP 562), so that importing a light submodule
(``scalenmf.io.errors``, ``scalenmf.io.planning``) does not load zarr through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "InputError": "scalenmf.io.errors",
    "MatrixSource": "scalenmf.io.source",
    "OutputExistsError": "scalenmf.io.atomic",
    "Reader": "scalenmf.io.readers",
    "as_source": "scalenmf.io.matrix",
    "atomic_output": "scalenmf.io.atomic",
    "open_matrix": "scalenmf.io.matrix",
    "open_path": "scalenmf.io.readers",
    "register_reader": "scalenmf.io.readers",
    "write_matrix": "scalenmf.io.matrix",
}

if TYPE_CHECKING:
    from scalenmf.io.atomic import OutputExistsError, atomic_output
    from scalenmf.io.errors import InputError
    from scalenmf.io.matrix import as_source, open_matrix, write_matrix
    from scalenmf.io.readers import Reader, open_path, register_reader
    from scalenmf.io.source import MatrixSource


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalenmf.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
