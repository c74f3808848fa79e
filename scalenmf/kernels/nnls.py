"""Non-negative least squares in Gram form: one coordinate descent, one block pivoting.

For every column b of B (and every fit), from the Gram statistics alone (H step:
``G = WᵀW``, ``B = WᵀX``; W step, row-wise: ``G = HHᵀ``, ``B = (XHᵀ)ᵀ``), in the batch
shapes of :mod:`.penalty`::

    min_{x ≥ 0}  ½ xᵀ G x − bᵀ x + l1·Σx + ½ l2·‖x‖²

- :func:`nnls_cd` — coordinate descent (HALS): fixed sweeps (``tol = 0``) or a KKT stop
  per column, the columns that miss it finished by pivoting (``finish``) or counted;
- :func:`nnls_bpp` — exact block principal pivoting (Kim & Park 2011) over all columns
  of all fits, columns of one passive set sharing a factorisation.

Both return ``(X, NNLSInfo)``; a coordinate with a zero Gram diagonal (padding) is 0.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg.lapack import dposv

from scalenmf.kernels.penalty import as_batch, float_dtype, fold_penalties

#: Relative feasibility tolerance of the pivoting (of ``max|b|`` per column): above
#: round-off of the exact passive solves, below any meaningful violation.
BPP_TOL = 1e-12
#: At least ``max(GROUP_MIN, 256 // k)`` columns sharing a passive set share one
#: factorisation; the rest go through one stacked LAPACK solve (cost ~k³ per column).
GROUP_MIN = 8
#: Bytes of the (c, k, k) temporaries of a stacked solve.
STACK_BYTES = 1 << 24
#: Up to this rank, a shared-Gram solve tries every passive set at once (2^k small
#: systems, a dozen numpy calls) before pivoting: for small k the pivoting's per-group
#: work costs more than solving all the subsets.
ENUMERATE_MAX_K = 7


@dataclass(frozen=True)
class NNLSInfo:
    """What an NNLS call did.

    Attributes
    ----------
    iterations : int
        Sweeps, steps or pivoting rounds run (the most any column needed).
    unconverged : int or None
        Columns failing their optimality test at the end (None: nothing was tested).
    finished : int
        Columns coordinate descent handed to block pivoting (``finish=True``).
    """

    iterations: int
    unconverged: int | None = 0
    finished: int = 0

    @property
    def converged(self) -> bool:
        """Every column met its optimality test (False when none was tested)."""
        return self.unconverged == 0


# -- coordinate descent -----------------------------------------------------------------

#: ABI of the compiled loops (``_nnls.c``) this module calls.
NNLS_ABI = 2
#: Up to this rank the compiled pivoting solves shared-Gram columns one by one (a k×k
#: Cholesky each): 4–17× the numpy pivoting at k = 5..96 (benchmarks/bench_kernels.py).
COMPILED_BPP_MAX_K = 128


def _load_compiled() -> Any:
    """The compiled module, or None (not built, a stale build, or disabled with
    ``SCALENMF_NO_COMPILED=1``): the numpy code then runs, same results to round-off."""
    if os.environ.get("SCALENMF_NO_COMPILED", "") not in ("", "0"):
        return None
    import importlib

    try:
        # By module name: the optional extension, not the package (whose __init__ imports
        # this module).
        _nnls = importlib.import_module("scalenmf.kernels._nnls")
    except ImportError:
        return None
    return _nnls if getattr(_nnls, "ABI", None) == NNLS_ABI else None


_COMPILED = _load_compiled()
#: ``sweeps(G, B, X, count, moved=None)`` (see ``_nnls.c``), or None.
COMPILED_SWEEPS: Any = None if _COMPILED is None else _COMPILED.sweeps
#: ``bpp(G, B, X0, X, ok, rounds, tol) -> rounds`` (see ``_nnls.c``), or None.
COMPILED_BPP: Any = None if _COMPILED is None else _COMPILED.bpp
#: ``kl_cd(W, wsum, data, indices, indptr, H, done, l1, l2, sweeps, tol) -> sweeps``, or None.
COMPILED_KL: Any = None if _COMPILED is None else _COMPILED.kl_cd


def _compiled_applies(G: np.ndarray, B: np.ndarray, X: np.ndarray) -> bool:
    """Whether the compiled sweeps take these batches: shared Grams, one float dtype."""
    return (
        COMPILED_SWEEPS is not None
        and G.ndim == 3
        and G.dtype == B.dtype == X.dtype
        and G.dtype in (np.float64, np.float32)
    )


def _compiled_moved(G: np.ndarray, B: np.ndarray, X: np.ndarray) -> np.ndarray:
    """One compiled sweep in place; ``max_i G_ii·|Δx_i|`` per fit and column (R, n)."""
    moved = np.empty((X.shape[0], X.shape[2]))
    Xc = np.ascontiguousarray(X)  # a re-cut working copy may come out in another order
    COMPILED_SWEEPS(np.ascontiguousarray(G), np.ascontiguousarray(B), Xc, 1, moved)
    if Xc is not X:
        X[...] = Xc
    return moved


def _row_times(G: np.ndarray, i: int, X: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``(G X)_i`` for every fit and column, shape (R, n) (into ``out`` for one fit)."""
    if G.ndim == 3:
        if G.shape[0] == 1:
            return np.dot(G[0, i], X[0], out=out)[None]  # a gemv beats a batched matmul
        return np.matmul(G[:, i : i + 1, :], X)[:, 0, :]
    return np.einsum("rnl,rln->rn", G[:, :, i, :], X)


