"""DNMF: deep unrolled non-negative matrix factorization (torch, optional extra).

``from scalenmf.models.deep import DNMF`` raises an ``ImportError`` that says how to install
torch when it is missing; the rest of scalenmf never imports torch.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("DNMF needs the torch extra: pip install scalenmf[torch]") from exc

from scalenmf.models.deep.estimator import DNMF
from scalenmf.models.deep.layers import UnrolledNMF

__all__ = ["DNMF", "UnrolledNMF"]
