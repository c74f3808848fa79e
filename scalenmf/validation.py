"""Parameter rules, declared once as data, checked in one place.

Each error names the parameter, what is allowed and what was given.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...] = ()

    def check(self, name: str, value: Any) -> str:
        if isinstance(value, str):
            low = value.lower()
            for alias, target in self.aliases:
                if low == alias:
                    return target
            if low in self.choices:
                return low
        allowed = ", ".join(repr(c) for c in self.choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")


@dataclass(frozen=True)
class Number:
    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    low_open: bool = False

    def check(self, name: str, value: Any) -> Any:
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            what = "an integer" if self.integer else "a number"
            raise TypeError(f"{name} must be {what}; got {value!r} ({type(value).__name__})")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite; got {value!r}")
        number = float(value)
        too_low = number <= self.low if self.low_open else number < self.low
        if too_low or number > self.high:
            lo = "(" if self.low_open else "["
            raise ValueError(f"{name} must be in {lo}{self.low:g}, {self.high:g}]; got {value!r}")
        return int(number) if self.integer else number


@dataclass(frozen=True)
class OptionalInt:
    low: int = 0

    def check(self, name: str, value: Any) -> int | None:
        if value is None:
            return None
        return int(Number(self.low, math.inf, integer=True).check(name, value))


NONNEG = Number(0.0)

NMF_RULES: dict[str, Any] = {
    "k": Number(1, math.inf, integer=True),
    "solver": OneOf(("als", "hals", "mu", "online")),
    "loss": OneOf(("frobenius", "kl"), aliases=(("kullback-leibler", "kl"), ("fro", "frobenius"))),
    "init": OneOf(("nndsvda", "nndsvd", "random")),
    "nnls": OneOf(("cd", "bpp")),
    "l1_w": NONNEG,
    "l1_h": NONNEG,
    "l2_w": NONNEG,
    "l2_h": NONNEG,
    "max_iter": Number(1, math.inf, integer=True),
    "tol": NONNEG,
    "n_runs": Number(1, math.inf, integer=True),
    "seed": OptionalInt(0),
    "workers": OptionalInt(1),
}


def check_params(rules: dict[str, Any], **params: Any) -> dict[str, Any]:
    """Validate and normalise ``params`` against ``rules`` (unknown names pass through)."""
    out = dict(params)
    for name, value in params.items():
        rule = rules.get(name)
        if rule is not None:
            out[name] = rule.check(name, value)
    return out


def parse_memory(value: Any) -> int | None:
    """``None``, a byte count, or a string such as ``"2GB"`` / ``"512 MiB"`` → bytes."""
    if value is None:
        return None
    if isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            parsed = int(parse_bytes(value))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"memory_limit: cannot parse {value!r} as a size") from exc
    else:
        parsed = int(Number(1, math.inf, integer=True).check("memory_limit", value))
    if parsed <= 0:
        raise ValueError(f"memory_limit must be positive; got {value!r}")
    return parsed