def _times(G: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``G X`` for every fit and column, shape (R, k, n)."""
    return np.matmul(G, X) if G.ndim == 3 else np.einsum("rnkl,rln->rkn", G, X)


def _diagonal(G: np.ndarray) -> np.ndarray:
    """Gram diagonals as (R, k, 1) (shared) or (R, k, n) (per column)."""
    d = np.diagonal(G, axis1=-2, axis2=-1)
    return d[:, :, None] if G.ndim == 3 else np.ascontiguousarray(d.transpose(0, 2, 1))


def _scaled(G: np.ndarray, B: np.ndarray, inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(G_il / G_ii with a zero diagonal, b_i / G_ii)``: a coordinate step is then
    ``x_i ← max(0, b̃_i − G̃_i·x)``, three array calls per row."""
    k = G.shape[-1]
    scale = inv[:, :, 0, None] if G.ndim == 3 else inv.transpose(0, 2, 1)[..., None]
    Gs = G * scale
    if not Gs.flags.c_contiguous:  # the diagonal is zeroed through a flat view below
        Gs = np.ascontiguousarray(Gs)
    Gs.reshape(*Gs.shape[:-2], k * k)[..., :: k + 1] = 0
    return Gs, B * inv


def _sweep(Gs: np.ndarray, Bs: np.ndarray, X: np.ndarray, weight: np.ndarray | None):
    """One sweep in place, row by row: ``x_i ← max(0, b̃_i − G̃_i·X)`` (see :func:`_scaled`).

    With ``weight`` (the Gram diagonal), returns ``max_i weight_i·|Δx_i|`` per fit and
    column (R, n).
    """
    R, k, n = X.shape
    if R == 1 and Gs.ndim == 3 and weight is None:
        # One fit, fixed sweeps (HALS): 2-D rows and one buffer, three C calls per row.
        G1, B1, X1, row_buf = Gs[0], Bs[0], X[0], np.empty(n, dtype=X.dtype)
        for i in range(k):
            np.dot(G1[i], X1, out=row_buf)
            np.subtract(B1[i], row_buf, out=row_buf)
            np.maximum(row_buf, 0, out=X1[i])
        return None
    moved = None if weight is None else np.zeros((R, n), dtype=X.dtype)
    buf = np.empty(n, dtype=X.dtype) if R == 1 and Gs.ndim == 3 else None
    for i in range(k):
        step = _row_times(Gs, i, X, buf)
        np.subtract(Bs[:, i, :], step, out=step)
        row = X[:, i, :]
        if moved is None or weight is None:
            np.maximum(step, 0, out=row)  # in place: no temporary per row
            continue
        np.maximum(step, 0, out=step)
        change = np.abs(step - row)
        change *= weight[:, i, :]
        np.maximum(moved, change, out=moved)
        row[...] = step
    return moved


def _kkt_residual(G: np.ndarray, B: np.ndarray, X: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Largest projected-gradient entry per fit and column (R, n); ``∇ = G x − b``."""
    grad = _times(G, X) - B
    pg = np.where(X > 0, np.abs(grad), np.maximum(-grad, 0))
    pg *= alive
    return pg.max(axis=1)


def nnls_cd(
    G: np.ndarray,
    B: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_sweeps: int = 100,
    tol: float = 1e-6,
    finish: bool = False,
) -> tuple[np.ndarray, NNLSInfo]:
    """NNLS by coordinate descent (HALS sweeps), batched; KKT stop per column.

    Parameters
    ----------
    G : ndarray, shape (k, k), (R, k, k) or (R, n, k, k)
    B : ndarray, shape (k, n) or (R, k, n)
        Its float dtype is the working dtype (float64 with ``finish``).
    X0 : ndarray, shape of B, optional
        Warm start (not modified); zeros when omitted.
    max_sweeps : int
        Sweep budget; with ``tol = 0`` exactly this many sweeps run (HALS).
    tol : float
        A column is optimal when its projected gradient is at most ``tol·max|b − l1|``.
    finish : bool
        Solve the columns not optimal after ``max_sweeps`` exactly by pivoting.

    Returns
    -------
    X : ndarray, shape of B, dtype of B (float64 for integer B)
    info : NNLSInfo
    """
    return descend(
        NumpyArrays, G, B, X0, l1=l1, l2=l2, max_sweeps=max_sweeps, tol=tol, finish=finish
    )


class NumpyArrays:
    """The array operations :func:`descend` needs, on numpy (torch has its own set)."""

    @staticmethod
    def prepare(G, B, X0, l1: float, l2: float, finish: bool):
        """Folded, batched ``(G, B)``, the working X (warm start or zeros), whether B was
        one fit, and the output dtype."""
        out_dtype = float_dtype(B)
        work = np.dtype(np.float64) if finish else out_dtype
        Gb, Bb, single = as_batch(*fold_penalties(G, B, l1, l2, work))
        if X0 is None:
            return Gb, Bb, np.zeros(Bb.shape, dtype=work), single, out_dtype
        return Gb, Bb, np.array(X0, dtype=work, order="C").reshape(Bb.shape), single, out_dtype

    diagonal = staticmethod(_diagonal)
    scaled = staticmethod(_scaled)
    sweep = staticmethod(_sweep)
    kkt = staticmethod(_kkt_residual)
    nonzero = staticmethod(np.flatnonzero)

    @staticmethod
    def inverse(diag: np.ndarray, alive: np.ndarray) -> np.ndarray:
        return np.divide(1, diag, out=np.zeros_like(diag), where=alive)

    @staticmethod
    def limit(Bb: np.ndarray, tol: float) -> np.ndarray:
        return tol * np.maximum(np.abs(Bb).max(axis=1), np.finfo(Bb.dtype).tiny)

    @staticmethod
    def falses(like: np.ndarray) -> np.ndarray:
        return np.zeros(like.shape, dtype=bool)

    @staticmethod
    def arange(n: int, like: np.ndarray) -> np.ndarray:
        return np.arange(n)

    @staticmethod
    def exact(G, B, X0):
        return nnls_bpp(G, B, X0)

    compiled = staticmethod(_compiled_applies)
    compiled_moved = staticmethod(_compiled_moved)

    @staticmethod
    def compiled_sweeps(G: np.ndarray, B: np.ndarray, X: np.ndarray, count: int) -> None:
        COMPILED_SWEEPS(np.ascontiguousarray(G), np.ascontiguousarray(B), X, count)

    @staticmethod
    def output(X: np.ndarray, dtype) -> np.ndarray:
        return X.astype(dtype, copy=False)


def descend(
    ops: Any,
    G: Any,
    B: Any,
    X0: Any = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_sweeps: int = 100,
    tol: float = 1e-6,
    finish: bool = False,
) -> tuple[Any, NNLSInfo]:
    """The coordinate-descent driver of :func:`nnls_cd`, written once for every array
    library: ``ops`` (:class:`NumpyArrays` or the torch kernels' set) does the array work.

    Sweeps run on a working copy of the unfinished columns; a column is done when its
    projected gradient passes the KKT test (tested only where the last steps were small).
    """
    Gb, Bb, X, single, out_dtype = ops.prepare(G, B, X0, l1, l2, finish)
    compiled = ops.compiled(Gb, Bb, X)
    if compiled and tol <= 0 and max_sweeps > 0:
        # Fixed sweeps (HALS) in one compiled call: no scaled copies, no per-row calls.
        ops.compiled_sweeps(Gb, Bb, X, max_sweeps)
        return ops.output(X[0] if single else X, out_dtype), NNLSInfo(max_sweeps, None)
    diag = ops.diagonal(Gb)
    alive = diag > 0
    X *= alive  # a dead coordinate is 0 and stays 0 (its scaled row and b are 0)
    Gs, Bs = ops.scaled(Gb, Bb, ops.inverse(diag, alive))
    sweeps = 0
    if tol <= 0:
        for sweeps in range(1, max_sweeps + 1):  # noqa: B007 - the count is returned
            ops.sweep(Gs, Bs, X, None)
        return ops.output(X[0] if single else X, out_dtype), NNLSInfo(sweeps, None)
    per_column = Gb.ndim == 4
    limit = ops.limit(Bb, tol)  # (R, n)
    done = ops.falses(limit)
    # Re-cut the working copy only when fewer than half of its columns are left (a copy
    # per sweep would cost more than it saves).
    work = ops.arange(Bb.shape[2], Bb)
    Gw, Bw, Xw, Gs_w, Bs_w, diag_w, alive_w, lim_w = Gb, Bb, X, Gs, Bs, diag, alive, limit
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007
        moved = ops.compiled_moved(Gw, Bw, Xw) if compiled else ops.sweep(Gs_w, Bs_w, Xw, diag_w)
        # A column whose last steps were large is not optimal; test the others exactly.
        cand = ops.nonzero(((moved <= lim_w) & ~done[:, work]).any(axis=0))
        if len(cand):
            Gc = Gw[:, cand] if per_column else Gw
            ac = alive_w[:, :, cand] if per_column else alive_w
            res = ops.kkt(Gc, Bw[:, :, cand], Xw[:, :, cand], ac)
            done[:, work[cand]] |= res <= lim_w[:, cand]
        left = ~done[:, work].all(axis=0)
        n_left = int(left.sum())
        if n_left == 0:
            break
        if n_left < len(work) // 2:
            if Xw is not X:
                X[:, :, work] = Xw
            work = work[left]
            Xw, Bw, Bs_w, lim_w = Xw[:, :, left], Bw[:, :, left], Bs_w[:, :, left], lim_w[:, left]
            if per_column:
                Gw, Gs_w = Gw[:, left], Gs_w[:, left]
                diag_w, alive_w = diag_w[:, :, left], alive_w[:, :, left]
    if Xw is not X:
        X[:, :, work] = Xw
    if not bool(done.all()):
        # The last sweep's large steps only suggested these were not optimal: test them.
        cols = ops.nonzero(~done.all(axis=0))
        Gc = Gb[:, cols] if per_column else Gb
        ac = alive[:, :, cols] if per_column else alive
        done[:, cols] |= ops.kkt(Gc, Bb[:, :, cols], X[:, :, cols], ac) <= limit[:, cols]
    finished = 0
    if finish and not bool(done.all()):
        finished = int((~done).sum())
        unconverged = 0
        for r in ops.nonzero(~done.all(axis=1)).tolist():
            cols = ops.nonzero(~done[r])
            Gr = Gb[r, cols][None] if per_column else Gb[r][None]
            Xr, info = ops.exact(Gr, Bb[r][None][:, :, cols], X[r][None][:, :, cols])
            X[r][:, cols] = Xr[0]
            unconverged += info.unconverged or 0
    else:
        unconverged = int((~done).sum())
    return ops.output(X[0] if single else X, out_dtype), NNLSInfo(sweeps, unconverged, finished)


# -- block principal pivoting -------------------------------------------------------------


def _masked_identity(G: np.ndarray, P: np.ndarray) -> np.ndarray:
    """G (T, k, k) or (k, k) restricted to each system's set P, identity outside."""
    k = G.shape[-1]
    M = G * (P[:, :, None] & P[:, None, :])
    M[:, np.arange(k), np.arange(k)] += ~P
    return M


def _stack_solve(M: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a stack of systems (T, k, k) x = (T, k); least squares where one is singular."""
    try:
        return np.linalg.solve(M, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(A, r, rcond=None)[0] for A, r in zip(M, rhs, strict=True)])


def _spd_solve(G: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``G⁻¹ B`` by Cholesky (``posv``: half ``numpy.linalg.solve``'s overhead here)."""
    _, X, info = dposv(G, B)
    return X if info == 0 else np.linalg.lstsq(G, B, rcond=None)[0]


def _unconstrained(G: np.ndarray, B: np.ndarray, alive: np.ndarray) -> np.ndarray | None:
    """``G⁻¹ b`` on the live coordinates (R, k, n); None where G is singular."""
    try:
        if G.ndim == 3:
            P = alive[:, :, 0]
            X = (
                np.linalg.solve(G, B)
                if P.all()
                else np.linalg.solve(_masked_identity(G, P), B * alive)
            )
        else:
            R, k, n = B.shape
            P = alive.transpose(0, 2, 1).reshape(R * n, k)
            Bt = B.transpose(0, 2, 1).reshape(R * n, k) * P
            X = np.linalg.solve(_masked_identity(G.reshape(R * n, k, k), P), Bt[..., None])
            X = X[..., 0].reshape(R, n, k).transpose(0, 2, 1)
    except np.linalg.LinAlgError:
        return None
    return X if np.isfinite(X).all() else None


def unconstrained_start(
    G: np.ndarray, B: np.ndarray, *, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """``max(0, (G + l2·I)⁻¹ (b − l1))`` (float64, shape of B; 0 where G is singular).

    The answer for every column without an active bound, and the start of exact solvers.
    """
    Gp, Bp = fold_penalties(G, B, l1, l2, np.dtype(np.float64))
    Gb, Bb, single = as_batch(Gp, Bp)
    X = _unconstrained(Gb, Bb, _diagonal(Gb) > 0)
    X = np.zeros(Bb.shape) if X is None else np.maximum(X, 0)
    return X[0] if single else X


# Column gathers use ``np.take(A, idx, axis=1)``: 2–5× faster than ``A[:, idx]`` here.


class _Pivoting:
    """Pivoting state over T = R·n columns laid out (k, T); column t is ``t % n`` of fit
    ``t // n``. ``x`` is 0 off F, ``y = G x − b`` is 0 on F. A dead coordinate gets
    ``b ≤ 0``, so ``y ≥ 0``: never infeasible, it stays 0.
    """

    def __init__(self, G: np.ndarray, B: np.ndarray):
        R, k, n = B.shape
        self.k, self.n, self.R = k, n, R
        self.shared = G.ndim == 3
        self.G = G if self.shared else G.reshape(R * n, k, k)
        b = B[0] if R == 1 else np.ascontiguousarray(B.transpose(1, 0, 2)).reshape(k, R * n)
        d = np.diagonal(G, axis1=-2, axis2=-1)  # (R, k) or (R, n, k)
        alive = np.repeat(d.T > 0, n, axis=1) if self.shared else d.reshape(R * n, k).T > 0
        self.alive = alive
        self.b = b if alive.all() else np.where(alive, b, np.minimum(b, 0.0))
        self.x = np.zeros((k, R * n))
        self.y = -self.b
        self.F = np.zeros((k, R * n), dtype=bool)
        self.tol_y = BPP_TOL * np.abs(self.b).max(axis=0)
        self.pack = k <= 56 and k + max(1, R).bit_length() <= 62

    def solve(self, cols: np.ndarray) -> None:
        """x_F = G_FF⁻¹ b_F, y = G x − b (0 on F) for the given columns (ascending)."""
        if cols.size == 0:
            return
        if not self.shared:
            F, b = np.take(self.F, cols, axis=1), np.take(self.b, cols, axis=1)
            G = self.G[cols]
            x = _stacked_solve(G, F, b)
            self.x[:, cols] = x
            self.y[:, cols] = (np.einsum("tkl,lt->kt", G, x) - b) * ~F
            return
        # Sort by (fit, passive set): each group is then a contiguous slice of one copy.
        F = np.take(self.F, cols, axis=1)
        fits = cols // self.n
        if self.pack:
            packed = np.packbits(F, axis=0, bitorder="little").astype(np.int64)
            keys = fits << self.k
            for byte in range(packed.shape[0]):
                keys |= packed[byte] << (8 * byte)
        else:
            rows = np.vstack([fits, np.packbits(F, axis=0)]).T
            keys = np.unique(rows, axis=0, return_inverse=True)[1].ravel()
        order = np.argsort(keys, kind="stable")
        perm, sk, fits = cols[order], keys[order], fits[order]
        F, b = np.take(F, order, axis=1), np.take(self.b, perm, axis=1)
        x = np.zeros_like(b)
        starts = np.flatnonzero(_changes(sk))
        ends = np.append(starts[1:], sk.size)
        big = ends - starts >= max(GROUP_MIN, 256 // self.k)
        for a, e in zip(starts[big], ends[big], strict=True):
            pas = np.flatnonzero(F[:, a])
            if pas.size:
                x[pas, a:e] = _spd_solve(self.G[fits[a]][np.ix_(pas, pas)], b[pas, a:e])
        if not big.all():
            rare = np.flatnonzero(np.repeat(~big, ends - starts))
            # Sorted by fit: each fit's Gram is broadcast over its rare columns, not copied.
            rf = fits[rare]
            for a, e in itertools.pairwise(np.append(np.flatnonzero(_changes(rf)), rf.size)):
                r = rare[a:e]
                Fr, br = np.take(F, r, axis=1), np.take(b, r, axis=1)
                x[:, r] = _stacked_solve(self.G[rf[a]], Fr, br)
        # The residual: one product per fit (the fits are contiguous in this order).
        if self.R == 1:
            y = self.G[0] @ x
        else:
            y = np.empty_like(b)
            bounds = np.append(np.flatnonzero(_changes(fits)), fits.size)
            for a, e in itertools.pairwise(bounds):
                np.matmul(self.G[fits[a]], x[:, a:e], out=y[:, a:e])
        y -= b
        y[F] = 0.0
        self.x[:, perm] = x
        self.y[:, perm] = y

    def infeasible(self, cols: np.ndarray) -> np.ndarray:
        """(k, c) mask of the infeasible variables of the given columns."""
        x, y = np.take(self.x, cols, axis=1), np.take(self.y, cols, axis=1)
        return (x < 0) | (y < -np.take(self.tol_y, cols))


def _changes(v: np.ndarray) -> np.ndarray:
    """Where a sorted vector starts a new run: True at 0 and wherever v differs from before."""
    out = np.empty(v.size, dtype=bool)
    out[:1] = True
    np.not_equal(v[1:], v[:-1], out=out[1:])
    return out


def _stacked_solve(G: np.ndarray, F: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x_F = G_FF⁻¹ b_F`` (0 elsewhere) per system by batched LAPACK: G (c, k, k) or
    (k, k), F and b (k, c) → (k, c)."""
    k, c = b.shape
    x = np.empty((k, c))
    chunk = max(1, STACK_BYTES // (8 * k * k))
    for a in range(0, c, chunk):
        P = F[:, a : a + chunk].T
        rhs = np.where(P, b[:, a : a + chunk].T, 0.0)
        x[:, a : a + chunk] = np.where(
            P, _stack_solve(_masked_identity(G if G.ndim == 2 else G[a : a + chunk], P), rhs), 0.0
        ).T
    return x


@functools.lru_cache(maxsize=16)
def _subsets(k: int) -> np.ndarray:
    """All 2^k passive sets (S, k), set s holding the coordinates of s's bits (read-only)."""
    sets = ((np.arange(1 << k)[:, None] >> np.arange(k)) & 1).astype(bool)
    sets.flags.writeable = False
    return sets


def _set_inverses(G: np.ndarray, live: np.ndarray) -> np.ndarray | None:
    """``G_PP⁻¹`` of each system's passive set, zero outside P: G (T, k, k) and the sets
    ``live`` (T, k) → (T, k, k); None where one is singular."""
    k = G.shape[-1]
    M = G * (live[:, :, None] & live[:, None, :])  # G on P × P, the identity elsewhere
    M[:, np.arange(k), np.arange(k)] += ~live
    try:
        inv = np.linalg.inv(M)
    except np.linalg.LinAlgError:
        return None
    inv *= live[:, :, None]  # rows outside P give x = 0
    return inv if np.isfinite(inv).all() else None


def _every_inverse(G: np.ndarray, sets: np.ndarray, alive: np.ndarray) -> np.ndarray | None:
    """Every set's ``G_PP⁻¹`` per fit, (R, S, k, k). A dead coordinate is never passive:
    the sets with it act as the sets without it."""
    R, k, S = G.shape[0], G.shape[-1], sets.shape[0]
    live = (sets[None] & alive[:, None, :]).reshape(R * S, k)
    inv = _set_inverses(np.repeat(G, S, axis=0), live)
    return None if inv is None else inv.reshape(R, S, k, k)


def _subset_solutions(
    G: np.ndarray, B: np.ndarray, X0: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The NNLS answer of every column found among all 2^k passive sets, shared Grams.

    A column is first tried with the passive set of its warm start (the previous factor:
    right for most columns after a few iterations); only the sets that occur are inverted.
    The columns that fail are solved against every set at once, each set's ``G_PP⁻¹``
    formed once per fit (the primal-feasible candidate of least objective, ``−½ b_Pᵀ x_P``
    at a solution). An answer is kept only where it passes the pivoting's test (``x ≥ 0``,
    and ``G x − b ≥ −tol`` where ``x = 0``).

    Parameters
    ----------
    G : ndarray, shape (R, k, k)
        A zero diagonal entry (rank padding) is a coordinate held at 0.
    B, X0 : ndarray, shape (R, k, n)

    Returns
    -------
    X : ndarray, shape (R, k, n), float64
    ok : ndarray of bool, shape (R, n)
        Columns whose answer passed the test (the others need pivoting). None where a
        subset system is singular.
    """
    R, k, n = B.shape
    sets = _subsets(k)
    S = sets.shape[0]
    alive = np.diagonal(G, axis1=1, axis2=2) > 0  # (R, k): padding coordinates are dead
    X = np.empty((R, k, n))
    ok = np.zeros((R, n), dtype=bool)
    every: np.ndarray | None = None  # (R, S, k, k) every set's inverse, once needed
    if X0 is not None:
        # Every fit's columns at once with the passive set of their warm start; only the
        # sets that occur are inverted when they are few (after the first iterations).
        warm = np.einsum("k,rkn->rn", 1 << np.arange(k), (X0 > 0) & alive[:, :, None])
        warm += S * np.arange(R)[:, None]  # index into the (R·S) sets of all fits
        used = np.flatnonzero(np.bincount(warm.ravel(), minlength=R * S))
        if 2 * used.size < R * S:
            inv = _set_inverses(G[used // S], sets[used % S] & alive[used // S])
            lookup = np.zeros(R * S, dtype=np.intp)
            lookup[used] = np.arange(used.size)
            which = lookup[warm]
        else:
            every = _every_inverse(G, sets, alive)
            inv, which = None if every is None else every.reshape(R * S, k, k), warm
        if inv is None:
            return None
        step = max(1, STACK_BYTES // (8 * k * k * R))
        for a in range(0, n, step):
            x = np.einsum("rnkl,rln->rkn", inv[which[:, a : a + step]], B[:, :, a : a + step])
            X[:, :, a : a + step] = x
            ok[:, a : a + step] = _passes(G, B[:, :, a : a + step], x)
    rows, cols = np.nonzero(~ok)
    if rows.size == 0:
        return X, ok
    # The other columns against all sets at once: the feasible candidate of least objective.
    if every is None:
        every = _every_inverse(G, sets, alive)
        if every is None:
            return None
    step = max(1, STACK_BYTES // (8 * S * k * (k + 1)))
    for a in range(0, rows.size, step):
        r, c = rows[a : a + step], cols[a : a + step]
        b = B[r, :, c]  # (c, k)
        cand = np.einsum("cskl,cl->csk", every[r], b)
        score = np.einsum("ck,csk->cs", b, cand)  # −2 × objective
        np.putmask(score, (cand < 0).any(axis=2), -np.inf)
        x = cand[np.arange(r.size), np.argmax(score, axis=1)]  # (c, k)
        X[r, :, c] = x
        ok[r, c] = _passes(G[r], b[:, :, None], x[:, :, None])[:, 0]
    return X, ok


def _passes(G: np.ndarray, B: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Columns of X (R, k, n) that meet the pivoting's optimality test for ``G`` (R, k, k)
    and ``B`` (R, k, n): (R, n)."""
    y = np.matmul(G, X) - B
    y += BPP_TOL * np.abs(B).max(axis=1, keepdims=True)
    return ((X >= 0) & ((y >= 0) | (X > 0))).all(axis=1)


def exchange_in_blocks(count: Any, live: Any, best: Any, alpha: Any) -> Any:
    """Kim & Park's rule, per live column: exchange all its infeasible variables while
    their count keeps falling or ``alpha`` (3) block tries are left, else one (the backup
    rule, which guarantees termination). Updates ``best`` and ``alpha`` in place (numpy or
    torch vectors over all columns) and returns the mask of block exchanges."""
    better = count < best[live]
    best[live[better]] = count[better]
    alpha[live[better]] = 3
    spend = ~better & (alpha[live] > 0)
    alpha[live[spend]] -= 1
    return better | spend


def nnls_bpp(
    G: np.ndarray,
    B: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_rounds: int | None = None,
) -> tuple[np.ndarray, NNLSInfo]:
    """Exact NNLS by block principal pivoting (Kim & Park 2011), batched, in float64.

    Infeasible variables of every (fit, column) move between the passive set F and the
    active set in blocks, with the single-exchange backup rule that guarantees
    termination; work follows the infeasible columns only. The start is the passive set
    of ``X0`` (the previous factor: most columns are optimal at once) or of the
    unconstrained solution.

    Parameters
    ----------
    G : ndarray, shape (k, k), (R, k, k) or (R, n, k, k)
    B : ndarray, shape (k, n) or (R, k, n)
    X0 : ndarray, shape of B, optional
        Warm start (only its passive set, ``X0 > 0``, is used).
    max_rounds : int, optional
        Safety bound (default ``5·k + 10``); columns still cycling then are finished by
        coordinate descent, and counted in ``unconverged`` if even that fails.

    Returns
    -------
    X : ndarray, shape of B, dtype of B (float64 for integer B)
    info : NNLSInfo
    """
    out_dtype = float_dtype(B)
    Gp, Bp = fold_penalties(G, B, l1, l2, np.dtype(np.float64))
    Gb, Bb, single = as_batch(Gp, Bp)
    k = Bb.shape[1]
    if Gb.ndim == 3 and COMPILED_BPP is not None and k <= COMPILED_BPP_MAX_K:
        return _compiled_pivoting(Gb, Bb, X0, max_rounds, single, out_dtype)
    if Gb.ndim == 3 and k <= ENUMERATE_MAX_K:
        warm = None if X0 is None else np.asarray(X0).reshape(Bb.shape)
        found = _subset_solutions(Gb, Bb, warm)
        if found is not None:
            X, ok = found
            unconverged = 0
            for r in np.flatnonzero(~ok.all(axis=1)):  # rare: pivot the columns that failed
                cols = np.flatnonzero(~ok[r])
                Xr, info = _pivot(Gb[r][None], Bb[r][None][:, :, cols], None, max_rounds)
                X[r][:, cols] = Xr[0]
                unconverged += info.unconverged or 0
            out = X[0] if single else X
            return out.astype(out_dtype, copy=False), NNLSInfo(0, unconverged)  # no pivoting
    X, info = _pivot(Gb, Bb, X0 if X0 is None or not single else np.asarray(X0)[None], max_rounds)
    out = X[0] if single else X
    return out.astype(out_dtype, copy=False), info


def _compiled_pivoting(
    Gb: np.ndarray,
    Bb: np.ndarray,
    X0: np.ndarray | None,
    max_rounds: int | None,
    single: bool,
    out_dtype: np.dtype,
) -> tuple[np.ndarray, NNLSInfo]:
    """:func:`nnls_bpp` on shared Grams by the compiled per-column pivoting; the columns
    it flags (a singular passive system, cycling) go through the numpy pivoting."""
    R, k, n = Bb.shape
    warm = None
    if X0 is not None:
        warm = np.ascontiguousarray(np.asarray(X0).reshape(Bb.shape), dtype=np.float64)
    X = np.empty(Bb.shape)
    ok = np.empty((R, n), dtype=bool)
    rounds = 5 * k + 10 if max_rounds is None else max_rounds
    most = COMPILED_BPP(
        np.ascontiguousarray(Gb), np.ascontiguousarray(Bb), warm, X, ok, rounds, BPP_TOL
    )
    unconverged = 0
    for r in np.flatnonzero(~ok.all(axis=1)):
        cols = np.flatnonzero(~ok[r])
        Xr, info = _pivot(Gb[r][None], Bb[r][None][:, :, cols], None, max_rounds)
        X[r][:, cols] = Xr[0]
        unconverged += info.unconverged or 0
        most = max(most, info.iterations)
    out = X[0] if single else X
    return out.astype(out_dtype, copy=False), NNLSInfo(most, unconverged)


def _pivot(
    Gb: np.ndarray, Bb: np.ndarray, X0: np.ndarray | None, max_rounds: int | None
) -> tuple[np.ndarray, NNLSInfo]:
    """Block principal pivoting on batched, folded float64 systems: G (R, k, k) or
    (R, n, k, k), B and X0 (R, k, n) → X (R, k, n)."""
    R, k, n = Bb.shape
    st = _Pivoting(Gb, Bb)
    T = R * n
    live = np.arange(T)
    if X0 is not None:
        X0b = np.asarray(X0).transpose(1, 0, 2).reshape(k, T)
        st.F = (X0b > 0) & st.alive
        st.solve(np.flatnonzero(st.F.any(axis=0)))
    else:
        xu = _unconstrained(Gb, Bb, _diagonal(Gb) > 0)
        if xu is not None:
            xu = xu[0] if R == 1 else xu.transpose(1, 0, 2).reshape(k, T)
            st.F = (xu > 0) & st.alive
            final = (st.F | ~st.alive).all(axis=0)
            # No active bound: the unconstrained solution is the answer (y = 0 on F).
            st.x[:, final] = xu[:, final]
            st.y[:, final] = 0.0
            live = np.flatnonzero(~final)
            st.solve(live[np.take(st.F, live, axis=1).any(axis=0)])
    rounds = 5 * k + 10 if max_rounds is None else max_rounds
    alpha = np.full(T, 3, dtype=np.int64)  # block exchanges left per column
    best = np.full(T, k + 1, dtype=np.int64)  # fewest infeasibilities seen per column
    done_rounds = 0
    for done_rounds in range(rounds + 1):
        bad = st.infeasible(live)
        count = bad.sum(axis=0)
        keep = count > 0
        if not keep.all():
            live, bad, count = live[keep], np.compress(keep, bad, axis=1), count[keep]
        if live.size == 0 or done_rounds == rounds:
            break
        block = exchange_in_blocks(count, live, best, alpha)
        # Backup rule: flip only the last infeasible variable of the other columns.
        if not block.all():
            last = k - 1 - np.argmax(bad[::-1], axis=0)
            bad = np.where(block[None, :], bad, np.arange(k)[:, None] == last[None, :])
        st.F[:, live] = np.take(st.F, live, axis=1) ^ bad
        st.solve(live)
    X = np.maximum(st.x, 0)
    X = X[None] if R == 1 else np.ascontiguousarray(X.reshape(k, R, n).transpose(1, 0, 2))
    unconverged = 0
    if live.size:
        # Cycling past the safety bound (rare, near-degenerate G): finish by descent.
        for r in np.unique(live // n):
            cols = live[live // n == r] % n
            Gr = Gb[r, cols][None] if Gb.ndim == 4 else Gb[r]
            Xr, info = nnls_cd(
                Gr, Bb[r][None][:, :, cols], X[r][None][:, :, cols], max_sweeps=10_000, tol=1e-12
            )
            X[r][:, cols] = Xr[0]
            unconverged += info.unconverged or 0
    return X, NNLSInfo(done_rounds, unconverged)
