"""Where the block kernels run: numpy on the host, or torch on a device.

The block step and the W step call their kernels through a backend, so each is written once
and runs on either. A backend moves a block and the factors to where it computes
(``block``, ``array``), runs the Gram products and solvers there, and brings results back
as numpy (``host``): block states, partial sums and checkpoints stay numpy on the host, and
the reduction over blocks runs in float64 there.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf.kernels import mu as _mu
from scalenmf.kernels import nnls as _nnls
from scalenmf.kernels.gram import rhs64, x_ht

BACKENDS = ("numpy", "torch")
DEVICES = ("auto", "cpu", "cuda")


_NO_STREAM = contextlib.nullcontext()


class NumpyBackend:
    """The host kernels as they are."""

    name = "numpy"
    device = "cpu"

    @staticmethod
    def block(X: Any, dtype: Any = None) -> Any:
        return X

    @staticmethod
    def stream() -> Any:
        return _NO_STREAM  # reusable: entering a fresh nullcontext per block step costs more

    @staticmethod
    def array(a: Any) -> Any:
        return a

    @staticmethod
    def host(a: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(a) if dtype is None else np.asarray(a).astype(dtype, copy=False)

    @staticmethod
    def cast(a: Any, dtype: Any) -> Any:
        return a.astype(dtype, copy=False)

    rhs = staticmethod(rhs64)
    x_ht = staticmethod(x_ht)
    vstack = staticmethod(np.vstack)
    nnls_cd = staticmethod(_nnls.nnls_cd)
    nnls_bpp = staticmethod(_nnls.nnls_bpp)
    mu_frobenius = staticmethod(_mu.mu_frobenius)
    mu_kl_h = staticmethod(_mu.mu_kl_h)
    kl_block = staticmethod(_mu.kl_block)


class TorchBackend:
    """The kernels of :mod:`.torch_kernels` on one torch device.

    On a GPU, blocks that fit under ``gpu_memory_limit`` bytes (default: half of the
    device's free memory when first used) stay resident between iterations: a block the
    executor holds in memory is copied once. Other blocks are streamed, copied from pinned
    memory on the calling thread's own CUDA stream, so the executor's threads overlap one
    block's copy with another's compute.
    """

    name = "torch"

    def __init__(self, device: str = "auto", gpu_memory_limit: int | None = None):
        from scalenmf.kernels import torch_kernels as tk

        self._tk = tk
        self._torch = tk.torch
        self.device = tk.resolve_device(device)
        for name in ("x_ht", "nnls_cd", "nnls_bpp", "mu_frobenius", "mu_kl_h", "kl_block"):
            setattr(self, name, getattr(tk, name))
        self.rhs = tk.rhs
        self.on_gpu = self.device.type == "cuda"
        self.gpu_memory_limit = gpu_memory_limit
        self._resident: dict[tuple[int, str], tuple[Any, Any, int]] = {}
        self._resident_bytes = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def stream(self) -> Any:
        """The calling thread's CUDA stream as a context (a no-op off the GPU)."""
        if not self.on_gpu:
            return contextlib.nullcontext()
        if getattr(self._local, "stream", None) is None:
            self._local.stream = self._torch.cuda.Stream(device=self.device)
        return self._torch.cuda.stream(self._local.stream)

    def block(self, X: Any, dtype: Any = None) -> Any:
        torch_dtype = _torch_dtype(self._torch, np.dtype(dtype or np.float64))
        if not self.on_gpu:
            return self._tk.to_block(X, self.device, torch_dtype)
        key = (id(X), str(torch_dtype))
        with self._lock:
            hit = self._resident.get(key)
            if hit is not None and hit[0]() is X:
                return hit[1]
        # A sparse block keeps its values and four int64 index arrays of nnz on the device.
        nbytes = int(X.data.nbytes + 32 * X.nnz if sp.issparse(X) else X.nbytes)
        if self._fits(nbytes):
            out = self._tk.to_block(X, self.device, torch_dtype)

            def forget(_ref: Any, key: tuple[int, str] = key) -> None:
                self._drop(key)

            try:
                ref = weakref.ref(X, forget)
            except TypeError:  # an object without weak references: do not keep it
                return out
            with self._lock:
                self._resident[key] = (ref, out, nbytes)
                self._resident_bytes += nbytes
            return out
        return self._tk.to_block(X, self.device, torch_dtype, pinned=True)

    def _fits(self, nbytes: int) -> bool:
        if self.gpu_memory_limit is None:
            free, _ = self._torch.cuda.mem_get_info(self.device)
            self.gpu_memory_limit = int(free // 2)
        with self._lock:
            return self._resident_bytes + nbytes <= self.gpu_memory_limit

    def _drop(self, key: tuple[int, str]) -> None:
        with self._lock:
            entry = self._resident.pop(key, None)
            if entry is not None:
                self._resident_bytes -= entry[2]

    def array(self, a: Any) -> Any:
        return self._torch.as_tensor(np.ascontiguousarray(a), device=self.device)

    def host(self, a: Any, dtype: Any = None) -> np.ndarray:
        out = a.detach().cpu().numpy() if isinstance(a, self._torch.Tensor) else np.asarray(a)
        return out if dtype is None else out.astype(dtype, copy=False)

    def cast(self, a: Any, dtype: Any) -> Any:
        return a.to(_torch_dtype(self._torch, np.dtype(dtype)))

    def vstack(self, parts: list[Any]) -> Any:
        return self._torch.cat(list(parts), dim=0)


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return torch.float32 if dtype == np.float32 else torch.float64


NUMPY = NumpyBackend()


@functools.lru_cache(maxsize=8)
def backend_for(
    name: str = "numpy", device: str = "auto", gpu_memory_limit: int | None = None
) -> Any:
    """The backend of a name (``"numpy"`` | ``"torch"``) on a device (torch only).

    Raises
    ------
    ValueError
        For an unknown backend or device; ImportError naming the extra when torch is missing.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {name!r}")
    if name == "numpy":
        if device not in ("auto", "cpu"):
            raise ValueError(f"device={device!r} needs backend='torch'")
        return NUMPY
    try:
        import torch  # noqa: F401
    except ImportError as err:  # pragma: no cover - torch is a dev dependency
        raise ImportError("backend='torch' needs torch: pip install 'scalenmf[torch]'") from err
    return TorchBackend(device, gpu_memory_limit)
