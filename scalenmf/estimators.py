"""A scikit-learn estimator over the same code path as ``scalenmf.nmf``.

Orientation: like scikit-learn, ``fit(X)`` takes X as **samples × features** (n, m); it
transposes at this edge only, and every error it raises speaks of samples and features.
``components_`` (k, m) is Wᵀ; ``transform`` returns Hᵀ (n, k).

With scikit-learn installed (the optional ``sklearn`` extra) ``NMF`` derives from its
``BaseEstimator``, ``TransformerMixin`` and ``ClassNamePrefixFeaturesOutMixin``: it
clones, sits in pipelines (HTML repr included), honours ``set_output(transform="pandas")``
and passes ``sklearn.utils.estimator_checks.check_estimator``. Without it the estimator
still imports and fits, on the small stand-ins of ``scalenmf._sklearn``.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf._sklearn import (
    HAVE_SKLEARN,
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    check_is_fitted,
    check_non_negative,
    validate_data,
)
from scalenmf.api import nmf
from scalenmf.kernels import sq_norm
from scalenmf.kernels.mu import kl_block
from scalenmf.validation import NMF_RULES

#: Solver names of scikit-learn's NMF accepted as aliases: its ``cd`` is one coordinate
#: sweep per half-step, which is scalenmf's ``hals``.
SOLVER_ALIASES = {"cd": "hals"}
#: KL multiplicative H steps of a partial_fit batch (seen once; scikit-learn's
#: MiniBatchNMF solves a batch's H with up to 30 steps too).
PARTIAL_FIT_MU_STEPS = 30


def _features_by_samples(X: Any) -> Any:
    """The validated samples × features X as the engine's features × samples matrix."""
    if sp.issparse(X):
        return sp.csc_matrix(X.T)  # CSR (n, m) transposes to CSC (m, n) without copying
    return X.T  # a transposed view: its columns (the samples) are contiguous


