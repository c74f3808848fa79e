"""Streaming inference: push every column block through the trained network and write
``H`` (k × n) as a chunked Zarr array, in this process or with each Dask worker
transforming (and writing) its own blocks.

Output store layout (``scalenmf`` attrs ``kind = "result"``, ``model = "dnmf"``)::

    H                 (k, n) float32/64, chunks (k, B) aligned with the input blocks
    W                 (m, k), only for models that have a basis (unsupervised)
    row_labels        (m,)  feature labels of the input, when known
    col_labels        (n,)  sample labels of the input, when known
    component_labels  (k,)  "F1".."Fk"

The network runs on the device of its parameters: columns are densified on the host, copied
there, and the coefficients copied back. With Dask every worker rebuilds the network on the
device it resolves for itself (``"auto"``: its GPU when it has one, else its CPU).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import zarr

from scalenmf.io import MatrixSource
from scalenmf.io.atomic import atomic_output
from scalenmf.io.zarr_store import write_labels
from scalenmf.kernels.torch_kernels import resolve_device
from scalenmf.models.deep.data import check_block, dense_columns
from scalenmf.models.deep.layers import UnrolledNMF

#: Format of the result store's metadata.
RESULT_FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[str]:
    """A temporary directory published at ``path`` only when the block succeeds."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        yield tmp


def on_device(model: UnrolledNMF, device: str | torch.device | None) -> UnrolledNMF:
    """``model`` on the device ``device`` resolves to: the model itself when it is there
    already, else a copy (``nn.Module.to`` moves in place, and the caller's model stays
    where it is).

    Raises
    ------
    ValueError
        CUDA asked for where torch sees no GPU.
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        # parameters report "cuda:N": compare with the index "cuda" stands for
        dev = torch.device("cuda", torch.cuda.current_device())
    if model.B.device == dev:
        return model
    return copy.deepcopy(model).to(dev)


@torch.no_grad()
def transform_block(
    model: UnrolledNMF, block: Any, *, batch_size: int | None = 65536, where: str = "block"
) -> np.ndarray:
    """Coefficients for one dense or sparse block.

    Parameters
    ----------
    model : UnrolledNMF
    block : ndarray or sparse matrix, shape (m, b)
    batch_size : int, optional
        Columns densified and pushed through at once (bounds memory for sparse blocks).
    where : str
        Name of the block in error messages.

    Returns
    -------
    ndarray, shape (k, b)
        On the host, whatever the model's device.
    """
    check_block(block, where)
    m, b = block.shape
    if m != model.n_features:
        raise ValueError(
            f"input has {m} features (rows) but the model was trained on {model.n_features}"
        )
    dtype, device = model.B.dtype, model.B.device
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    out = np.empty((model.n_components, b), dtype=np_dtype)
    step = b if not batch_size else int(batch_size)
    for s in range(0, b, max(step, 1)):
        idx = np.arange(s, min(s + step, b))
        V = torch.from_numpy(dense_columns(block, idx, np.dtype(np_dtype))).to(device)
        out[:, s : s + len(idx)] = model(V).cpu().numpy()
    return out


def iter_transform(
    model: UnrolledNMF, source: MatrixSource, *, batch_size: int | None = 65536
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, H_block)`` for every column block of ``source`` in order."""
    for j, (a, b) in enumerate(source.block_bounds):
        yield (
            a,
            b,
            transform_block(
                model, source.read_block(j), batch_size=batch_size, where=f"columns {a}:{b}"
            ),
        )


def transform_source(
    model: UnrolledNMF, source: MatrixSource, *, batch_size: int | None = 65536
) -> np.ndarray:
    """All coefficients in memory.

    Returns
    -------
    ndarray, shape (k, n)
    """
    n = source.shape[1]
    H = np.empty(
        (model.n_components, n), dtype=np.float64 if model.B.dtype == torch.float64 else np.float32
    )
    for a, b, Hb in iter_transform(model, source, batch_size=batch_size):
        H[:, a:b] = Hb
    return H


