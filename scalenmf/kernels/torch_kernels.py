"""The block kernels on torch: the same algorithms as the numpy kernels, on any torch device.

Each function here is the numpy kernel of the same name (:mod:`.gram`, :mod:`.nnls`,
:mod:`.mu`) written against torch tensors, step for step, so that on the CPU in float64 the
two agree to round-off and on a GPU the same iteration runs there. Sparse blocks travel as
:class:`SparseBlock` (CSR tensors of X and Xᵀ and the non-zeros' coordinates). torch is
imported by this module alone; nothing else in :mod:`scalenmf.kernels` needs it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from scalenmf.kernels.mu import EPS
from scalenmf.kernels.nnls import BPP_TOL, NNLSInfo, descend, exchange_in_blocks

#: Entries of the (nnz, k) temporaries of sparse gathers, and of (c, k, k) stacked solves.
GATHER_ENTRIES = 1 << 22
STACK_ENTRIES = 1 << 22


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: the first CUDA device when one is present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device here")
    return dev


def _csr(indptr: torch.Tensor, indices: torch.Tensor, data: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        return torch.sparse_csr_tensor(
            indptr,
            indices,
            data,
            size=shape,
            check_invariants=False,  # blocks are validated when they are read
        )


@dataclass
class SparseBlock:
    """A sparse (m, n) block on a device, its index arrays there once.

    ``rows``/``cols``/``data`` are the non-zeros in CSC order; Xᵀ as CSR is the CSC arrays
    as they are (``indptr``, ``indices``), X as CSR has ``csr_indptr``, ``csr_indices`` and
    the values ``data[to_csr]``.
    """

    shape: tuple[int, int]
    rows: torch.Tensor
    cols: torch.Tensor
    data: torch.Tensor
    indptr: torch.Tensor
    indices: torch.Tensor
    csr_indptr: torch.Tensor
    csr_indices: torch.Tensor
    to_csr: torch.Tensor

    def transposed(self, values: torch.Tensor) -> torch.Tensor:
        """Xᵀ's pattern with other values (CSC order): a CSR tensor (n, m)."""
        m, n = self.shape
        return _csr(self.indptr, self.indices, values, (n, m))

    def straight(self, values: torch.Tensor) -> torch.Tensor:
        """X's pattern with other values (CSC order): a CSR tensor (m, n)."""
        return _csr(self.csr_indptr, self.csr_indices, values[self.to_csr], self.shape)

    def sum(self) -> float:
        return float(self.data.sum(dtype=torch.float64))


def _upload(a: np.ndarray, device: torch.device, pinned: bool) -> torch.Tensor:
    """A host array on the device; from pinned memory without blocking when ``pinned``."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if pinned and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_block(
    X: Any, device: torch.device, dtype: torch.dtype, pinned: bool = False
) -> torch.Tensor | SparseBlock:
    """A numpy / scipy.sparse block on the device in ``dtype`` (``pinned``: streamed)."""
    if not sp.issparse(X):
        return _upload(np.asarray(X), device, pinned).to(dtype)
    csc = sp.csc_matrix(X)
    counts = np.diff(csc.indptr)
    cols = np.repeat(np.arange(csc.shape[1], dtype=np.int64), counts)
    # CSR order of the CSC entries: by row, then column (a stable sort keeps columns ordered).
    to_csr = np.argsort(csc.indices, kind="stable")
    csr_indptr = np.concatenate([[0], np.cumsum(np.bincount(csc.indices, minlength=csc.shape[0]))])

    def put(a: np.ndarray) -> torch.Tensor:
        return _upload(a.astype(np.int64, copy=False), device, pinned)

    rows = put(csc.indices)
    return SparseBlock(
        shape=(int(csc.shape[0]), int(csc.shape[1])),
        rows=rows,
        cols=put(cols),
        data=_upload(csc.data, device, pinned).to(dtype),
        indptr=put(csc.indptr),
        indices=rows,
        csr_indptr=put(csr_indptr),
        csr_indices=put(cols[to_csr]),
        to_csr=put(to_csr),
    )


# -- Gram statistics ----------------------------------------------------------------------


def gram(W: torch.Tensor) -> torch.Tensor:
    """``WᵀW`` in float64, (k, k)."""
    W64 = W.to(torch.float64)
    return W64.T @ W64


def rhs(W: torch.Tensor, X: torch.Tensor | SparseBlock) -> torch.Tensor:
    """``WᵀX`` (k, n) in W's dtype."""
    if isinstance(X, SparseBlock):
        return (X.transposed(X.data.to(W.dtype)) @ W).T.contiguous()
    return W.T @ X.to(W.dtype)


