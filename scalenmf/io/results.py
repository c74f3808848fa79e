"""Result stores: W, H, labels and attrs in one Zarr group, published atomically.

Layout (root attrs ``scalenmf = {"kind": "result", ...}`` plus the fit's attrs)::

    W            (m, k)  row-chunked
    H            (k, n)  column-chunked like X
    row_labels   (m,)    feature names, optional
    col_labels   (n,)    sample names, optional
    factor_labels (k,)   optional
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import zarr

from scalenmf.io.atomic import atomic_output
from scalenmf.io.errors import InputError
from scalenmf.io.source import as_str_array
from scalenmf.io.zarr_store import _codec, _open_group, write_labels

RESULT_FORMAT_VERSION = 1


def _jsonable(value: Any) -> Any:
    """Attrs must be JSON: numpy scalars and arrays become Python numbers and lists."""
    return json.loads(json.dumps(value, default=_default))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_result(
    path: str | os.PathLike[str],
    arrays: dict[str, np.ndarray],
    *,
    attrs: dict[str, Any],
    labels: dict[str, Any] | None = None,
    col_chunk: int | None = None,
    overwrite: bool = False,
) -> str:
    """Write a result store atomically.

    Parameters
    ----------
    arrays : dict of str to ndarray
        Typically ``{"W": (m, k), "H": (k, n)}``; 2-D arrays whose second axis is samples
        are chunked by ``col_chunk`` columns, others by rows.
    attrs : dict
        JSON-able metadata (k, solver, loss, params, ...).
    labels : dict of str to sequence, optional
        ``row_labels``, ``col_labels``, ``factor_labels``.
    """
    with atomic_output(path, overwrite=overwrite) as tmp:
        root = zarr.open_group(tmp, mode="w")
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            if name.startswith("H") and arr.ndim == 2:
                chunks = (max(1, arr.shape[0]), max(1, min(arr.shape[1], col_chunk or 65536)))
            elif arr.ndim == 2:
                chunks = (max(1, min(arr.shape[0], 65536)), max(1, arr.shape[1]))
            else:
                chunks = (max(1, min(arr.shape[0], 65536)),) if arr.ndim == 1 else arr.shape
            out = root.create_array(
                name, shape=arr.shape, chunks=chunks, dtype=arr.dtype, compressors=[_codec()]
            )
            out[...] = arr
        for name, values in (labels or {}).items():
            if values is not None:
                write_labels(root, name, values)
        meta: dict[str, Any] = {"kind": "result", "format_version": RESULT_FORMAT_VERSION}
        root.attrs["scalenmf"] = meta
        root.attrs.update(_jsonable(attrs))
    return str(path)


def read_result(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
    """Read a result store: ``(arrays, attrs, labels)``."""
    g = _open_group(path)
    meta = g.attrs.get("scalenmf")
    if not isinstance(meta, dict) or meta.get("kind") != "result":
        raise InputError(f"{str(path)!r} is not a scalenmf result store")
    arrays: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for name, node in g.members():
        if not isinstance(node, zarr.Array):
            continue
        if name.endswith("labels"):
            labels[name] = as_str_array(node[:])
        else:
            arrays[name] = np.asarray(node[...])
    attrs = {key: value for key, value in g.attrs.items() if key != "scalenmf"}
    return arrays, attrs, labels
