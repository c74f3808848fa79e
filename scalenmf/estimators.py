"""A scikit-learn-style estimator over the same code path as ``scalenmf.nmf``.

Orientation: like scikit-learn, ``fit(X)`` takes X as **samples × features** (n, m); it
transposes at this edge only. ``components_`` (k, m) is Wᵀ; ``transform`` returns Hᵀ (n, k).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf.api import check_rank, nmf, resolve_solver
from scalenmf.engine.executor import make_executor
from scalenmf.io.source import as_source
from scalenmf.kernels import sq_norm
from scalenmf.models.nmf import NMFConfig
from scalenmf.models.transfer import project_blocks


def _transpose(X: Any) -> Any:
    if sp.issparse(X):
        return sp.csc_matrix(X.T)
    return np.asarray(X).T


class NMF:
    """Non-negative matrix factorization, scikit-learn style (samples × features input).

    Parameters
    ----------
    n_components : int
        Rank k.
    solver, loss, init, l1_w, l1_h, l2_w, l2_h, max_iter, tol, n_runs, scheduler, workers,
    memory_limit, nnls, dtype : see ``scalenmf.nmf``.
    random_state : int or None
        The seed.

    Attributes
    ----------
    components_ : ndarray, shape (k, n_features)
        Wᵀ.
    n_iter_ : int
    reconstruction_err_ : float
        ``‖X − WH‖_F`` (absolute, as scikit-learn reports it).
    result_ : NMFResult
        The full result of the fit (features × samples orientation).
    """

    def __init__(
        self,
        n_components: int = 2,
        *,
        solver: str | None = None,
        loss: str = "frobenius",
        init: str = "nndsvda",
        l1_w: float = 0.0,
        l1_h: float = 0.0,
        l2_w: float = 0.0,
        l2_h: float = 0.0,
        max_iter: int = 200,
        tol: float = 1e-4,
        random_state: int | None = 0,
        n_runs: int = 1,
        scheduler: Any = None,
        workers: int | None = None,
        memory_limit: Any = None,
        nnls: str = "bpp",
        dtype: Any = None,
    ):
        self.n_components = n_components
        self.solver = solver
        self.loss = loss
        self.init = init
        self.l1_w = l1_w
        self.l1_h = l1_h
        self.l2_w = l2_w
        self.l2_h = l2_h
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_runs = n_runs
        self.scheduler = scheduler
        self.workers = workers
        self.memory_limit = memory_limit
        self.nnls = nnls
        self.dtype = dtype

    # -- scikit-learn protocol ----------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> NMF:
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for NMF; valid: {sorted(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [
            f"{n}={v!r}"
            for n, v in self.get_params().items()
            if defaults.get(n) is not v and defaults.get(n) != v
        ]
        return f"NMF({', '.join(changed)})"

    # -- fitting ------------------------------------------------------------------------
    def _fit_kwargs(self) -> dict[str, Any]:
        return {
            "solver": self.solver,
            "loss": self.loss,
            "init": self.init,
            "l1_w": self.l1_w,
            "l1_h": self.l1_h,
            "l2_w": self.l2_w,
            "l2_h": self.l2_h,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "seed": self.random_state,
            "n_runs": self.n_runs,
            "scheduler": self.scheduler,
            "workers": self.workers,
            "memory_limit": self.memory_limit,
            "nnls": self.nnls,
            "dtype": self.dtype,
            "progress": False,
        }

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit to X (n_samples, n_features) and return the coefficients (n_samples, k)."""
        result = nmf(_transpose(X), self.n_components, **self._fit_kwargs())
        self.result_ = result
        self.components_ = result.W.T.copy()
        self.n_components_ = result.k
        self.n_iter_ = result.n_iter
        self.n_features_in_ = result.W.shape[0]
        self.reconstruction_err_ = result.relative_error * float(np.sqrt(sq_norm(_transpose(X))))
        return result.H.T.copy()

    def fit(self, X: Any, y: Any = None) -> NMF:
        """Fit to X (n_samples, n_features)."""
        self.fit_transform(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Coefficients of new samples X (n_samples, n_features) with the basis frozen.

        The same H-step as fitting, iterated with W fixed (``fit`` with the basis frozen).
        """
        if not hasattr(self, "components_"):
            raise ValueError("this NMF instance is not fitted yet; call fit first")
        source = as_source(_transpose(X))
        if source.shape[0] != self.n_features_in_:
            raise ValueError(
                f"X has {source.shape[0]} features, but NMF was fitted with {self.n_features_in_}"
            )
        check_rank(1, source.shape)
        loss = self.result_.params["loss"]
        solver = resolve_solver(self.result_.params["solver"], loss)
        config = NMFConfig(
            k=self.n_components_,
            solver=solver,
            loss=loss,
            l1_h=self.l1_h,
            l2_h=self.l2_h,
            nnls=self.nnls,
            inner_sweeps=200,
            inner_tol=1e-10,  # a projection is solved once: solve it tightly
        )
        W = self.components_.T.astype(source.dtype)
        executor = make_executor(source, scheduler=self.scheduler, workers=self.workers)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=UserWarning)
                H, _, _ = project_blocks(
                    executor, W, config, max_iter=max(self.max_iter, 200), tol=1e-8
                )
        finally:
            executor.close()
        return H.T.copy()

    def inverse_transform(self, H: np.ndarray) -> np.ndarray:
        """Samples × features reconstruction from coefficients (n_samples, k)."""
        return np.asarray(H) @ self.components_