def x_ht(X: torch.Tensor | SparseBlock, H: torch.Tensor) -> torch.Tensor:
    """``X Hᵀ`` (m, k) in float64 (accumulated in H's dtype within the block)."""
    if isinstance(X, SparseBlock):
        return (X.straight(X.data.to(H.dtype)) @ H.T).to(torch.float64)
    return (X.to(H.dtype) @ H.T).to(torch.float64)


def wh_at(W: torch.Tensor, H: torch.Tensor, X: SparseBlock) -> torch.Tensor:
    """``(W H)`` at the non-zeros of a sparse block, CSC order, float64."""
    W64, Ht = W.to(torch.float64), H.to(torch.float64).T
    out = torch.empty(X.rows.numel(), dtype=torch.float64, device=W.device)
    step = max(1, GATHER_ENTRIES // max(1, W.shape[1]))
    for a in range(0, out.numel(), step):
        b = min(a + step, out.numel())
        out[a:b] = (W64[X.rows[a:b]] * Ht[X.cols[a:b]]).sum(dim=1)
    return out


# -- penalties and batch shapes -------------------------------------------------------------


def _fold(G: torch.Tensor, B: torch.Tensor, l1: float, l2: float, dtype: torch.dtype):
    Gp = G.to(dtype).clone()
    if l2:
        idx = torch.arange(Gp.shape[-1], device=Gp.device)
        Gp[..., idx, idx] += l2
    Bp = B.to(dtype)
    if l1:
        Bp = Bp - l1
    single = Bp.ndim == 2
    Bb = Bp[None] if single else Bp
    R, k, _ = Bb.shape
    Gb = Gp.expand(R, k, k) if Gp.ndim == 2 else Gp
    if Gb.shape != (R, k, k):
        raise ValueError(f"G of shape {tuple(G.shape)} does not fit B of shape {tuple(B.shape)}")
    return Gb, Bb, single


# -- coordinate descent (nnls.descend, the one driver) ------------------------------------


class TorchArrays:
    """The array operations of :func:`scalenmf.kernels.nnls.descend` on torch (shared
    Grams (R, k, k) only: blocks with hidden entries run on numpy)."""

    @staticmethod
    def prepare(G, B, X0, l1: float, l2: float, finish: bool):
        out_dtype = B.dtype if B.is_floating_point() else torch.float64
        work = torch.float64 if finish else out_dtype
        Gb, Bb, single = _fold(G, B, l1, l2, work)
        X = torch.zeros(Bb.shape, dtype=work, device=Bb.device)
        if X0 is not None:
            X[...] = X0.reshape(Bb.shape)
        return Gb, Bb, X, single, out_dtype

    @staticmethod
    def compiled(G, B, X) -> bool:
        return False  # the compiled sweeps are numpy's; torch sweeps on its own device

    @staticmethod
    def diagonal(G):
        return torch.diagonal(G, dim1=-2, dim2=-1)[:, :, None]

    @staticmethod
    def inverse(diag, alive):
        return torch.where(alive, 1.0 / torch.where(alive, diag, torch.ones_like(diag)), 0.0)

    @staticmethod
    def scaled(G, B, inv):
        Gs = G * inv
        Gs.diagonal(dim1=-2, dim2=-1).zero_()
        return Gs, B * inv

    @staticmethod
    def sweep(Gs, Bs, X, weight):
        moved = None
        if weight is not None:
            moved = torch.zeros((X.shape[0], X.shape[2]), dtype=X.dtype, device=X.device)
        for i in range(X.shape[1]):
            new = torch.clamp_min(Bs[:, i, :] - torch.bmm(Gs[:, i : i + 1, :], X)[:, 0, :], 0)
            if moved is not None:
                moved = torch.maximum(moved, (new - X[:, i, :]).abs() * weight[:, i, :])
            X[:, i, :] = new
        return moved

    @staticmethod
    def kkt(G, B, X, alive):
        grad = torch.bmm(G, X) - B
        pg = torch.where(X > 0, grad.abs(), torch.clamp_min(-grad, 0)) * alive
        return pg.amax(dim=1)

    @staticmethod
    def nonzero(mask):
        return torch.nonzero(mask).ravel()

    @staticmethod
    def limit(Bb, tol: float):
        return tol * torch.clamp_min(Bb.abs().amax(dim=1), torch.finfo(Bb.dtype).tiny)

    @staticmethod
    def falses(like):
        return torch.zeros(like.shape, dtype=torch.bool, device=like.device)

    @staticmethod
    def arange(n: int, like):
        return torch.arange(n, device=like.device)

    @staticmethod
    def exact(G, B, X0):
        return nnls_bpp(G, B, X0)

    @staticmethod
    def output(X, dtype):
        return X.to(dtype)


def nnls_cd(
    G: torch.Tensor, B: torch.Tensor, X0: torch.Tensor | None = None, **options: Any
) -> tuple[torch.Tensor, NNLSInfo]:
    """:func:`scalenmf.kernels.nnls.nnls_cd` on torch (same options): G (k, k) or
    (R, k, k), B (k, n) or (R, k, n); the one driver, :func:`~.nnls.descend`."""
    return descend(TorchArrays, G, B, X0, **options)


# -- block principal pivoting (nnls.nnls_bpp) ---------------------------------------------


def _stacked_solve(G: torch.Tensor, F: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x_F = G_FF⁻¹ b_F`` (0 elsewhere) per system: G (c, k, k), F and b (c, k)."""
    out = torch.zeros_like(b)
    k = b.shape[1]
    chunk = max(1, STACK_ENTRIES // (k * k))
    eye = torch.eye(k, dtype=b.dtype, device=b.device)
    for a in range(0, b.shape[0], chunk):
        P = F[a : a + chunk]
        M = G[a : a + chunk] * (P[:, :, None] & P[:, None, :]) + eye * (~P)[:, None, :]
        rhs_ = torch.where(P, b[a : a + chunk], 0.0)
        x, info = torch.linalg.solve_ex(M, rhs_[..., None])
        x = x[..., 0]
        bad = (info != 0) | ~torch.isfinite(x).all(dim=1)
        if bool(bad.any()):
            x[bad] = (torch.linalg.pinv(M[bad]) @ rhs_[bad][..., None])[..., 0]
        out[a : a + chunk] = torch.where(P, x, 0.0)
    return out


def nnls_bpp(
    G: torch.Tensor,
    B: torch.Tensor,
    X0: torch.Tensor | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_rounds: int | None = None,
) -> tuple[torch.Tensor, NNLSInfo]:
    """:func:`scalenmf.kernels.nnls.nnls_bpp` on torch, in float64: the same start, block
    exchanges and backup rule, every infeasible column solved in one stacked solve."""
    out_dtype = B.dtype if B.is_floating_point() else torch.float64
    Gb, Bb, single = _fold(G, B, l1, l2, torch.float64)
    R, k, n = Bb.shape
    dev = Bb.device
    # Columns as rows of (T, k), T = R·n; column t is column t % n of fit t // n.
    Gt = Gb.repeat_interleave(n, dim=0) if R > 1 else Gb.expand(n, k, k)
    b = Bb.permute(0, 2, 1).reshape(R * n, k)
    alive = torch.diagonal(Gt, dim1=-2, dim2=-1) > 0
    b = torch.where(alive, b, torch.clamp_max(b, 0.0))
    tol_y = BPP_TOL * b.abs().amax(dim=1, keepdim=True)
    x = torch.zeros_like(b)
    y = -b
    if X0 is not None:
        F = (X0.reshape(R, k, n).permute(0, 2, 1).reshape(R * n, k) > 0) & alive
    else:
        F = alive.clone()
        xu = _stacked_solve(Gt, F, b)
        F = (xu > 0) & alive
    live = torch.arange(R * n, device=dev)

    def solve(cols: torch.Tensor) -> None:
        if cols.numel() == 0:
            return
        Gc, Fc, bc = Gt[cols], F[cols], b[cols]
        xc = _stacked_solve(Gc, Fc, bc)
        x[cols] = xc
        y[cols] = torch.where(Fc, 0.0, torch.bmm(Gc, xc[..., None])[..., 0] - bc)

    solve(live)
    rounds = 5 * k + 10 if max_rounds is None else max_rounds
    alpha = torch.full((R * n,), 3, dtype=torch.int64, device=dev)
    best = torch.full((R * n,), k + 1, dtype=torch.int64, device=dev)
    done_rounds = 0
    ks = torch.arange(k, device=dev)
    for done_rounds in range(rounds + 1):
        bad = (x[live] < 0) | (y[live] < -tol_y[live])
        count = bad.sum(dim=1)
        keep = count > 0
        live, bad, count = live[keep], bad[keep], count[keep]
        if live.numel() == 0 or done_rounds == rounds:
            break
        block = exchange_in_blocks(count, live, best, alpha)
        if not bool(block.all()):
            last = k - 1 - torch.argmax(bad.flip(1).to(torch.int8), dim=1)
            bad = torch.where(block[:, None], bad, ks[None, :] == last[:, None])
        F[live] = F[live] ^ bad
        solve(live)
    X = torch.clamp_min(x, 0).reshape(R, n, k).permute(0, 2, 1).contiguous()
    unconverged = 0
    if live.numel():
        for r in torch.unique(live // n).tolist():
            c = live[live // n == r] % n
            Xr, info = nnls_cd(Gb[r], Bb[r][:, c], X[r][:, c], max_sweeps=10_000, tol=1e-12)
            X[r][:, c] = Xr
            unconverged += info.unconverged or 0
    out = X[0] if single else X
    return out.to(out_dtype), NNLSInfo(done_rounds, unconverged)


# -- multiplicative updates (mu) ------------------------------------------------------------


def mu_frobenius(
    G: torch.Tensor, B: torch.Tensor, X: torch.Tensor, *, l1: float = 0.0, l2: float = 0.0
) -> torch.Tensor:
    """:func:`scalenmf.kernels.mu.mu_frobenius` on torch (G (k, k) or (R, k, k))."""
    Gd = G.to(X.dtype)
    denom = Gd @ X
    if l2:
        denom = denom + l2 * X
    denom = denom + (l1 + EPS)
    return X * torch.clamp_min(B.to(X.dtype), 0) / denom


def _ratio(X, W, H):
    dtype = torch.promote_types(W.dtype, H.dtype)
    if isinstance(X, SparseBlock):
        wh = wh_at(W, H, X)
        return (X.data.to(torch.float64) / torch.clamp_min(wh, EPS)).to(dtype), wh
    wh = W @ H
    return (X.to(dtype) / torch.clamp_min(wh, EPS)).to(dtype), wh


def mu_kl_h(
    W: torch.Tensor, X: Any, H: torch.Tensor, *, l1: float = 0.0, l2: float = 0.0
) -> torch.Tensor:
    """:func:`scalenmf.kernels.mu.mu_kl_h` on torch (no hidden entries)."""
    ratio, _ = _ratio(X, W, H)
    numer = (X.transposed(ratio) @ W).T if isinstance(X, SparseBlock) else W.T @ ratio
    denom = W.sum(dim=0, dtype=torch.float64)[:, None] + (l1 + EPS)
    if l2:
        denom = denom + l2 * H
    return (H * numer / torch.clamp_min(denom, EPS)).to(H.dtype)


def kl_block(
    W: torch.Tensor, X: Any, H: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """:func:`scalenmf.kernels.mu.kl_block` on torch: (numer (m, k), h_sum (k,), D, Σ x·wh)."""
    ratio, wh = _ratio(X, W, H)
    h_sum = H.sum(dim=1, dtype=torch.float64)
    if isinstance(X, SparseBlock):
        numer = (X.straight(ratio.to(H.dtype)) @ H.T).to(torch.float64)
        x = X.data.to(torch.float64)
        total_wh = float(W.sum(dim=0, dtype=torch.float64) @ h_sum)
        whf = wh.to(torch.float64)
    else:
        numer = (ratio.to(H.dtype) @ H.T).to(torch.float64)
        x = X.to(torch.float64).ravel()
        whf = wh.to(torch.float64).ravel()
        total_wh = float(whf.sum())
    nz = x > 0
    xs = x[nz]
    log_term = float(xs @ torch.log(xs / torch.clamp_min(whf[nz], EPS)))
    return numer, h_sum, log_term - float(x.sum()) + total_wh, float(x @ whf)
