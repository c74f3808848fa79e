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
from scalenmf.io.integrity import (
    IntegrityError,
    digest_array,
    digest_json,
    digest_stored,
    require_complete,
)
from scalenmf.io.source import as_str_array
from scalenmf.io.zarr_store import (
    _open_group,
    create_digested,
    read_whole,
    write_digested,
    write_labels,
)

RESULT_FORMAT_VERSION = 1
#: Default chunk length along samples, and along the rows of every other array.
COL_CHUNK = 65536
#: Root attr with the digests of every array and of the other attrs (absent in stores
#: written before it existed, which are read unverified).
INTEGRITY = "integrity"


def jsonable(value: Any) -> Any:
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
    sample_axis: dict[str, int] | None = None,
) -> str:
    """Write a result store atomically, with the digests ``read_result`` checks.

    Parameters
    ----------
    arrays : dict of str to ndarray
        Typically ``{"W": (m, k), "H": (k, n)}``.
    attrs : dict
        JSON-able metadata (k, solver, loss, params, ...).
    labels : dict of str to sequence, optional
        ``row_labels``, ``col_labels``, ``factor_labels``.
    col_chunk : int, optional
        Chunk length along samples (default 65,536).
    sample_axis : dict of str to int, optional
        For arrays whose axis ``i`` runs over samples: that axis is chunked by
        ``col_chunk``, the others are whole. Default: axis 1 of every 2-D array whose name
        starts with ``H``. Every other array is chunked by 65,536 rows.
    """
    digests: dict[str, str] = {}
    along = int(col_chunk or COL_CHUNK)
    with atomic_output(path, overwrite=overwrite) as tmp:
        root = zarr.open_group(tmp, mode="w")
        for name, arr in arrays.items():
            if not isinstance(arr, zarr.Array):
                arr = np.asarray(arr)
            chunks = [max(1, s) for s in arr.shape]
            if sample_axis is not None:
                ax = sample_axis.get(name)
            else:
                ax = 1 if name.startswith("H") and arr.ndim == 2 else None
            if ax is not None:
                chunks[ax] = max(1, min(arr.shape[ax], along))
            elif arr.ndim:
                chunks[0] = max(1, min(arr.shape[0], COL_CHUNK))
            if isinstance(arr, zarr.Array):
                # Kept out of memory by the fit: copied along the sample axis, a chunk
                # at a time, and digested from what was stored.
                _copy_stored(root, name, arr, tuple(chunks), 1 if ax is None else ax, digests)
            else:
                write_digested(root, name, arr, tuple(chunks), digests)
        for name, values in (labels or {}).items():
            if values is not None:
                write_labels(root, name, values)
                digests[name] = digest_array(as_str_array(values))
        meta: dict[str, Any] = {"kind": "result", "format_version": RESULT_FORMAT_VERSION}
        body = jsonable(attrs)
        root.attrs["scalenmf"] = meta
        root.attrs.update(body)
        root.attrs[INTEGRITY] = {"arrays": digests, "attrs": digest_json(body)}
    return str(path)


def _copy_stored(
    group: zarr.Group,
    name: str,
    arr: zarr.Array,
    chunks: tuple[int, ...],
    axis: int,
    digests: dict[str, str],
) -> None:
    """``write_digested`` of a stored array, one chunk along ``axis`` at a time."""
    out = create_digested(group, name, arr.shape, chunks, arr.dtype)
    step = chunks[axis] if arr.ndim else 1
    for lo in range(0, int(arr.shape[axis]) if arr.ndim else 0, step):
        where = [slice(None)] * arr.ndim
        where[axis] = slice(lo, lo + step)
        out[tuple(where)] = arr[tuple(where)]
    digests[name] = digest_stored(out)