def _uniform_chunk(bounds: list[tuple[int, int]]) -> int | None:
    """The common block width when all blocks but the last share it, else None."""
    widths = [b - a for a, b in bounds]
    if not widths:
        return None
    w = widths[0]
    if all(x == w for x in widths[:-1]) and widths[-1] <= w and w > 0:
        return w
    return None


def _init_store(
    tmp: str,
    model: UnrolledNMF,
    source: MatrixSource,
    chunk: int,
    W: np.ndarray | None,
    attrs: dict[str, Any],
    component_labels: Any,
) -> zarr.Array:
    k = model.n_components
    m, n = source.shape
    dtype = np.float64 if model.B.dtype == torch.float64 else np.float32
    root = zarr.open_group(tmp, mode="w")
    root.attrs["scalenmf"] = {
        "kind": "result",
        "model": "dnmf",
        "format_version": RESULT_FORMAT_VERSION,
        "k": k,
        "shape": [m, n],
        **attrs,
    }
    H = root.create_array("H", shape=(k, n), chunks=(k, max(1, chunk)), dtype=dtype, fill_value=0)
    if W is not None:
        Wa = root.create_array("W", shape=W.shape, chunks=W.shape, dtype=dtype)
        Wa[:] = W.astype(dtype)
    if source.row_labels is not None:
        write_labels(root, "row_labels", source.row_labels)
    if source.col_labels is not None:
        write_labels(root, "col_labels", source.col_labels)
    if component_labels is None or len(component_labels) != k:
        component_labels = [f"F{i + 1}" for i in range(k)]
    write_labels(root, "component_labels", np.asarray(component_labels, dtype=str))
    return H


def _dask_transform_block(
    state: dict[str, Any], data: Any, j: int, out: str, batch_size: int | None
) -> int:
    """Task body on a Dask worker: read block ``j`` (``data`` is the source, reopened on the
    worker, or the block itself for in-memory input), transform it, write its H chunk(s)."""
    model = model_from_state(state)
    if isinstance(data, MatrixSource):
        a, b = data.block_bounds[j]
        block = data.read_block(j)
    else:
        block, (a, b) = data
    Hb = transform_block(model, block, batch_size=batch_size, where=f"columns {a}:{b}")
    arr = zarr.open_array(os.path.join(out, "H"), mode="r+")
    arr[:, a:b] = Hb
    return b - a


