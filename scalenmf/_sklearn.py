"""scikit-learn's estimator base classes, or small stand-ins when it is not installed.

scikit-learn (≥ 1.6) is an optional extra of scalenmf (``pip install scalenmf[sklearn]``). The
estimators in ``scalenmf.estimators`` derive from the names this module exports:

- with scikit-learn installed, they *are* sklearn's ``BaseEstimator``, ``TransformerMixin``
  and ``ClassNamePrefixFeaturesOutMixin``, and the estimators are full scikit-learn
  citizens (tags, ``set_output``, HTML repr, ``clone``, pipelines, ``check_estimator``);
- without it, the stand-ins below give the same user-facing core (``get_params`` /
  ``set_params``, a repr showing changed parameters, ``fit_transform``,
  ``get_feature_names_out``, ``feature_names_in_`` from a pandas frame,
  ``NotFittedError``), so code written against the estimator runs unchanged.

The choice is made once, at import; ``HAVE_SKLEARN`` says which it was (an older
scikit-learn, without ``validate_data`` and tags, counts as absent).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import scipy.sparse as sp

try:
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

    HAVE_SKLEARN = True
except ImportError:  # the stand-ins: tests/estimators/test_sklearn.py runs them in a child
    HAVE_SKLEARN = False

    class NotFittedError(ValueError, AttributeError):  # type: ignore[no-redef]
        """The estimator is used before ``fit`` (sklearn's class of the same name)."""

    class BaseEstimator:  # type: ignore[no-redef]
        """Parameters are the keyword arguments of ``__init__``, stored unchanged."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            sig = inspect.signature(cls.__init__)
            return sorted(p for p in sig.parameters if p != "self")

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params: Any) -> Any:
            valid = set(self._get_param_names())
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(
                        f"invalid parameter {name!r} for {type(self).__name__}; "
                        f"valid: {sorted(valid)}"
                    )
                setattr(self, name, value)
            return self

        def __repr__(self) -> str:
            defaults = {
                n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()
            }
            changed = []
            for name, value in self.get_params().items():
                default = defaults.get(name, inspect.Parameter.empty)
                if default is value or _same(default, value):
                    continue
                changed.append(f"{name}={value!r}")
            return f"{type(self).__name__}({', '.join(changed)})"

    class TransformerMixin:  # type: ignore[no-redef]
        def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
            return self.fit(X, y, **fit_params).transform(X)  # type: ignore[attr-defined]

    class ClassNamePrefixFeaturesOutMixin:  # type: ignore[no-redef]
        """Output features named ``<class name lower-cased><i>`` (``nmf0``, ``nmf1``, …)."""

        def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
            check_is_fitted(self, "_n_features_out")
            prefix = type(self).__name__.lower()
            n_out = int(self._n_features_out)  # type: ignore[attr-defined]
            return np.asarray([f"{prefix}{i}" for i in range(n_out)], dtype=object)

    def check_is_fitted(estimator: Any, attributes: Any = None) -> None:
        names = [attributes] if isinstance(attributes, str) else attributes
        if names is None:
            fitted = any(v.endswith("_") and not v.startswith("__") for v in vars(estimator))
        else:
            fitted = all(hasattr(estimator, name) for name in names)
        if not fitted:
            raise NotFittedError(
                f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' "
                "with appropriate arguments before using this estimator."
            )

    def check_non_negative(X: Any, whom: str) -> None:
        data = X.data if sp.issparse(X) else np.asarray(X)
        if data.size and np.nanmin(data) < 0:
            raise ValueError(f"Negative values in data passed to {whom}.")

    def validate_data(
        estimator: Any,
        X: Any,
        *,
        reset: bool = True,
        accept_sparse: Any = False,
        dtype: Any = None,
        **_: Any,
    ) -> Any:
        """Samples × features array checks in the spirit of sklearn's ``validate_data``."""
        columns = getattr(X, "columns", None)
        names = None
        if columns is not None and all(isinstance(c, str) for c in columns):
            names = np.asarray(list(columns), dtype=object)
        if sp.issparse(X):
            X = sp.csr_matrix(X) if X.format not in ("csr", "csc") else X
        else:
            X = np.asarray(X)
            if X.dtype == object or X.dtype.kind in "biu":
                X = X.astype(np.float64)
        if X.ndim != 2:
            raise ValueError(
                f"Expected a 2D array (n_samples, n_features), got {X.ndim}D; reshape your "
                "data with array.reshape(-1, 1) for a single feature or (1, -1) for a "
                "single sample"
            )
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        n_samples, n_features = X.shape
        if n_samples == 0 or n_features == 0:
            raise ValueError(f"Found array with shape {X.shape}; NMF needs at least 1 sample")
        values = X.data if sp.issparse(X) else X
        if not np.isfinite(values).all():
            raise ValueError("Input X contains NaN or infinity.")
        if reset:
            estimator.n_features_in_ = n_features
            if names is not None:
                estimator.feature_names_in_ = names
            elif hasattr(estimator, "feature_names_in_"):
                del estimator.feature_names_in_
        elif n_features != estimator.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(estimator).__name__} is expecting "
                f"{estimator.n_features_in_} features as input."
            )
        return X

    def _same(a: Any, b: Any) -> bool:
        try:
            return bool(a == b)
        except (TypeError, ValueError):  # arrays and other objects without a plain ==
            return False


__all__ = [
    "HAVE_SKLEARN",
    "BaseEstimator",
    "ClassNamePrefixFeaturesOutMixin",
    "NotFittedError",
    "TransformerMixin",
    "check_is_fitted",
    "check_non_negative",
    "validate_data",
]
