"""A module imported on first attribute access, for modules that a light command loads.

``scalenmf info`` on a dense store, or the readers' registry, need numpy and zarr but not
scipy.sparse (a large share of start-up); the io modules that handle sparse blocks bind
``sp = lazy_module("scipy.sparse")`` and pay for the import only when a sparse block
appears. Type checkers see the real module (``if TYPE_CHECKING: import scipy.sparse as sp``).
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_target"] = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__dict__["_lazy_target"])
        # Later look-ups find the names here directly, at the cost of a dict look-up.
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


def lazy_module(name: str) -> Any:
    """A stand-in for ``importlib.import_module(name)`` that imports it when first used."""
    import sys

    loaded = sys.modules.get(name)
    return loaded if loaded is not None else _LazyModule(name)


__all__ = ["lazy_module"]
