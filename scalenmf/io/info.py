"""``describe``: what an input file / store or a result store holds, for ``scalenmf info``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from scalenmf.io.errors import InputError
from scalenmf.io.readers import readers
from scalenmf.io.source import MatrixSource

# ``scalenmf info`` starts in a fresh process: what only some inputs need (the text and
# single-cell format modules, the result readers, in-memory arrays) is imported when used.

#: How many labels of each axis ``describe`` shows.
N_FIRST_LABELS = 5

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
    out: dict[str, Any] = {"kind": "matrix", "format": fmt}
    out.update(src.describe())
    out["has_row_labels"] = src.row_labels is not None
    out["has_col_labels"] = src.col_labels is not None
    out["first_row_labels"] = _first(src.row_labels)
    out["first_col_labels"] = _first(src.col_labels)
    return out


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
    from scalenmf.io.linked_results import describe_model

    out.update(describe_model(root, attrs))
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
        from scalenmf.io.linked_results import model_rows

        rows.extend(model_rows(d))
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
