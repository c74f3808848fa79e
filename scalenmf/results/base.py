"""``Result``: the one base of everything the public functions return.

Every result records ``params`` (the checked parameters of the call) and ``info`` (how it
ran: blocking, input, executor), is saved with ``save(path)`` and shows itself as
``Name(key=value, …)``. Two kinds of store lie behind ``save``:

- a **result store** (one Zarr group, ``scalenmf.io.results``): ``NMFResult``,
  ``LinkedNMFResult``, ``INMFResult``, ``ProjectionResult``. The base writes it from what
  the subclass names (``store_arrays``, ``store_labels``, ``attrs``) and ``load(path)``
  reads it back as the same class;
- a **directory** of tables and stores (``scalenmf.io.selection_store``): ``RankSurvey``
  and ``ConsensusResult`` override ``save``; they are read by the plots and reports, not
  loaded back.

``to_pandas`` gives the result's main tables as labelled DataFrames; ``frame`` is the one
way they are labelled (the input's labels, else positions).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, TypeVar

import numpy as np

from scalenmf._version import __version__
from scalenmf.io.errors import InputError

R = TypeVar("R", bound="Result")


class Result:
    """The base of scalenmf's results (``params``, ``info``, saving, loading, repr).

    Subclasses are dataclasses declaring ``params`` and ``info`` among their fields; they
    are made with ``repr=False`` so that ``__repr__`` here is the one in use.
    """

    #: The ``model`` attr of the result store (empty for a plain NMF result).
    model: ClassVar[str] = ""

    params: dict[str, Any]
    info: dict[str, Any]

    # -- what a subclass names ---------------------------------------------------------
    def attrs(self) -> dict[str, Any]:
        """The JSON metadata written with the store."""
        raise TypeError(f"{type(self).__name__} is not saved as a result store")

    def store_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The arrays of the result store and, for those over samples, the sample axis."""
        raise TypeError(f"{type(self).__name__} is not saved as a result store")

    def store_labels(self) -> dict[str, Any]:
        """Labels written beside the arrays: ``row_labels``, ``col_labels`` and, when
        the result has them, ``factor_labels`` (None: not written)."""
        return {
            "row_labels": getattr(self, "row_labels", None),
            "col_labels": getattr(self, "col_labels", None),
            "factor_labels": getattr(self, "factor_labels", None),
        }

    @classmethod
    def _read(cls, path: str | os.PathLike[str]) -> Result:
        raise TypeError(f"{cls.__name__} is saved as a directory and is not loaded back")

    def _repr_parts(self) -> list[str]:
        return []

    # -- shared ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write the result store at ``path`` atomically (a crash never leaves half a
        result); ``overwrite`` replaces an existing one once the new one is complete.

        Returns
        -------
        str
            ``path``.
        """
        from scalenmf.io.results import write_result

        arrays, sample_axis = self.store_arrays()
        block = self.info.get("block_cols")
        return write_result(
            path,
            arrays,
            attrs=self.attrs(),
            labels=self.store_labels(),
            col_chunk=int(block) if block else None,
            overwrite=overwrite,
            sample_axis=sample_axis,
        )

    @classmethod
    def load(cls: type[R], path: str | os.PathLike[str]) -> R:
        """Read a store written by ``save`` (or the matching CLI command) as this class."""
        result = cls._read(path)
        if not isinstance(result, cls):
            raise InputError(f"{str(path)!r} holds a {type(result).__name__}, not a {cls.__name__}")
        return result

    @property
    def loss(self) -> float:
        """Final objective of the kept fit (NaN when it recorded none)."""
        history = getattr(self, "loss_history", None)
        if history is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'loss'")
        return float(history[-1]) if history else float("nan")

    def fit_attrs(self, **extra: Any) -> dict[str, Any]:
        """The attrs every fitted result stores about its fit, then ``extra`` (which
        may replace them: a projection's ``relative_error`` is over all samples)."""
        p = self.params
        fit: Any = self
        out: dict[str, Any] = {
            "solver": p.get("solver"),
            "loss": p.get("loss"),
            "params": p,
            "seed": p.get("seed"),
            "n_iter": fit.n_iter,
            "converged": fit.converged,
            "loss_history": [float(v) for v in fit.loss_history],
        }
        if "relative_error" not in extra:
            out["relative_error"] = float(fit.relative_error)
        if hasattr(fit, "runs"):
            out["runs"] = fit.runs
        out.update(timings=fit.timings, info=self.info, **extra)
        out["scalenmf_version"] = __version__
        return out

    @staticmethod
    def frame(
        values: Any,
        rows: Any = None,
        cols: Any = None,
        *,
        row_name: str | None = None,
        col_name: str | None = None,
    ) -> Any:
        """``values`` (2-D) as a DataFrame: labelled by ``rows`` / ``cols``, else by
        position."""
        import pandas as pd

        arr = np.asarray(values)
        n_rows, n_cols = arr.shape
        index = pd.Index(np.arange(n_rows) if rows is None else np.asarray(rows), name=row_name)
        columns = pd.Index(np.arange(n_cols) if cols is None else np.asarray(cols), name=col_name)
        return pd.DataFrame(arr, index=index, columns=columns)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._repr_parts())})"


def need(arrays: dict[str, np.ndarray], name: str, path: Any) -> np.ndarray:
    """``arrays[name]``, or an ``InputError`` saying the store at ``path`` lacks it."""
    if name not in arrays:
        raise InputError(f"result store {str(path)!r} lacks array {name!r}")
    return arrays[name]


__all__ = ["Result", "need"]
