"""Adam for the unrolled network, without ``torch.optim``.

Constructing any ``torch.optim.Optimizer`` imports torch's compiler stack (``torch._dynamo``)
on first use: 3–4 s on an idle 2-core machine and over 10 s on a busy one, paid again by
every ``--nproc`` process. The network has a handful of small tensors, so plain Adam in a
few tensor operations is all it needs. The update is the textbook one, written in the same
order of operations as torch's single-tensor Adam (no weight decay, no AMSGrad)::

    m ← β1 m + (1 − β1) g ;  v ← β2 v + (1 − β2) g²
    p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)

``state_dict`` has the layout of ``torch.optim.Adam``'s (tensors and plain values only), so
checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class Adam:
    """Adam over a fixed list of parameters (one parameter group).

    Parameters
    ----------
    params : iterable of Tensor
        Parameters with ``requires_grad``; their ``.grad`` is read by :meth:`step`.
    lr : float
    betas : (float, float)
    eps : float

    Attributes
    ----------
    param_groups : list of dict
        One group: ``{"params": [...], "lr", "betas", "eps"}`` (``lr`` may be changed).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        plist = list(params)
        if lr <= 0 or not math.isfinite(lr):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.param_groups: list[dict[str, Any]] = [
            {"params": plist, "lr": float(lr), "betas": tuple(betas), "eps": float(eps)}
        ]
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def _params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (to None, or to zeros in place)."""
        for p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        for i, p in enumerate(self._params):
            if p.grad is None:
                continue
            g = p.grad
            st = self.state.get(i)
            if st is None:
                st = {
                    "step": torch.zeros((), dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }
                self.state[i] = st
            st["step"] += 1
            t = float(st["step"])
            st["exp_avg"].lerp_(g, 1 - beta1)
            st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step_size = lr / (1 - beta1**t)
            denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
            p.addcdiv_(st["exp_avg"], denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {i: {...}}, "param_groups": [{"lr", "betas", "eps", "params"}]}``."""
        group = self.param_groups[0]
        return {
            "state": self.state,
            "param_groups": [
                {
                    "lr": group["lr"],
                    "betas": group["betas"],
                    "eps": group["eps"],
                    "params": list(range(len(group["params"]))),
                }
            ],
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` (or ``torch.optim.Adam``) saved.

        The moment estimates go to the device of their parameter (a checkpoint is read onto
        the CPU); the step counter stays on the CPU, where :meth:`step` creates it.
        """
        groups = payload["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self._params):
            raise ValueError("the optimiser state does not match this model's parameters")
        mine = self.param_groups[0]
        mine["lr"] = float(groups[0]["lr"])
        mine["betas"] = tuple(groups[0]["betas"])
        mine["eps"] = float(groups[0]["eps"])

        def place(i: int, name: str, t: torch.Tensor) -> torch.Tensor:
            where = torch.device("cpu") if name == "step" else self._params[i].device
            return t.detach().to(where).clone()

        self.state = {
            int(i): {name: place(int(i), name, t) for name, t in st.items()}
            for i, st in payload["state"].items()
        }