def read_result(
    path: str | os.PathLike[str], *, lazy: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Read a result store: ``(arrays, attrs, labels)``.

    ``lazy``: arrays returned as the stored ``zarr.Array`` instead of read (H of millions
    of samples, for a reader that needs only W): checked for completeness, not against
    their digest (that would read them whole).
    """
    g = _open_group(path)
    meta = g.attrs.get("scalenmf")
    if not isinstance(meta, dict) or meta.get("kind") != "result":
        raise InputError(f"{str(path)!r} is not a scalenmf result store")
    where = str(path)
    seal = g.attrs.get(INTEGRITY)
    digests = dict(seal.get("arrays") or {}) if isinstance(seal, dict) else None
    arrays: dict[str, Any] = {}
    labels: dict[str, np.ndarray] = {}
    for name, node in g.members():
        if not isinstance(node, zarr.Array):
            continue
        require_complete(node, name, where)
        if name in lazy:
            arrays[name] = node
            if digests is not None:
                digests.pop(name, None)
            continue
        values = _read_array(node, name, where)
        if name.endswith("labels"):
            values = as_str_array(values)
            labels[name] = values
        else:
            arrays[name] = values
        if digests is not None:
            if name not in digests:
                raise IntegrityError(
                    f"result store {where!r} holds array {name!r}, which it records no "
                    "checksum for (added after it was written)"
                )
            if digest_array(values) != digests.pop(name):
                raise IntegrityError(
                    f"array {name!r} of result store {where!r} does not match its recorded "
                    "checksum (damaged or edited after it was written)"
                )
    if digests:
        raise IntegrityError(f"result store {where!r} lacks array(s) {sorted(digests)}")
    return arrays, _checked_attrs(g, seal, where), labels


def _read_array(node: zarr.Array, name: str, where: str) -> np.ndarray:
    return read_whole(node, name, f"result store {where!r}")


def _checked_attrs(g: zarr.Group, seal: Any, where: str) -> dict[str, Any]:
    """The fit's attrs of the store, checked against their recorded digest if it has one."""
    attrs = {key: value for key, value in g.attrs.items() if key not in ("scalenmf", INTEGRITY)}
    if isinstance(seal, dict) and digest_json(attrs) != seal.get("attrs"):
        raise IntegrityError(
            f"the attrs of result store {where!r} (parameters, loss history, errors) do not "
            "match their recorded checksum (edited or damaged after it was written)"
        )
    return attrs


def verify_result_store(path: str | os.PathLike[str], *, lazy: tuple[str, ...] = ()) -> None:
    """Check a result store without loading it: every chunk present, digests as recorded.

    For readers that keep H on disk (plots, reports). Arrays are read in row slabs, so
    memory stays bounded. A store written before digests were recorded is only checked
    for completeness.

    Parameters
    ----------
    lazy : tuple of str
        Arrays the caller reads only in part (H of a sampled report): checked for
        completeness only, since verifying their digest would read them whole.

    Raises
    ------
    IntegrityError
        Naming the store and the array (or the attrs) that failed.
    """
    where = str(path)
    g = _open_group(path)
    seal = g.attrs.get(INTEGRITY)
    digests = dict(seal.get("arrays") or {}) if isinstance(seal, dict) else None
    for name, node in g.members():
        if not isinstance(node, zarr.Array):
            continue
        require_complete(node, name, where)
        if digests is None:
            continue
        if name in lazy:
            digests.pop(name, None)
            continue
        try:
            actual = digest_stored(node)
        except Exception as exc:  # codecs raise their own types for damaged bytes
            _read_array(node, name, where)  # names the bad chunk
            raise IntegrityError(f"result store {where!r}: cannot read {name!r}: {exc}") from exc
        if name not in digests or actual != digests.pop(name):
            raise IntegrityError(
                f"array {name!r} of result store {where!r} does not match its recorded "
                "checksum (damaged or edited after it was written)"
            )
    if digests:
        raise IntegrityError(f"result store {where!r} lacks array(s) {sorted(digests)}")
    _checked_attrs(g, seal, where)
