"""When the driver checkpoints, what a checkpoint holds, and how a fit resumes from one.

A snapshot is everything ``run_alternating`` needs to continue as if it had never
stopped: the iterations done, the trace so far, the runs still active, the model's global
factors (``model.get_state()``) and the block states (H blocks). Restoring it and going on
gives the same numbers as the uninterrupted run, bit for bit, because every step is a pure
function of exactly those (see docs/architecture.md).

A *fingerprint* (parameters, blocking, input checksum) is stored with each checkpoint;
resuming with a different one is refused, since it would silently mix two fits.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scalenmf.io.checkpoint import CheckpointError, read_checkpoint, write_checkpoint


@dataclass
class LoopSnapshot:
    """The driver's state after ``iteration`` iterations."""

    iteration: int
    objectives: list[list[float]]
    relative_errors: list[list[float]]
    iter_times: list[float]
    n_iter: list[int]
    converged: list[bool]
    active: list[int]
    model_state: dict[str, Any]
    #: One state per block: a list, or an iterable read once (lazy: the executor's
    #: states, or a checkpoint's ``StoredStates``).
    block_states: Iterable[Any]
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def _describe(fingerprint: dict[str, Any], key: str) -> str:
    value = fingerprint.get(key)
    text = repr(value)
    # Block bounds and the like can be long: the message stays one readable line.
    return text if len(text) <= 80 else text[:77] + "..."


#: What the user changes to change a fingerprint entry (command-line option, or cause).
#: Entries derived from others come last, so that a refusal names the cause first.
_FINGERPRINT_HINTS: dict[str, str] = {
    "input_checksum": "another INPUT, or its content changed",
    "shape": "another INPUT, or --transpose",
    "dtype": "--dtype",
    "k": "-k/--rank",
    "solver": "--solver",
    "loss": "--loss",
    "init": "--init",
    "seed": "--seed",
    "n_runs": "--n-runs",
    "nnls": "--nnls",
    "l1_w": "--l1-w",
    "l1_h": "--l1-h",
    "l2_w": "--l2-w",
    "l2_h": "--l2-h",
    "block_bounds": "--block-cols, --transpose or another INPUT",
    "inner_sweeps": "--solver",
}


def _ordered_keys(keys: set[str]) -> list[str]:
    known = [k for k in _FINGERPRINT_HINTS if k in keys]
    return known + sorted(keys - set(known))


class Checkpointer:
    """Checkpoint every ``every`` iterations and/or every ``seconds`` seconds.

    Parameters
    ----------
    location : path or URL
        Where checkpoints go (``OUT.zarr.checkpoint`` for the CLI).
    every : int, optional
        Checkpoint after every ``every``-th iteration.
    seconds : float, optional
        Checkpoint when this long has passed since the last one (or the start).
    fingerprint : dict
        JSON facts that must match for a resume (parameters, blocking, input checksum).
    extra : dict
        JSON facts stored with every checkpoint and handed back on resume (e.g. ‖X‖²).
    """

    def __init__(
        self,
        location: str,
        *,
        every: int | None = None,
        seconds: float | None = None,
        fingerprint: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        if every is not None and int(every) < 1:
            raise ValueError(f"checkpoint_every must be at least 1; got {every}")
        if seconds is not None and not float(seconds) > 0:
            raise ValueError(f"checkpoint_seconds must be positive; got {seconds}")
        self.location = str(location)
        self.every = int(every) if every is not None else None
        self.seconds = float(seconds) if seconds is not None else None
        self.fingerprint = dict(fingerprint or {})
        self.extra = dict(extra or {})
        self._last = time.monotonic()
        self.saved: list[int] = []

    def due(self, iteration: int) -> bool:
        if self.every is not None and iteration % self.every == 0:
            return True
        return self.seconds is not None and time.monotonic() - self._last >= self.seconds

    def save(self, snap: LoopSnapshot) -> None:
        attrs = {
            "fingerprint": self.fingerprint,
            "extra": {**self.extra, **snap.extra},
            "objectives": snap.objectives,
            "relative_errors": snap.relative_errors,
            "iter_times": snap.iter_times,
            "n_iter": snap.n_iter,
            "converged": snap.converged,
            "active": snap.active,
            "elapsed_s": snap.elapsed_s,
            "saved_unix": time.time(),
        }
        write_checkpoint(
            self.location,
            snap.iteration,
            block_states=snap.block_states,
            model_state=snap.model_state,
            attrs=attrs,
        )
        self._last = time.monotonic()
        self.saved.append(snap.iteration)

    def load(self) -> LoopSnapshot | None:
        """The newest checkpoint, checked against this fit's fingerprint (None if none)."""
        raw = read_checkpoint(self.location)
        if raw is None:
            return None
        attrs = raw["attrs"]
        stored = attrs.get("fingerprint", {})
        for key in _ordered_keys(set(stored) | set(self.fingerprint)):
            if stored.get(key) != self.fingerprint.get(key):
                hint = _FINGERPRINT_HINTS.get(key)
                raise CheckpointError(
                    f"the checkpoint in {self.location!r} belongs to another fit: {key} was "
                    f"{_describe(stored, key)}, now {_describe(self.fingerprint, key)}"
                    f"{f' ({hint})' if hint else ''}; resume with the same input and "
                    "parameters, or remove the checkpoint"
                )
        return LoopSnapshot(
            iteration=raw["iteration"],
            objectives=[list(map(float, o)) for o in attrs["objectives"]],
            relative_errors=[list(map(float, e)) for e in attrs["relative_errors"]],
            iter_times=list(map(float, attrs["iter_times"])),
            n_iter=list(map(int, attrs["n_iter"])),
            converged=list(map(bool, attrs["converged"])),
            active=list(map(int, attrs["active"])),
            model_state=raw["model_state"],
            block_states=raw["block_states"],
            elapsed_s=float(attrs["elapsed_s"]),
            extra=dict(attrs.get("extra", {})),
        )
