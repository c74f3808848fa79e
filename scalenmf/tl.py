"""Scanpy-style tools: fit NMF on an AnnData object and store the factors in it.

``scalenmf.tl.nmf(adata, n_components)`` is to NMF what ``sc.tl.pca`` is to PCA: it writes
the per-cell coefficients to ``adata.obsm["X_nmf"]`` (cells × k, Hᵀ), the gene loadings to
``adata.varm["nmf_W"]`` (genes × k, W) and the parameters, loss history and relative
error to ``adata.uns["nmf"]``. ``NMFResult.to_anndata()`` / ``to_pandas()`` give the same
for a result already computed (they call ``result_to_anndata`` / ``result_to_pandas``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # results import this module lazily (to_anndata)
    from scalenmf.results.nmf import NMFResult


def _factor_names(k: int) -> list[str]:
    return [f"F{i + 1}" for i in range(k)]


def _h5_friendly(value: Any) -> Any:
    """``value`` in a form AnnData can write to ``.h5ad`` / ``.zarr`` (no None, no mixed lists)."""
    if isinstance(value, dict):
        return {str(k): _h5_friendly(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value):
            return np.asarray(value, dtype=np.float64)
        if all(isinstance(v, str) for v in value):
            return np.asarray(value, dtype=object)
        return {str(i): _h5_friendly(v) for i, v in enumerate(value) if v is not None}
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (str, int, float, np.ndarray, np.number)):
        return value
    return str(value)


def nmf_summary(result: NMFResult) -> dict[str, Any]:
    """What ``uns[key]`` holds: parameters, loss history, relative error, iterations."""
    params = {k: v for k, v in result.params.items() if k not in ("scheduler",)}
    return _h5_friendly(
        {
            "params": params,
            "loss_history": np.asarray(result.loss_history, dtype=np.float64),
            "relative_error": float(result.relative_error),
            "n_iter": int(result.n_iter),
            "converged": bool(result.converged),
            "factors": np.asarray(_factor_names(result.k), dtype=object),
        }
    )


def result_to_pandas(result: NMFResult) -> tuple[Any, Any]:
    """W (features × k) and H (k × samples) as DataFrames labelled by the result's labels.

    Factors are named ``F1`` … ``Fk`` as in the report; unlabelled rows or columns get
    their positions.
    """
    import pandas as pd

    names = _factor_names(result.k)
    rows = result.row_labels if result.row_labels is not None else np.arange(result.W.shape[0])
    cols = result.col_labels if result.col_labels is not None else np.arange(result.H.shape[1])
    W = pd.DataFrame(result.W, index=pd.Index(rows, name="feature"), columns=names)
    H = pd.DataFrame(result.H, index=names, columns=pd.Index(cols, name="sample"))
    return W, H


def result_to_anndata(result: NMFResult, X: Any = None, *, key_added: str = "nmf") -> Any:
    """An AnnData (samples × features) holding the result as ``tl.nmf`` writes it.

    Parameters
    ----------
    result : NMFResult
    X : array-like, shape (n_samples, n_features), optional
        The data, to keep beside the factors (default: none, an AnnData with only
        annotations).
    key_added : str
        ``obsm["X_<key>"]``, ``varm["<key>_W"]``, ``uns["<key>"]``.
    """
    import anndata as ad
    import pandas as pd

    m, n = result.W.shape[0], result.H.shape[1]
    rows = result.row_labels if result.row_labels is not None else np.arange(m).astype(str)
    cols = result.col_labels if result.col_labels is not None else np.arange(n).astype(str)
    adata = ad.AnnData(
        X=X,
        obs=pd.DataFrame(index=pd.Index(np.asarray(cols, dtype=str))),
        var=pd.DataFrame(index=pd.Index(np.asarray(rows, dtype=str))),
    )
    _store(adata, result, key_added)
    return adata


def _store(adata: Any, result: NMFResult, key_added: str) -> None:
    adata.obsm[f"X_{key_added}"] = np.ascontiguousarray(result.H.T)
    adata.varm[f"{key_added}_W"] = np.ascontiguousarray(result.W)
    adata.uns[key_added] = nmf_summary(result)


def nmf(
    adata: Any,
    n_components: int,
    *,
    layer: str | None = None,
    key_added: str = "nmf",
    copy: bool = False,
    **fit_options: Any,
) -> Any:
    """Fit NMF to an AnnData object (cells × genes) and store the factors in it.

    Parameters
    ----------
    adata : anndata.AnnData
        In memory or opened with ``backed="r"``; ``adata.X`` (or ``layer``) is read
        transposed, by blocks, without a dense copy.
    n_components : int
        Rank k.
    layer : str, optional
        Factorize this layer instead of X.
    key_added : str, default "nmf"
        Writes ``obsm["X_<key>"]`` (cells × k), ``varm["<key>_W"]`` (genes × k) and
        ``uns["<key>"]`` (``params``, ``loss_history``, ``relative_error``, ``n_iter``,
        ``converged``, ``factors``).
    copy : bool, default False
        Work on a copy and return it (else modify ``adata`` and return None).
    **fit_options
        Passed to ``scalenmf.nmf`` (``loss``, ``solver``, ``seed``, ``max_iter``, ``tol``,
        ``n_runs``, ``scheduler``, ``memory_limit``, …).

    Returns
    -------
    anndata.AnnData or None
    """
    from scalenmf.api import nmf as fit

    if copy:
        adata = adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()
    fit_options.setdefault("progress", False)
    result = fit(adata, n_components, layer=layer, **fit_options)
    _store(adata, result, key_added)
    return adata if copy else None


def _frame(rows: list[dict[str, Any]] | None) -> Any:
    """A list of flat records as a DataFrame AnnData writes (nested values as text)."""
    import pandas as pd

    flat = [
        {
            k: (v if isinstance(v, (int, float, str, bool, np.number)) else str(v))
            for k, v in r.items()
        }
        for r in rows or []
    ]
    return pd.DataFrame(flat)


def _clusters(labels: np.ndarray, k: int) -> Any:
    """Consensus clusters (1..k) as an ordered categorical of their names."""
    import pandas as pd

    return pd.Categorical(
        np.asarray(labels).astype(int).astype(str), categories=[str(c) for c in range(1, k + 1)]
    )


def rank_survey(
    adata: Any,
    ks: Any = "2-10",
    n_runs: int = 10,
    *,
    layer: str | None = None,
    key_added: str = "nmf_survey",
    copy: bool = False,
    **survey_options: Any,
) -> Any:
    """A rank survey of an AnnData object (cells × genes), its tables stored in it.

    Writes ``uns[key_added]``: ``summary`` (a DataFrame, one row per k: errors,
    cophenetic, dispersion, silhouette, stability, CV error…), ``null_summary`` (the same
    on permuted data, when run), ``runs`` (one row per fit), ``suggestion`` (``k`` and
    ``reason``) and ``ks``; and ``obs[f"{key_added}_k{k}"]`` for every k, the consensus
    clusters of the cells as a categorical (``"1"`` … ``"k"``).

    Parameters
    ----------
    adata : anndata.AnnData
    ks, n_runs, **survey_options
        As ``scalenmf.rank_survey``.
    layer : str, optional
        Survey this layer instead of X.
    copy : bool
        Work on a copy and return it (else modify ``adata`` and return None).

    Returns
    -------
    anndata.AnnData or None
    """
    from scalenmf.api import rank_survey as survey_fn
    from scalenmf.io.anndata import anndata_source

    if copy:
        adata = adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()
    survey_options.setdefault("progress", False)
    survey = survey_fn(anndata_source(adata, layer), ks, n_runs, **survey_options)
    uns: dict[str, Any] = {
        "summary": _frame(survey.summary),
        "runs": _frame(survey.runs),
        "suggestion": _h5_friendly(survey.suggestion),
        "ks": np.asarray(survey.ks, dtype=np.int64),
    }
    if survey.null_summary is not None:
        uns["null_summary"] = _frame(survey.null_summary)
    adata.uns[key_added] = uns
    for k, cons in survey.consensus.items():
        adata.obs[f"{key_added}_k{k}"] = _clusters(cons.clusters, int(k))
    return adata if copy else None


def consensus(
    adata: Any,
    n_components: int,
    n_runs: int = 30,
    *,
    layer: str | None = None,
    key_added: str = "nmf_consensus",
    copy: bool = False,
    **consensus_options: Any,
) -> Any:
    """Consensus NMF of an AnnData object (cells × genes), stored in it.

    Writes ``obs[f"{key_added}_cluster"]`` (each cell's consensus cluster, a categorical
    ``"1"`` … ``"k"``) and ``obs[f"{key_added}_confidence"]``, the consensus factors as
    ``tl.nmf`` writes a fit (``obsm["X_<key>"]``, ``varm["<key>_W"]``) and
    ``uns[key_added]`` with the summary (cophenetic, dispersion, silhouette, stability,
    cluster sizes…) and ``runs`` (a DataFrame, one row per run).

    Returns
    -------
    anndata.AnnData or None (see ``copy``)
    """
    from scalenmf.api import consensus as consensus_fn
    from scalenmf.io.anndata import anndata_source

    if copy:
        adata = adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()
    consensus_options.setdefault("progress", False)
    cons = consensus_fn(anndata_source(adata, layer), n_components, n_runs, **consensus_options)
    adata.obs[f"{key_added}_cluster"] = _clusters(cons.clusters, cons.k)
    adata.obs[f"{key_added}_confidence"] = np.asarray(cons.samples.confidence, dtype=np.float64)
    adata.obsm[f"X_{key_added}"] = np.ascontiguousarray(cons.result.H.T)
    adata.varm[f"{key_added}_W"] = np.ascontiguousarray(cons.result.W)
    adata.uns[key_added] = {
        **_h5_friendly(cons.summary()),
        "runs": _frame(cons.runs),
        "fit": nmf_summary(cons.result),
    }
    return adata if copy else None