def model_state(model: UnrolledNMF, device: str | None = "cpu") -> dict[str, Any]:
    """What a worker needs to rebuild the network: shape, loss, numpy weights (device
    independent) and the device option it resolves for itself."""
    return {
        "shape": (model.n_features, model.n_components, model.n_layers),
        "loss": model.loss,
        "layer": model.layer_type,
        "start": model.start,
        "learn": isinstance(model.lambdas, torch.nn.Parameter),
        "weights": {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
        "device": "cpu" if device is None else str(device),
    }


def model_from_state(state: dict[str, Any]) -> UnrolledNMF:
    """Inverse of :func:`model_state`, on the device ``state["device"]`` resolves to in this
    process (``"auto"``: this worker's GPU when it has one)."""
    m, k, L = state["shape"]
    weights = state["weights"]
    dtype = torch.from_numpy(weights["B"]).dtype
    model = UnrolledNMF(
        m,
        k,
        L,
        state["loss"],
        learn_lambdas=state["learn"],
        dtype=dtype,
        layer=state.get("layer", "mu"),
        start=state.get("start"),
    )
    model.load_state_dict({key: torch.from_numpy(v) for key, v in weights.items()})
    model.eval()
    # a fresh model: moving it in place is safe
    return model.to(resolve_device(state.get("device", "cpu")))


def transform_to_zarr(
    model: UnrolledNMF,
    source: MatrixSource,
    out: str | os.PathLike[str],
    *,
    W: np.ndarray | None = None,
    scheduler: Any = None,
    batch_size: int | None = 65536,
    overwrite: bool = False,
    attrs: dict[str, Any] | None = None,
    component_labels: Any = None,
    progress: bool = False,
    device: str | None = None,
) -> str:
    """Stream every block of ``source`` through ``model`` and write ``H`` to a Zarr store.

    Parameters
    ----------
    model : UnrolledNMF
        On any device; its weights are copied to the device that runs the blocks.
    source : MatrixSource, shape (m, n)
    out : path
        Result store to create; it appears only when complete.
    W : ndarray, shape (m, k), optional
        Basis stored beside ``H`` (unsupervised models).
    scheduler : str or distributed.Client, optional
        Dask scheduler address (``tcp://…``) or client: each worker reads, transforms and
        writes its own blocks (the store must be on a file system the workers share).
        ``None`` transforms in this process.
    batch_size : int, optional
        Columns densified at once.
    overwrite : bool
    attrs : dict, optional
        Extra metadata for the ``scalenmf`` attrs.
    component_labels : sequence of str, optional
        Row labels of ``H`` (default ``F1..Fk``).
    progress : bool
    device : {"cpu", "cuda", "auto"}, optional
        Where the blocks are transformed. ``None`` keeps the model where it is (in this
        process; Dask workers then use their CPU). With Dask every worker resolves the
        option for itself, so ``"auto"`` uses each worker's GPU when it has one.

    Returns
    -------
    str
        ``out``.
    """
    from tqdm.auto import tqdm

    chunk = _uniform_chunk(source.block_bounds)
    if chunk is None:
        # irregular blocks: write through regular blocks so chunks never straddle writers
        width = max(b - a for a, b in source.block_bounds)
        source = source.reblock(width)
        chunk = width
    if scheduler is None and device is not None:
        # resolved before anything is written: CUDA asked for without a GPU is refused here
        model = on_device(model, device)
    with atomic_output(out, overwrite=overwrite) as tmp:
        H = _init_store(tmp, model, source, chunk, W, attrs or {}, component_labels)
        bar = tqdm(total=source.shape[1], disable=not progress, desc="dnmf transform", unit="col")
        try:
            if scheduler is None:
                for a, b, Hb in iter_transform(model, source, batch_size=batch_size):
                    H[:, a:b] = Hb
                    bar.update(b - a)
            else:
                _transform_dask(model, source, tmp, scheduler, batch_size, bar, device)
        finally:
            bar.close()
    return str(out)


def _transform_dask(
    model: UnrolledNMF,
    source: MatrixSource,
    tmp: str,
    scheduler: Any,
    batch_size: int | None,
    bar: Any,
    device: str | None,
) -> None:
    from distributed import Client, as_completed

    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        state = client.scatter([model_state(model, device)], broadcast=True)[0]
        futures = []
        for j, bounds in enumerate(source.block_bounds):
            # stores travel by path and each worker reads its own block; in-memory input
            # can only travel as data, one block per task
            data = (source.read_block(j), bounds) if source.in_memory else source
            futures.append(
                client.submit(_dask_transform_block, state, data, j, tmp, batch_size, pure=False)
            )
        for fut in as_completed(futures):
            bar.update(fut.result())
    finally:
        if own:
            client.close()


def read_result_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``scalenmf`` attrs of a DNMF result store, with the layer type filled in.

    Stores written before the layer types existed have no ``layer``/``start``: they were
    written by MU networks from the all-ones start and read as ``"mu"`` / ``"ones"``.

    Raises
    ------
    ValueError
        When ``path`` is not a DNMF result store.
    """
    try:
        root = zarr.open_group(str(path), mode="r")
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{str(path)!r} is not a DNMF result store ({exc})") from exc
    raw = root.attrs.get("scalenmf", {})
    attrs: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    if attrs.get("kind") != "result" or attrs.get("model") != "dnmf":
        raise ValueError(f"{str(path)!r} is not a DNMF result store")
    attrs.setdefault("layer", "mu")
    attrs.setdefault("start", "ones")
    return attrs