def _seed(random_state: Any) -> int | None:
    """The integer seed behind scikit-learn's ``random_state`` conventions."""
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int32).max))
    raise ValueError(
        "random_state must be an int, None, a numpy RandomState or a numpy Generator; "
        f"got {random_state!r}"
    )


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization, scikit-learn style (samples × features input).

    Finds ``X ≈ transform(X) @ components_`` with both factors non-negative, on the
    engine of ``scalenmf.nmf`` (so the same fit runs out of core or on Dask).

    Parameters
    ----------
    n_components : int or None, default 2
        Rank k; None uses all features (k = n_features). At most
        ``min(n_samples, n_features)``.
    solver : {"als", "hals", "mu", "cd", "online"} or None
        Default ``"als"`` for Frobenius and ``"mu"`` for KL; ``"cd"`` (scikit-learn's
        name) is ``"hals"``; ``"online"``: ``fit`` by mini-batches (``scalenmf.nmf``).
        ``partial_fit`` always solves H exactly (Frobenius) or by MU (KL).
    loss : {"frobenius", "kl", "kullback-leibler"}
    init : {"nndsvda", "nndsvd", "random"}
    l1_w, l1_h, l2_w, l2_h : float
        L1 / L2 penalties on the basis (``components_``) and on the coefficients. (W here
        is scalenmf's basis, features × k, i.e. ``components_.T``.)
    max_iter, tol, n_runs, scheduler, workers, memory_limit, nnls, dtype, backend, device :
        See ``scalenmf.nmf`` (``device="cuda"`` fits on a GPU).
    scratch : str or path, optional
        Where a fit under ``memory_limit`` keeps what it spills (H blocks, states): see
        ``scalenmf.nmf``; default ``$SCALENMF_SCRATCH``, else the system temp directory.
    batch_size : int or None
        ``solver="online"``: samples per mini-batch of ``fit`` (see ``scalenmf.nmf``).
    forget_factor : float in (0, 1] or None
        How much of the accumulated statistics one pass over ``n_ref`` samples keeps
        (``n_ref``: the samples of the first ``partial_fit`` batch, or of ``fit``); a
        ``partial_fit`` batch of b samples scales them by ``forget_factor ** (b / n_ref)``.
        Default 0.7 (scikit-learn's MiniBatchNMF). With ``solver="online"`` it is passed
        to ``fit`` (where its default None is a schedule: forgetting in the first epoch
        only, see ``scalenmf.nmf``).
    random_state : int, None, numpy RandomState or Generator, default 0
        Seeds the fit; a RandomState or Generator is drawn from once per fit.

    Attributes
    ----------
    components_ : ndarray, shape (n_components, n_features)
        Wᵀ, in the working dtype (float32 input stays float32).
    n_components_ : int
    n_iter_ : int
    reconstruction_err_ : float
        ``‖X − WH‖_F`` (absolute, as scikit-learn reports it).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When X was a DataFrame with string column names.
    result_ : NMFResult
        The full result of ``fit`` (features × samples orientation); ``partial_fit``
        removes it (it no longer describes the basis).
    n_steps_ : int
        Mini-batches seen by ``partial_fit`` (0 after ``fit``).

    Examples
    --------
    >>> import numpy as np, scalenmf
    >>> X = np.random.default_rng(0).poisson(4.0, size=(60, 12)).astype(float)
    >>> model = scalenmf.NMF(n_components=3, random_state=0)
    >>> model.fit_transform(X).shape, model.components_.shape
    ((60, 3), (3, 12))
    >>> list(model.get_feature_names_out())
    ['nmf0', 'nmf1', 'nmf2']
    >>> online = scalenmf.NMF(n_components=3, random_state=0)
    >>> for batch in np.array_split(X, 3):
    ...     online = online.partial_fit(batch)
    >>> online.n_steps_, online.transform(X).shape
    (3, (60, 3))
    """

    def __init__(
        self,
        n_components: int | None = 2,
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
        random_state: Any = 0,
        n_runs: int = 1,
        scheduler: Any = None,
        workers: int | None = None,
        memory_limit: Any = None,
        nnls: str = "bpp",
        dtype: Any = None,
        backend: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        forget_factor: float | None = None,
        scratch: Any = None,
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
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self.forget_factor = forget_factor
        self.scratch = scratch

    if HAVE_SKLEARN:

        def __sklearn_tags__(self) -> Any:
            tags = super().__sklearn_tags__()
            tags.input_tags.positive_only = True
            tags.input_tags.sparse = True
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
            return tags

    @property
    def _n_features_out(self) -> int:
        """Output features of ``transform``: one per component."""
        return int(self.components_.shape[0])

    # -- validation ---------------------------------------------------------------------
    def _check_X(self, X: Any, *, reset: bool) -> Any:
        X = validate_data(
            self, X, reset=reset, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32]
        )
        check_non_negative(X, f"{type(self).__name__} (input X)")
        return X

    def _rank(self, n_samples: int, n_features: int) -> int:
        k = self.n_components
        if k is None:
            k = n_features
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(
                f"n_components must be a positive int or None (all features); got {k!r}"
            )
        limit = min(n_samples, n_features)
        if k > limit:
            raise ValueError(
                f"n_components={k} must be at most min(n_samples, n_features) = {limit} for X "
                f"with {n_samples} sample(s) and {n_features} feature(s)"
            )
        return int(k)

    def _solver(self) -> str | None:
        return SOLVER_ALIASES.get(self.solver, self.solver) if self.solver else None

    # -- fitting ------------------------------------------------------------------------
    def _loss(self) -> str:
        """The loss's canonical name ("frobenius" or "kl"), checked."""
        return str(NMF_RULES["loss"].check("loss", self.loss))

    def _fit_kwargs(self) -> dict[str, Any]:
        online = self._solver() == "online"
        return {
            "batch_size": self.batch_size if online else None,
            "forget_factor": self.forget_factor if online else None,
            "solver": self._solver(),
            "loss": self.loss,
            "init": self.init,
            "l1_w": self.l1_w,
            "l1_h": self.l1_h,
            "l2_w": self.l2_w,
            "l2_h": self.l2_h,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "seed": _seed(self.random_state),
            "n_runs": self.n_runs,
            "scheduler": self.scheduler,
            "workers": self.workers,
            "memory_limit": self.memory_limit,
            "scratch": self.scratch,
            "nnls": self.nnls,
            "dtype": self.dtype,
            "backend": self.backend,
            "device": self.device,
            "progress": False,
        }

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit to X (n_samples, n_features) and return the coefficients (n_samples, k).

        Parameters
        ----------
        X : array-like or sparse matrix, shape (n_samples, n_features)
            Non-negative data; a pandas DataFrame (numbers of any dtype, object included)
            records ``feature_names_in_``.
        y : ignored

        Returns
        -------
        ndarray, shape (n_samples, n_components)
        """
        X = self._check_X(X, reset=True)
        k = self._rank(*X.shape)
        result = nmf(_features_by_samples(X), k, **self._fit_kwargs())
        self.result_ = result
        self.components_ = np.ascontiguousarray(result.W.T)
        self.n_components_ = int(result.k)
        self.n_iter_ = int(result.n_iter)
        self.reconstruction_err_ = result.relative_error * float(np.sqrt(sq_norm(X)))
        # The statistics partial_fit continues from: those of the fitted samples.
        # H of a fit under a memory limit may be a Zarr array in scratch; the estimator
        # returns it as an array (scikit-learn's contract), so it is read once here.
        H = np.asarray(result.H[...])
        self._stats_ = self._fit_statistics(result.W, H, _features_by_samples(X))
        self._n_ref_ = int(X.shape[0])
        self.n_steps_ = 0
        return np.ascontiguousarray(H.T)

    def _fit_statistics(
        self, W: np.ndarray, H: np.ndarray, X_fs: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B)`` of the online W step for the fitted W (m, k), H (k, n) on X
        (features × samples)."""
        H64 = H.astype(np.float64)
        if self._loss() == "kl":
            numer, hsum, _, _ = kl_block(W, X_fs, H)
            return W.astype(np.float64) * numer, hsum
        return H64 @ H64.T, np.asarray(X_fs @ H64.T, dtype=np.float64)

    def partial_fit(self, X: Any, y: Any = None) -> NMF:
        """Update the basis with one mini-batch of samples X (n_samples, n_features).

        Online NMF as scalenmf's ``solver="online"`` (``models/online.py``) and
        scikit-learn's ``MiniBatchNMF.partial_fit``: the batch's coefficients are solved
        with the current basis (exact NNLS for Frobenius, ``30`` multiplicative steps for
        KL), its sufficient statistics are added to the accumulated ones, which are first
        scaled by ``forget_factor ** (n_batch / n_ref)`` — Frobenius ``A = Σ H Hᵀ``,
        ``B = Σ X Hᵀ``; KL the multiplicative-update numerator and denominator — and the
        basis is the W step of the accumulated statistics (with the W penalties).

        The first call (on an unfitted estimator) initialises the basis from its batch with
        ``init`` (so that batch needs at least ``n_components`` samples) and fixes
        ``n_features_in_``; later batches may have any number of samples but must have the
        same features. After ``fit``, ``partial_fit`` continues from the fitted basis and
        the statistics of the fitted samples.

        Parameters
        ----------
        X : array-like or sparse matrix, shape (n_samples, n_features)
            Non-negative data.
        y : ignored

        Returns
        -------
        NMF
            The estimator, its ``components_`` updated.
        """
        from dataclasses import replace

        from scalenmf.api import cluster_options
        from scalenmf.api._common import kernel_backend, model_config
        from scalenmf.io.matrix import as_source
        from scalenmf.models.init import initialize
        from scalenmf.models.nmf import NMFModel
        from scalenmf.models.online import batch_statistics, w_from_statistics
        from scalenmf.models.step import fit_step, initial_states

        first = not hasattr(self, "components_")
        X = self._check_X(X, reset=first)
        loss = self._loss()
        if first:
            k = self._rank(*X.shape)
            seed = _seed(self.random_state)
        else:
            k = int(self.n_components_)
        forget = 0.7 if self.forget_factor is None else self.forget_factor
        if not (isinstance(forget, numbers.Real) and 0.0 < float(forget) <= 1.0):
            raise ValueError(f"forget_factor must be in (0, 1]; got {self.forget_factor!r}")
        X_fs = _features_by_samples(X)
        m, n_b = X_fs.shape
        source = as_source(X_fs)
        where = kernel_backend(self.backend, self.device)
        solver = "mu" if loss == "kl" else "als"
        p = {"solver": solver, "loss": loss, "nnls": self.nnls}
        p.update(l1_w=self.l1_w, l1_h=self.l1_h, l2_w=self.l2_w, l2_h=self.l2_h)
        config = model_config(p, k=k, mu_steps=PARTIAL_FIT_MU_STEPS if loss == "kl" else 1)
        config = replace(config, backend=where["backend"], device=where["device"])
        # The working dtype: ``dtype`` or the first batch's, then that of the components.
        dtype = np.dtype(self.dtype or X.dtype) if first else self.components_.dtype
        cluster = cluster_options(
            self.scheduler, self.workers, self.memory_limit, scratch=self.scratch
        )
        with cluster.executor(source) as executor:
            if first:
                start = initialize(executor, k, self.init, seed, 1, np.dtype(dtype))
                if start.xx == 0:
                    raise ValueError(
                        "the first batch of partial_fit is all zeros; there is nothing to "
                        "initialise the components from"
                    )
                W = np.ascontiguousarray(start.Ws[0], dtype=dtype)
            else:
                W = np.ascontiguousarray(self.components_.T, dtype=dtype)
            mean = float(X_fs.sum()) / max(1, m * n_b)
            model = NMFModel(config, [W], [float(np.sqrt(mean / k)) or 1.0], 0.0)
            executor.set_states(initial_states([0] * source.n_blocks))
            part, a = model.part(executor.map_reduce(fit_step, model.broadcast([0], False)), 0)
        A_b, B_b = batch_statistics(config, W, part, a)
        stats = getattr(self, "_stats_", None)
        if first or stats is None:
            self._n_ref_ = int(n_b)
            A, B = A_b, B_b
        else:
            rho = float(forget) ** (n_b / max(1, self._n_ref_))
            A, B = rho * stats[0] + A_b, rho * stats[1] + B_b
        W = w_from_statistics(config, W, A, B)
        self._stats_ = (A, B)
        self.components_ = np.ascontiguousarray(W.T)
        self.n_components_ = k
        self.n_steps_ = getattr(self, "n_steps_", 0) + 1
        if hasattr(self, "result_"):
            del self.result_
        return self

    def fit(self, X: Any, y: Any = None) -> NMF:
        """Fit to X (n_samples, n_features); returns the estimator."""
        self.fit_transform(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Coefficients of samples X (n_samples, n_features) with the basis held fixed.

        Each sample is solved exactly and independently (``scalenmf.project``: block
        principal pivoting for Frobenius, multiplicative updates to convergence for KL), so
        a sample's coefficients do not depend on the other samples passed with it.

        Returns
        -------
        ndarray, shape (n_samples, n_components)
        """
        check_is_fitted(self, "components_")
        X = self._check_X(X, reset=False)
        n_samples = X.shape[0]
        dtype = self.components_.dtype
        if (X.nnz if sp.issparse(X) else np.count_nonzero(X)) == 0:
            return np.zeros((n_samples, self.n_components_), dtype=dtype)
        from scalenmf.api.project import project

        loss = self._loss()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            projected = project(
                self.components_.T,
                _features_by_samples(X),
                loss=loss,
                solver="mu" if loss == "kl" else "als",
                nnls="bpp",
                l1_h=self.l1_h,
                l2_h=self.l2_h,
                novelty_cosine=None,
                novelty_z=None,
                scheduler=self.scheduler,
                workers=self.workers,
                memory_limit=self.memory_limit,
                scratch=self.scratch,
                dtype=dtype,
                progress=False,
            )
        return np.ascontiguousarray(np.asarray(projected.H[...]).T, dtype=dtype)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Samples × features reconstruction ``X @ components_`` from coefficients (n, k)."""
        check_is_fitted(self, "components_")
        H = np.asarray(X)
        if H.ndim != 2 or H.shape[1] != self.n_components_:
            raise ValueError(
                f"expected coefficients of shape (n_samples, {self.n_components_}); got {H.shape}"
            )
        return H @ self.components_


class MiniBatchNMF(NMF):
    """:class:`NMF` fitted by mini-batches: ``solver="online"`` and scikit-learn's
    ``MiniBatchNMF`` defaults (``batch_size=1024``, ``forget_factor=0.7``).

    ``fit`` makes passes (epochs) over X in mini-batches, updating the basis from
    accumulated statistics (``scalenmf.nmf(..., solver="online")``, out of core and on
    Dask like every fit); ``partial_fit`` takes one batch at a time, for data that arrive
    in pieces or never fit in memory. Every other parameter is :class:`NMF`'s.

    Examples
    --------
    >>> import numpy as np, scalenmf
    >>> X = np.random.default_rng(0).poisson(4.0, size=(300, 12)).astype(float)
    >>> model = scalenmf.MiniBatchNMF(n_components=3, batch_size=100, random_state=0)
    >>> model.fit_transform(X).shape
    (300, 3)
    >>> for batch in np.array_split(X, 3):
    ...     model = model.partial_fit(batch)
    >>> model.components_.shape
    (3, 12)
    """

    def __init__(
        self,
        n_components: int | None = 2,
        *,
        solver: str | None = "online",
        loss: str = "frobenius",
        init: str = "nndsvda",
        l1_w: float = 0.0,
        l1_h: float = 0.0,
        l2_w: float = 0.0,
        l2_h: float = 0.0,
        max_iter: int = 200,
        tol: float = 1e-4,
        random_state: Any = 0,
        n_runs: int = 1,
        scheduler: Any = None,
        workers: int | None = None,
        memory_limit: Any = None,
        nnls: str = "bpp",
        dtype: Any = None,
        backend: str | None = None,
        device: str | None = None,
        batch_size: int | None = 1024,
        forget_factor: float | None = 0.7,
        scratch: Any = None,
    ):
        super().__init__(
            n_components,
            solver=solver,
            loss=loss,
            init=init,
            l1_w=l1_w,
            l1_h=l1_h,
            l2_w=l2_w,
            l2_h=l2_h,
            max_iter=max_iter,
            tol=tol,
            random_state=random_state,
            n_runs=n_runs,
            scheduler=scheduler,
            workers=workers,
            memory_limit=memory_limit,
            nnls=nnls,
            dtype=dtype,
            backend=backend,
            device=device,
            batch_size=batch_size,
            forget_factor=forget_factor,
            scratch=scratch,
        )
