"""``describe``: what an input file / store or a result store holds, for ``scalenmf info``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from scalenmf.io import zarr_json
from scalenmf.io.errors import InputError
from scalenmf.io.planning import (
    DEFAULT_BLOCK_BYTES,
    MIN_SPREAD_VALUES,
    align_bounds,
    bounds_by_nnz,
    plan_block_cols,
)
from scalenmf.io.readers import readers
from scalenmf.io.source import MatrixSource, as_str_array, float_dtype, summary

# ``scalenmf info`` starts in a fresh process: what only some inputs need (zarr, the text
# and single-cell format modules, the result readers, in-memory arrays) is imported when
# used. A local Zarr v3 store that scalenmf wrote is described from its metadata read with
# json (``scalenmf.io.zarr_json``), without zarr (about 0.2 s of import); anything that
# reader does not fully understand is opened with zarr as before, which also gives the
# errors for damaged stores.

#: How many labels of each axis ``describe`` shows.
N_FIRST_LABELS = 5

#: Result stores with more than W and H (``scalenmf.io.linked_results``): info lists them.
MODELS = ("lnmf", "inmf", "projection")

#: Result attributes shown when present, in this order.
RESULT_ATTRS = (
    "k",
    "solver",
    "loss",
    "n_iter",
    "converged",
    "relative_error",
    "seed",
    "scalenmf_version",
)


def describe(obj: Any) -> dict[str, Any]:
    """A JSON-friendly summary of an input matrix or a result store.

    Parameters
    ----------
    obj : path-like, ndarray, scipy.sparse matrix, dask array or MatrixSource
        A path in any format ``open_matrix`` reads, a scalenmf result store, or an
        in-memory matrix.

    Returns
    -------
    dict
        For a matrix: ``kind="matrix"``, ``format``, ``shape`` [m, n], ``dtype``,
        ``sparse``, ``nnz`` (stored entries; m·n for dense), ``density``, ``n_blocks``,
        ``block_cols`` (distinct block widths), ``has_row_labels`` / ``has_col_labels``,
        ``first_row_labels`` / ``first_col_labels`` and, for paths, ``path`` and
        ``disk_bytes``. For a result store: ``kind="result"``, ``path``, the attributes in
        ``RESULT_ATTRS`` that are present, ``W_shape``, ``H_shape`` and label presence.

    Raises
    ------
    InputError
        The path does not exist or no reader can open it.
    """
    if not isinstance(obj, (str, os.PathLike)):
        from scalenmf.io.matrix import as_source

        src = as_source(obj)
        return _matrix(src, f"in-memory {type(obj).__name__}")
    path = Path(obj)
    if not path.exists():
        raise InputError(f"no such file or store: {str(path)!r}")
    if path.is_dir() and (path / "zarr.json").exists():
        try:
            return _from_metadata(path)
        except zarr_json.Unsupported:
            pass  # described by zarr below, which names whatever is wrong with the store
    result = _result(path)
    if result is not None:
        return result
    from scalenmf.io.readers import is_zarr_dir, open_zarr_dir

    if is_zarr_dir(path):
        # The first reader tried; the other formats' modules are not needed for a store.
        out = _matrix(open_zarr_dir(path), "zarr")
        out["path"] = str(path)
        out["disk_bytes"] = _disk_bytes(path)
        return out
    for reader in readers():
        if reader.can_open(path):
            out = _matrix(reader.open(path), reader.name)
            out["path"] = str(path)
            out["disk_bytes"] = _disk_bytes(path)
            return out
    names = ", ".join(r.name for r in readers())
    raise InputError(f"cannot tell the format of {str(path)!r} (known formats: {names})")


def _first(labels: np.ndarray | None) -> list[str]:
    return [] if labels is None else [str(x) for x in labels[:N_FIRST_LABELS]]


def _matrix(src: MatrixSource, fmt: str) -> dict[str, Any]:
    return _matrix_dict(src.describe(), src.row_labels, src.col_labels, fmt)


def _matrix_dict(
    described: dict[str, Any], rows: np.ndarray | None, cols: np.ndarray | None, fmt: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "matrix", "format": fmt}
    out.update(described)
    out["has_row_labels"] = rows is not None
    out["has_col_labels"] = cols is not None
    out["first_row_labels"] = _first(rows)
    out["first_col_labels"] = _first(cols)
    return out


# -- from the metadata alone (no zarr) ----------------------------------------------------------
# Each step mirrors what ``scalenmf.io.zarr_store.open_zarr`` (and ``_result`` below) read
# and check; where those would refuse the store, this raises ``Unsupported`` and the store
# is opened with zarr, so that the error is theirs.


def _from_metadata(path: Path) -> dict[str, Any]:
    """``describe(path)`` for a local Zarr v3 store, from its ``zarr.json`` files."""
    root = zarr_json.read_node(path)
    if root["node_type"] == "array":
        # A bare 2-D array is X itself (``open_zarr``), with no labels.
        described = _dense(zarr_json.array_meta(path, root))
        out = _matrix_dict(described, None, None, "zarr")
    else:
        attrs = root.get("attributes", {})
        meta = attrs.get("scalenmf")
        if isinstance(meta, dict) and meta.get("kind") == "result":
            return _result_from_metadata(path, attrs, meta)
        if attrs.get("encoding-type") == "anndata":
            raise zarr_json.Unsupported("AnnData store")
        x = zarr_json.child(path, "X")
        if x is None:
            raise zarr_json.Unsupported("no X")
        if x["node_type"] == "group":
            described = _sparse(path / "X", x)
        else:
            described = _dense(zarr_json.array_meta(path / "X", x))
        m, n = described["shape"]
        rows = _labels_from_metadata(path, "row_labels", m)
        cols = _labels_from_metadata(path, "col_labels", n)
        out = _matrix_dict(described, rows, cols, "zarr")
    out["path"] = str(path)
    out["disk_bytes"] = _disk_bytes(path)
    return out


def _dense(arr: zarr_json.ArrayMeta) -> dict[str, Any]:
    """What ``ZarrDenseSource(...).describe()`` says."""
    if len(arr.shape) != 2:
        raise zarr_json.Unsupported(f"X is {len(arr.shape)}-D")
    zarr_json.require_complete(arr)
    m, n = arr.shape
    dtype = float_dtype(arr.dtype)
    cols = plan_block_cols(m, n, dtype.itemsize, min_blocks=os.cpu_count() or 1)
    bounds = align_bounds(arr.chunks[1], n, cols)
    return summary((m, n), dtype, False, m * n, bounds, "ZarrDenseSource")


def _sparse(group: Path, node: dict[str, Any]) -> dict[str, Any]:
    """What ``ZarrSparseSource(...).describe()`` says."""
    attrs = node.get("attributes", {})
    enc, raw_shape = attrs.get("encoding-type"), attrs.get("shape")
    if not (
        isinstance(raw_shape, list)
        and len(raw_shape) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw_shape)
    ):
        raise zarr_json.Unsupported(f"sparse shape {raw_shape!r}")
    if enc == "csc_matrix":
        m, n = raw_shape
    elif enc == "csr_matrix":
        n, m = raw_shape  # AnnData cells × genes CSR == genes × cells CSC
    else:
        raise zarr_json.Unsupported(f"encoding-type {enc!r}")
    parts = {}
    for name in ("data", "indices", "indptr"):
        doc = zarr_json.child(group, name)
        if doc is None:
            raise zarr_json.Unsupported(f"no {name}")
        parts[name] = zarr_json.array_meta(group / name, doc)
        if len(parts[name].shape) != 1:
            raise zarr_json.Unsupported(f"{name} is not 1-D")
        zarr_json.require_complete(parts[name])
    dtype = float_dtype(parts["data"].dtype)
    if parts["indices"].dtype.kind not in "iu" or parts["data"].shape != parts["indices"].shape:
        raise zarr_json.Unsupported("indices do not match data")
    raw = zarr_json.read_1d(parts["indptr"])
    if raw.dtype.kind not in "iu":
        raise zarr_json.Unsupported(f"indptr dtype {raw.dtype}")
    indptr = raw.astype(np.int64, copy=False)
    # ``check_indptr``'s conditions: a store that fails them is refused by zarr's road.
    if (
        indptr.shape != (n + 1,)
        or int(indptr[0]) != 0
        or int(indptr[-1]) != parts["data"].shape[0]
        or bool((np.diff(indptr) < 0).any())
    ):
        raise zarr_json.Unsupported("malformed indptr")
    target = DEFAULT_BLOCK_BYTES // (dtype.itemsize + 4)
    spread = max(1, int(indptr[-1]) // max(1, os.cpu_count() or 1))
    bounds = bounds_by_nnz(indptr, min(target, max(spread, MIN_SPREAD_VALUES)))
    return summary((m, n), dtype, True, int(indptr[-1]), bounds, "ZarrSparseSource")


def _labels_from_metadata(path: Path, name: str, length: int) -> np.ndarray | None:
    doc = zarr_json.child(path, name)
    if doc is None:
        return None
    labels = as_str_array(zarr_json.read_1d(zarr_json.array_meta(path / name, doc)))
    if labels.shape != (length,):
        raise zarr_json.Unsupported(f"{name} of length {labels.shape}")
    return labels


def _result_from_metadata(
    path: Path, attrs: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    """What ``_result`` says of a result store."""
    out: dict[str, Any] = {"kind": "result", "format": "scalenmf result (zarr)", "path": str(path)}
    for key in RESULT_ATTRS:
        if key in attrs:
            out[key] = attrs[key]
        elif key in meta:
            out[key] = meta[key]
    for name in ("W", "H"):
        doc = zarr_json.child(path, name)
        shape = None
        if doc is not None and doc["node_type"] == "array":
            shape = list(zarr_json.array_meta(path / name, doc).shape)
        out[f"{name}_shape"] = shape
    for name in ("row_labels", "col_labels"):
        out[f"has_{name}"] = zarr_json.child(path, name) is not None
    arrays: dict[str, list[int]] = {}
    if attrs.get("model") in MODELS:
        for name, doc in zarr_json.members(path).items():
            if doc["node_type"] == "array":
                arrays[name] = list(zarr_json.array_meta(path / name, doc).shape)
    out.update(_model_summary(attrs, arrays))
    out["disk_bytes"] = _disk_bytes(path)
    return out


def _model_summary(attrs: dict[str, Any], arrays: dict[str, list[int]]) -> dict[str, Any]:
    """What ``scalenmf info`` adds for a linked / iNMF / projection store (else nothing).

    ``arrays`` maps every array of the store's root to its shape.
    """
    model = attrs.get("model")
    if model not in MODELS:
        return {}
    out: dict[str, Any] = {"model": model}
    for key in ("k_shared", "k_unique", "lam", "k_new", "n_novel", "explained"):
        if key in attrs:
            out[key] = attrs[key]
    datasets = attrs.get("datasets")
    if isinstance(datasets, list):
        out["datasets"] = datasets
    out["arrays"] = arrays
    return out


def _model_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` lines of a linked / iNMF / projection store for ``format_description``."""
    if "model" not in d:
        return []
    rows = [("model", str(d["model"]))]
    for key in ("k_shared", "k_unique", "lam", "k_new", "n_novel"):
        if key in d:
            rows.append((key.replace("_", " "), str(d[key])))
    if isinstance(d.get("explained"), dict):
        parts = ", ".join(f"{k}={v:.4g}" for k, v in d["explained"].items() if v is not None)
        rows.append(("explained", parts))
    for ds in d.get("datasets", []):
        a, b = ds.get("columns", [0, 0])
        extra = ""
        if "k_unique" in ds:
            extra += f", k_unique={ds['k_unique']}"
        if ds.get("relative_error") is not None:
            extra += f", relative error {ds['relative_error']:.5g}"
        rows.append((f"dataset {ds.get('name')}", f"columns {a}:{b} ({b - a} samples{extra})"))
    shown = ", ".join(
        f"{name} {'×'.join(map(str, shape))}"
        for name, shape in sorted(d.get("arrays", {}).items())
        if name not in ("W", "H") and not name.endswith("labels")
    )
    if shown:
        rows.append(("arrays", shown))
    return rows


