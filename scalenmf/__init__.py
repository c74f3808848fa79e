"""scalenmf: out-of-core, Dask-parallel non-negative matrix factorization.

Convention: ``X`` has shape ``(m features, n samples)``; ``X ≈ W @ H`` with ``W`` of shape
``(m, k)`` (the basis) and ``H`` of shape ``(k, n)`` (the coefficients).
"""

from __future__ import annotations

from typing import Any

from scalenmf._version import __version__

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # DNMF needs torch, an optional extra: import it only when asked for.
    if name == "DNMF":
        from scalenmf.models.deep import DNMF

        return DNMF
    raise AttributeError(f"module 'scalenmf' has no attribute {name!r}")
