"""AnnData objects as matrix sources (no math; AnnData itself is imported only by callers).

AnnData holds cells × genes (obs × var); scalenmf's X is genes × cells, so the source is the
transposed view of ``adata.X`` or of a layer — never a dense copy: a CSR matrix transposes
to CSC sharing its arrays, a dense array to a view, a dask array lazily. An AnnData opened
with ``backed="r"`` is read by cell blocks straight from its ``.h5ad`` file (the file's
reader, ``io/formats/h5ad.py``). Row labels are ``var_names``, column labels ``obs_names``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf.io.errors import InputError
from scalenmf.io.matrix import as_source
from scalenmf.io.source import MatrixSource


def is_anndata(obj: Any) -> bool:
    """True for an ``anndata.AnnData`` (checked by type name, without importing anndata)."""
    return any(c.__name__ == "AnnData" for c in type(obj).__mro__) and hasattr(obj, "obs_names")


def _transposed(matrix: Any, where: str) -> Any:
    if sp.issparse(matrix) or isinstance(matrix, np.ndarray):
        return matrix.T
    if type(matrix).__module__.startswith("dask"):
        return matrix.T
    if hasattr(matrix, "to_memory"):  # a backed sparse dataset of a layer or obsm
        return matrix.to_memory().T
    if hasattr(matrix, "__array__"):
        return np.asarray(matrix).T
    raise InputError(f"{where} is a {type(matrix).__name__}, which scalenmf cannot read")


def anndata_source(adata: Any, layer: str | None = None) -> MatrixSource:
    """The genes × cells source behind ``adata.X`` or ``adata.layers[layer]``.

    Parameters
    ----------
    adata : anndata.AnnData, shape (n_obs, n_vars)
        In memory or opened with ``backed="r"``.
    layer : str, optional
        Read this layer instead of X.

    Returns
    -------
    MatrixSource, shape (n_vars, n_obs)
        Labelled with ``var_names`` (rows) and ``obs_names`` (columns).
    """
    if layer is not None:
        if layer not in adata.layers:
            names = ", ".join(repr(n) for n in adata.layers.keys()) or "none"
            raise InputError(f"AnnData has no layer {layer!r} (its layers: {names})")
        matrix, where = adata.layers[layer], f"layer {layer!r}"
    else:
        if getattr(adata, "isbacked", False) and getattr(adata, "filename", None):
            from scalenmf.io.formats.h5ad import read

            return read(Path(adata.filename))  # labels come from the file
        matrix, where = adata.X, "adata.X"
        if matrix is None:
            raise InputError("AnnData has no X; name the matrix to factorize with layer=")
    if tuple(matrix.shape) != (adata.n_obs, adata.n_vars):
        raise InputError(f"{where} has shape {matrix.shape}, not (n_obs, n_vars)")
    source = as_source(_transposed(matrix, where))
    return source.set_labels(
        np.asarray(adata.var_names, dtype=str), np.asarray(adata.obs_names, dtype=str)
    )