def _plain(value: Any) -> Any:
    """Zarr attributes as plain Python values (numpy scalars and arrays unwrapped)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _result(path: Path) -> dict[str, Any] | None:
    """The description of a scalenmf result store, or None if ``path`` is not one."""
    if not (path.is_dir() and (path / "zarr.json").exists()):
        return None
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
    except Exception:
        return None
    meta = attrs.get("scalenmf")
    if not (isinstance(meta, dict) and meta.get("kind") == "result"):
        return None
    out: dict[str, Any] = {"kind": "result", "format": "scalenmf result (zarr)", "path": str(path)}
    for key in RESULT_ATTRS:
        # The writer may keep these at the root or inside the "scalenmf" dict.
        if key in attrs:
            out[key] = _plain(attrs[key])
        elif key in meta:
            out[key] = _plain(meta[key])
    for name in ("W", "H"):
        try:
            node = root[name] if name in root else None
        except Exception as exc:
            raise InputError(
                f"cannot read array {name!r} of result store {str(path)!r}: {exc}"
            ) from exc
        out[f"{name}_shape"] = list(node.shape) if isinstance(node, zarr.Array) else None
    for name in ("row_labels", "col_labels"):
        out[f"has_{name}"] = name in root
    if attrs.get("model") in MODELS:
        out.update(_model_summary(attrs, {n: list(a.shape) for n, a in root.arrays()}))
    out["disk_bytes"] = _disk_bytes(path)
    return out


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass  # a file removed while walking does not count
    return total


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


def _labels_line(has: bool, first: list[str], total: int) -> str:
    if not has:
        return "none"
    more = ", …" if total > len(first) else ""
    return ", ".join(first) + more


def format_description(d: dict[str, Any]) -> str:
    """Render a ``describe`` dict as aligned ``name: value`` lines for a terminal."""
    rows: list[tuple[str, str]] = []
    if "path" in d:
        rows.append(("path", str(d["path"])))
    rows.append(("format", str(d.get("format", "?"))))
    if d.get("kind") == "result":
        for key in RESULT_ATTRS:
            if key in d:
                value = d[key]
                text = f"{value:.6g}" if isinstance(value, float) else str(value)
                rows.append((key.replace("_", " "), text))
        for name in ("W", "H"):
            shape = d.get(f"{name}_shape")
            rows.append((name, " × ".join(map(str, shape)) if shape else "missing"))
        rows.append(("row labels", "yes" if d.get("has_row_labels") else "no"))
        rows.append(("column labels", "yes" if d.get("has_col_labels") else "no"))
        rows.extend(_model_rows(d))
    else:
        m, n = d["shape"]
        rows.append(("shape", f"{m:,} features × {n:,} samples"))
        rows.append(("dtype", str(d["dtype"])))
        if d["sparse"]:
            rows.append(("storage", f"sparse (CSC), {d['nnz']:,} non-zeros"))
            rows.append(("density", f"{100 * d['density']:.3g}%"))
        else:
            rows.append(("storage", "dense"))
        widths = d.get("block_cols") or []
        span = f"{min(widths)}" if len(set(widths)) <= 1 else f"{min(widths)}–{max(widths)}"
        rows.append(("column blocks", f"{d['n_blocks']} of {span} columns" if widths else "0"))
        rows.append(("row labels", _labels_line(d["has_row_labels"], d["first_row_labels"], m)))
        rows.append(("column labels", _labels_line(d["has_col_labels"], d["first_col_labels"], n)))
    if "disk_bytes" in d:
        rows.append(("on disk", _human_bytes(d["disk_bytes"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in rows)


__all__ = ["describe", "format_description"]
