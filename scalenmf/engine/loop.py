"""The alternating-iteration driver, written once for every model and executor.

A model supplies three pure pieces: how to build the broadcast from its global factors, a
block function, and how to turn the summed partials into objectives and new global factors.
The driver owns iteration counting, per-run convergence, timing, callbacks and the
progress bar.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scalenmf.engine.checkpoint import Checkpointer, LoopSnapshot
from scalenmf.engine.executor import Executor
from scalenmf.engine.progress import finish as finish_progress
from scalenmf.io.errors import user_stacklevel

_CONVERGENCE_WARNING: type[UserWarning] | None = None


def convergence_warning(named: bool = True) -> type[UserWarning]:
    """The class of the warning a fit gives when it stops at ``max_iter`` before ``tol``.

    Built once, on first use: a subclass of scikit-learn's ``ConvergenceWarning`` when
    scikit-learn is installed (so ``pytest.warns(sklearn.exceptions.ConvergenceWarning)``
    and sklearn's own filters catch it), else of ``UserWarning``. It is built lazily
    because importing scikit-learn takes about a second; a process pays that only when it
    names ``ConvergenceWarning`` (``named``). A fit that warns first (``named=False``)
    imports scikit-learn only if it is imported already: that takes about 80 MB, which a fit
    under ``memory_limit`` cannot spend on a warning, and a process that filters on
    sklearn's class has imported sklearn. Import it as ``scalenmf.ConvergenceWarning`` or
    ``scalenmf.engine.loop.ConvergenceWarning``.
    """
    global _CONVERGENCE_WARNING
    if _CONVERGENCE_WARNING is None:
        base: type[UserWarning] = UserWarning
        if named or "sklearn" in sys.modules:
            try:
                from sklearn.exceptions import ConvergenceWarning as sklearn_warning

                base = sklearn_warning
            except ImportError:
                pass

        class ConvergenceWarning(base):  # type: ignore[valid-type,misc]
            """A fit stopped at ``max_iter`` before meeting ``tol``."""

        ConvergenceWarning.__module__ = __name__
        ConvergenceWarning.__qualname__ = "ConvergenceWarning"
        _CONVERGENCE_WARNING = ConvergenceWarning
    return _CONVERGENCE_WARNING


def __getattr__(name: str) -> Any:
    if name == "ConvergenceWarning":
        return convergence_warning()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class IterationInfo:
    """Passed to callbacks after every iteration."""

    iteration: int
    objectives: list[float]  # one per run (nan for runs already converged)
    relative_errors: list[float]
    elapsed_s: float
    active: tuple[int, ...]


class AlternatingModel(Protocol):
    n_runs: int

    @property
    def step(self) -> Any:
        """The module-level block function (a ``BlockFn``) run on every block."""

    def broadcast(self, active: list[int], first: bool) -> Any: ...

    def score(self, run: int, partials: Any, index: int) -> tuple[float, float]:
        """(objective, relative error) of the run's current global factor and new blocks."""

    def advance(self, run: int, partials: Any, index: int) -> None:
        """Update the run's global factor from its summed partials."""

    # Models that can be checkpointed also offer ``get_state() -> dict`` (arrays, lists of
    # arrays, JSON values) and ``set_state(dict)``; the driver asks for them only then.


@dataclass
class LoopTrace:
    """What the driver records for every run."""

    objectives: list[list[float]]
    relative_errors: list[list[float]]
    iter_times: list[float] = field(default_factory=list)  # seconds since the loop began
    n_iter: list[int] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    total_s: float = 0.0


def _kept_error(trace: LoopTrace) -> str:
    """``rel.err`` of the run with the lowest latest objective (the one a fit keeps)."""
    latest = [
        (objs[-1], errs[-1])
        for objs, errs in zip(trace.objectives, trace.relative_errors, strict=True)
        if objs and not math.isnan(objs[-1])
    ]
    if not latest:
        return "rel.err nan"
    return f"rel.err {min(latest)[1]:.5g}"


def run_alternating(
    model: AlternatingModel,
    executor: Executor,
    *,
    max_iter: int,
    tol: float,
    callback: Callable[[IterationInfo], Any] | None = None,
    progress: Any = None,
    validate_first: bool = False,
    checkpoint: Checkpointer | None = None,
    resume: LoopSnapshot | None = None,
) -> LoopTrace:
    """Iterate ``model`` on ``executor`` until every run converges or ``max_iter``.

    Each iteration: one ``map_reduce`` (one read of X), then per active run the objective
    of (global factor, new block factors) and — unless the run just converged or hit
    ``max_iter`` — the global update. So the factors a run ends with are exactly the ones
    its last recorded objective describes.

    Parameters
    ----------
    tol : float
        A run converges when ``(f_prev − f) / |f_prev| < tol`` (tol = 0: never).
    progress : tqdm-like or None
        An object with ``update(n)`` and ``set_postfix_str(s)``.
    checkpoint : Checkpointer, optional
        Saves a ``LoopSnapshot`` whenever ``checkpoint.due(iteration)`` (never after the
        last iteration: the result itself is saved then).
    resume : LoopSnapshot, optional
        Continue from this snapshot: the model and the executor's block states are set
        from it and iteration ``resume.iteration + 1`` comes next.
    """
    R = model.n_runs
    trace = LoopTrace([[] for _ in range(R)], [[] for _ in range(R)])
    n_iter = [0] * R
    converged = [False] * R
    active = list(range(R))
    t0 = time.perf_counter()
    first_it = 1
    if resume is not None:
        _restore(model, executor, resume)
        trace.objectives = [list(o) for o in resume.objectives]
        trace.relative_errors = [list(e) for e in resume.relative_errors]
        trace.iter_times = list(resume.iter_times)
        n_iter, converged, active = list(resume.n_iter), list(resume.converged), list(resume.active)
        t0 -= resume.elapsed_s
        first_it = resume.iteration + 1
        if progress is not None:
            progress.update(resume.iteration)
    scope = getattr(executor, "compute_scope", None)
    # An executor may hold a setting for the whole loop (the local one pins BLAS to one
    # thread for small problems, W updates included).
    with scope() if scope is not None else contextlib.nullcontext():
        for it in range(first_it, max_iter + 1):
            bc = model.broadcast(active, first=validate_first and it == 1)
            partials = executor.map_reduce(model.step, bc)
            objs = [math.nan] * R
            errs = [math.nan] * R
            still = []
            for idx, run in enumerate(active):
                f, rel = model.score(run, partials, idx)
                prev = trace.objectives[run][-1] if trace.objectives[run] else None
                trace.objectives[run].append(f)
                trace.relative_errors[run].append(rel)
                objs[run], errs[run] = f, rel
                n_iter[run] = it
                done = prev is not None and tol > 0 and (prev - f) <= tol * abs(prev)
                if done:
                    converged[run] = True
                elif it < max_iter:
                    model.advance(run, partials, idx)
                    still.append(run)
            trace.iter_times.append(time.perf_counter() - t0)
            if callback is not None:
                callback(IterationInfo(it, objs, errs, trace.iter_times[-1], tuple(active)))
            if progress is not None:
                # The run the fit would keep now (lowest objective), so that the bar ends
                # on the relative error the result reports. refresh=False: the bar redraws
                # at its own pace (tqdm's mininterval), not on every fast iteration.
                progress.set_postfix_str(_kept_error(trace), refresh=False)
                progress.update(1)
            active = still
            if not active:
                break
            if checkpoint is not None and it < max_iter and checkpoint.due(it):
                checkpoint.save(
                    _snapshot(model, executor, trace, it, n_iter, converged, active, t0)
                )
    trace.n_iter = n_iter
    trace.converged = converged
    trace.total_s = time.perf_counter() - t0
    if progress is not None:
        finish_progress(progress, max(n_iter, default=0), _kept_error(trace))
    if tol > 0 and not all(converged):
        warnings.warn(
            f"stopped at max_iter={max_iter} before the objective's relative change fell "
            f"below tol={tol:g} ({R - sum(converged)} of {R} runs); raise max_iter or tol",
            convergence_warning(named=False),
            stacklevel=user_stacklevel(),
        )
    return trace


def _model_state(model: Any) -> dict[str, Any]:
    get_state = getattr(model, "get_state", None)
    if get_state is None:
        raise TypeError(f"{type(model).__name__} cannot be checkpointed (it has no get_state)")
    return dict(get_state())


def _snapshot(
    model: Any,
    executor: Executor,
    trace: LoopTrace,
    it: int,
    n_iter: list[int],
    converged: list[bool],
    active: list[int],
    t0: float,
) -> LoopSnapshot:
    model_state = _model_state(model)
    # Lazy: the checkpoint writer takes the states one at a time (with states kept in a
    # scratch store, they never sit in memory together).
    block_states: Iterable[Any] = executor.states()
    pack = getattr(model, "pack_states", None)
    if pack is not None:
        # States the checkpoint format cannot hold as they are travel as lists of arrays,
        # with the model's description of how to rebuild them (filled as they go by).
        block_states, model_state["_block_layout"] = pack(block_states)
    return LoopSnapshot(
        iteration=it,
        objectives=[list(o) for o in trace.objectives],
        relative_errors=[list(e) for e in trace.relative_errors],
        iter_times=list(trace.iter_times),
        n_iter=list(n_iter),
        converged=list(converged),
        active=list(active),
        model_state=model_state,
        block_states=block_states,
        elapsed_s=time.perf_counter() - t0,
    )


def _restore(model: Any, executor: Executor, snap: LoopSnapshot) -> None:
    set_state = getattr(model, "set_state", None)
    if set_state is None:
        raise TypeError(f"{type(model).__name__} cannot resume (it has no set_state)")
    if len(snap.n_iter) != model.n_runs:
        raise ValueError(f"the checkpoint has {len(snap.n_iter)} runs, the model {model.n_runs}")
    state = dict(snap.model_state)
    layout = state.pop("_block_layout", None)
    set_state(state)
    blocks: Iterable[Any] = snap.block_states
    if layout is not None:
        blocks = model.unpack_states(blocks, layout)
    executor.set_states(blocks)
