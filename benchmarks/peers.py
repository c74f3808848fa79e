"""Run each peer NMF on a given matrix and return a record the harness can compare.

Every function takes X as features × samples (m×n, dense ndarray or scipy.sparse) and
returns a dict ``{peer, time_s, n_iter, rel_error, error, metric, ...}`` (see
``common.record``). Errors are computed by ``common.error_metrics`` from the peer's W and H,
never taken from the peer. ``time_s`` is the wall time of the fitting call only (data
conversion, file I/O and error computation are outside it). A peer whose software is absent
returns ``{"status": "not installed", ...}`` instead of raising.

Fairness knobs shared by every function: ``threads`` (all BLAS/OpenMP pools, in process
with threadpoolctl, in subprocesses through the environment), ``max_iter`` run in full
(tolerances set so that no peer stops early), and a ``seed``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.common import (
    DEFAULT_THREADS,
    Clock,
    error_metrics,
    limit_threads,
    record,
    thread_env,
    unavailable,
)

# --------------------------------------------------------------------------- scikit-learn


def _sklearn_loss(loss: str) -> str:
    if loss not in ("frobenius", "kl"):
        raise ValueError(f"loss must be 'frobenius' or 'kl', got {loss!r}")
    return "frobenius" if loss == "frobenius" else "kullback-leibler"


def _to_sklearn(X: Any) -> Any:
    """Xᵀ in sklearn's samples × features orientation (sparse: CSR view of a CSC X)."""
    if sp.issparse(X):
        return sp.csr_matrix(X.T)
    return np.asarray(X).T


def sklearn_nmf(
    X: Any,
    k: int,
    *,
    solver: str = "cd",
    loss: str = "frobenius",
    max_iter: int = 100,
    init: str = "nndsvda",
    seed: int = 0,
    threads: int = DEFAULT_THREADS,
    W0: np.ndarray | None = None,
    H0: np.ndarray | None = None,
    return_factors: bool = False,
) -> dict[str, Any]:
    """scikit-learn ``NMF(solver=solver)`` run for exactly ``max_iter`` iterations (tol=0).

    sklearn works on samples × features, so it is given Xᵀ (a transposed view; for sparse
    CSC X a CSR matrix, which shares the arrays) and its factors are transposed back:
    W = components_ᵀ (m×k), H = fit_transform(Xᵀ)ᵀ (k×n). The default init ``nndsvda``
    (NNDSVD with zeros filled by the mean, randomized SVD seeded by ``seed``) is sklearn's
    own default for these shapes and the one scalenmf is asked to use too. With
    ``W0``/``H0`` (m×k, k×n) it continues from those factors (init="custom"). The timed
    call is ``fit_transform`` (it includes the init). ``solver="cd"`` supports only the
    Frobenius loss.
    """
    peer = f"sklearn-{solver}" + ("/KL" if loss == "kl" else "")
    try:
        from sklearn.decomposition import NMF
        from sklearn.exceptions import ConvergenceWarning
    except ImportError:
        return unavailable(peer, "scikit-learn not installed")
    Xs = _to_sklearn(X)
    custom = W0 is not None and H0 is not None
    model = NMF(
        n_components=k,
        solver=solver,
        beta_loss=_sklearn_loss(loss),
        init="custom" if custom else init,
        max_iter=max_iter,
        tol=0.0,
        random_state=seed,
    )
    fit_kwargs: dict[str, Any] = {}
    if custom:
        # sklearn orientation: its W is our Hᵀ (n×k), its H our Wᵀ (k×m)
        fit_kwargs = {
            "W": np.ascontiguousarray(np.asarray(H0).T),
            "H": np.ascontiguousarray(np.asarray(W0).T),
        }
    with limit_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with Clock() as clock:
            Hs = model.fit_transform(Xs, **fit_kwargs)
        elapsed = clock.wall
    W = np.asarray(model.components_).T
    H = np.asarray(Hs).T
    rec = record(
        peer,
        time_s=elapsed,
        cpu_s=clock.cpu,
        n_iter=int(model.n_iter_),
        metric="kl" if loss == "kl" else "rel_error",
        init="custom" if custom else init,
        threads=threads,
        **error_metrics(X, W, H, loss),
    )
    if return_factors:
        rec["W"], rec["H"] = W, H
    return rec


def sklearn_fixed_iterations(X: Any, k: int, n_iter: int, **kwargs: Any) -> dict[str, Any]:
    """The error sklearn reaches after exactly ``n_iter`` iterations and the time they took.

    A thin name for ``sklearn_nmf(max_iter=n_iter, tol=0)``; it checks that sklearn did
    run ``n_iter`` iterations (it stops earlier only on an exact zero gradient).
    """
    rec = sklearn_nmf(X, k, max_iter=n_iter, **kwargs)
    if rec.get("n_iter") is not None and rec["n_iter"] != n_iter:
        rec["note"] = f"sklearn stopped after {rec['n_iter']} of {n_iter} iterations"
    return rec


def sklearn_error_trace(
    X: Any,
    k: int,
    checkpoints: Sequence[int],
    *,
    solver: str = "cd",
    loss: str = "frobenius",
    init: str = "nndsvda",
    seed: int = 0,
    threads: int = DEFAULT_THREADS,
) -> dict[str, Any]:
    """sklearn's error after each of ``checkpoints`` iterations (e.g. 10, 20, …, 100).

    Runs the first segment from ``init``, then continues from the previous W, H with
    init="custom" for each further segment. For cd (no shuffle) and mu the state of the
    algorithm is only (W, H), so this is the same trajectory as one long run. Returned
    ``time_s`` is cumulative fitting time (per-segment restarts add a little validation
    overhead; the error computation is outside the clock).
    """
    trace = []
    W = H = None
    done = 0
    total_t = 0.0
    for cp in sorted(checkpoints):
        step = cp - done
        if step <= 0:
            continue
        rec = sklearn_nmf(
            X,
            k,
            solver=solver,
            loss=loss,
            max_iter=step,
            init=init,
            seed=seed,
            threads=threads,
            W0=W,
            H0=H,
            return_factors=True,
        )
        if rec.get("time_s") is None:
            return rec
        W, H = rec.pop("W"), rec.pop("H")
        total_t += rec["time_s"]
        done = cp
        trace.append({"iteration": cp, "time_s": total_t, "error": rec["error"]})
    peer = f"sklearn-{solver}" + ("/KL" if loss == "kl" else "")
    return record(
        peer,
        time_s=total_t,
        n_iter=done,
        error_trace=trace,
        threads=threads,
        error=trace[-1]["error"] if trace else None,
    )


# --------------------------------------------------------------------------- R helpers


def _rscript() -> str | None:
    return shutil.which("Rscript")


def _r_has(package: str) -> bool:
    rs = _rscript()
    if rs is None:
        return False
    res = subprocess.run(
        [rs, "--vanilla", "-e", f"quit(status = !requireNamespace('{package}', quietly=TRUE))"],
        capture_output=True,
        timeout=120,
    )
    return res.returncode == 0


def _write_for_r(X: Any, tmp: Path) -> str:
    """Write X where R can read it fast; returns R code that defines ``A``.

    Dense: raw little-endian float64 in column-major order (R's own layout), read with
    ``readBin`` into a ``matrix``. Sparse: the CSC arrays (int32 indices/indptr, float64
    data) as raw binaries, assembled with ``Matrix::sparseMatrix(i=, p=, x=, index1=FALSE)``,
    which yields a dgCMatrix directly. No .rds, no text parsing.
    """
    m, n = X.shape
    if sp.issparse(X):
        Xc = sp.csc_matrix(X)
        Xc.sort_indices()
        Xc.indices.astype("<i4").tofile(tmp / "indices.bin")
        Xc.indptr.astype("<i4").tofile(tmp / "indptr.bin")
        Xc.data.astype("<f8").tofile(tmp / "data.bin")
        nnz = Xc.nnz
        return textwrap.dedent(f"""
            suppressMessages(library(Matrix))
            rd <- function(f, what, n, size) readBin(file.path(tmp, f), what, n = n, size = size)
            A <- Matrix::sparseMatrix(
                i = rd("indices.bin", "integer", {nnz}, 4),
                p = rd("indptr.bin", "integer", {n + 1}, 4),
                x = rd("data.bin", "double", {nnz}, 8),
                dims = c({m}L, {n}L), index1 = FALSE)
            A <- as(A, "CsparseMatrix")
        """)
    np.asarray(X, dtype="<f8").ravel(order="F").tofile(tmp / "dense.bin")
    return textwrap.dedent(f"""
        A <- matrix(readBin(file.path(tmp, "dense.bin"), "double", n = {m * n}, size = 8),
                    nrow = {m}L, ncol = {n}L)
    """)


def _run_r(
    code: str, tmp: Path, threads: int, timeout: float | None
) -> subprocess.CompletedProcess[str]:
    script = tmp / "run.R"
    script.write_text(f'tmp <- "{tmp.as_posix()}"\n' + code)
    return subprocess.run(
        [_rscript() or "Rscript", "--vanilla", str(script)],
        capture_output=True,
        text=True,
        env=thread_env(threads),
        timeout=timeout,
    )


def _read_f8(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Read an R column-major float64 dump as a C-ordered ndarray of ``shape``."""
    return np.fromfile(path, dtype="<f8").reshape(shape, order="F")


# --------------------------------------------------------------------------- RcppML


def rcppml_nmf(
    X: Any,
    k: int,
    *,
    max_iter: int = 50,
    tol: float = -1.0,
    seed: int = 123,
    L1: tuple[float, float] = (0.0, 0.0),
    threads: int = DEFAULT_THREADS,
    timeout: float | None = 3600,
) -> dict[str, Any]:
    """RcppML::nmf (Frobenius, alternating NNLS) through ``Rscript``.

    X goes to R as a base ``matrix`` (dense) or ``dgCMatrix`` (sparse); then
    ``RcppML::nmf(A, k, tol, maxit, verbose=FALSE, L1, seed)`` runs with its OpenMP pool
    set to ``threads`` (``RcppMLthreads`` env var, which ``getRcppMLthreads()`` reads, plus
    OMP_NUM_THREADS). Only that call is timed, inside R, with ``proc.time()`` (elapsed).
    RcppML returns A ≈ w·diag(d)·h; we take W = w·diag(d), H = h. It runs
    all ``max_iter`` iterations: its own criterion (``tol_ < tol``, the correlation
    distance between successive w) never fires with the default ``tol=-1`` — with 1e-10 it
    stopped at 24 of 50 iterations on the sparse benchmark set. Its init is uniform random
    w from ``seed`` (not NNDSVD).
    """
    peer = "RcppML"
    if _rscript() is None:
        return unavailable(peer, "Rscript not installed")
    if not _r_has("RcppML"):
        return unavailable(peer, "R package RcppML not installed")
    m, n = X.shape
    with tempfile.TemporaryDirectory(prefix="scalenmf-rcppml-") as d:
        tmp = Path(d)
        code = _write_for_r(X, tmp) + textwrap.dedent(f"""
            suppressMessages(library(RcppML))
            invisible(gc())
            t0 <- proc.time()
            fit <- RcppML::nmf(A, {k}L, tol = {tol!r}, maxit = {max_iter}L, verbose = FALSE,
                               L1 = c({L1[0]!r}, {L1[1]!r}), seed = {seed}L)
            pt <- proc.time() - t0
            el <- pt[["elapsed"]]
            cpu <- pt[["user.self"]] + pt[["sys.self"]]
            writeBin(as.double(fit$w), file.path(tmp, "w.bin"))
            writeBin(as.double(fit$d), file.path(tmp, "d.bin"))
            writeBin(as.double(fit$h), file.path(tmp, "h.bin"))
            writeLines(c(sprintf("%.6f", el), sprintf("%d", as.integer(fit$iter)),
                         sprintf("%d", getRcppMLthreads()), sprintf("%.6f", cpu)),
                       file.path(tmp, "time.txt"))
        """)
        res = _run_r(code, tmp, threads, timeout)
        if res.returncode != 0 or not (tmp / "time.txt").exists():
            return unavailable(peer, f"RcppML run failed: {res.stderr.strip()[-500:]}")
        el, it, r_threads, cpu = (tmp / "time.txt").read_text().split()
        w = _read_f8(tmp / "w.bin", (m, k))
        dvec = np.fromfile(tmp / "d.bin", dtype="<f8")
        h = _read_f8(tmp / "h.bin", (k, n))
    W = w * dvec[None, :]
    return record(
        peer,
        time_s=float(el),
        cpu_s=float(cpu),
        n_iter=int(it),
        metric="rel_error",
        init=f"random uniform w (seed={seed})",
        threads=int(r_threads),
        **error_metrics(X, W, h, "frobenius"),
    )


# --------------------------------------------------------------------------- R NMF package


def r_nmf_rank_survey(
    X: Any,
    ranks: Sequence[int] = (2, 3, 4, 5, 6),
    *,
    nrun: int = 10,
    method: str = "brunet",
    seed: int = 123456,
    threads: int = DEFAULT_THREADS,
    timeout: float | None = 7200,
) -> dict[str, Any]:
    """R package NMF: ``nmf(A, ranks, method, nrun, seed)`` — a rank survey, timed in R.

    For each rank the package runs ``nrun`` fits from random inits (seeded with ``seed``
    through its RNG) and keeps the consensus; we return per rank the cophenetic correlation
    (``NMF::cophcor``), the dispersion (``NMF::dispersion``) and the best fit's relative
    error computed here from its W, H. Parallelism: ``.opt = "vp<threads>"`` (the package's
    foreach/doParallel backend over runs) or ``"v-p"`` (sequential) when ``threads == 1``;
    BLAS pools get ``threads`` through the environment either way. ``method="brunet"`` is
    the KL multiplicative update of Brunet et al. 2004, the default of the package. Timing
    is the elapsed time of the ``nmf`` call only. X is densified (the package needs a
    dense matrix).
    """
    peer = f"R-NMF/{method}"
    if _rscript() is None:
        return unavailable(peer, "Rscript not installed")
    if not _r_has("NMF"):
        return unavailable(peer, "R package NMF not installed")
    Xd = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    m, n = Xd.shape
    ranks = [int(r) for r in ranks]
    opt = f"vp{threads}" if threads > 1 else "v-p"
    r_ranks = "c(" + ", ".join(f"{r}L" for r in ranks) + ")"
    with tempfile.TemporaryDirectory(prefix="scalenmf-rnmf-") as d:
        tmp = Path(d)
        code = _write_for_r(Xd, tmp) + textwrap.dedent(f"""
            suppressMessages(library(NMF))
            ranks <- {r_ranks}
            t0 <- proc.time()
            res <- NMF::nmf(A, ranks, method = "{method}", nrun = {nrun}L, seed = {seed}L,
                            .opt = "{opt}")
            el <- (proc.time() - t0)[["elapsed"]]
            fits <- if (length(ranks) == 1) list(res) else res$fit
            out <- data.frame(rank = ranks,
                              cophenetic = sapply(fits, NMF::cophcor),
                              dispersion = sapply(fits, NMF::dispersion))
            write.csv(out, file.path(tmp, "survey.csv"), row.names = FALSE)
            for (i in seq_along(ranks)) {{
                f <- fits[[i]]
                writeBin(as.double(NMF::basis(f)), file.path(tmp, sprintf("w%d.bin", ranks[i])))
                writeBin(as.double(NMF::coef(f)), file.path(tmp, sprintf("h%d.bin", ranks[i])))
            }}
            writeLines(sprintf("%.6f", el), file.path(tmp, "time.txt"))
        """)
        res = _run_r(code, tmp, threads, timeout)
        if res.returncode != 0 or not (tmp / "time.txt").exists():
            return unavailable(peer, f"R NMF run failed: {res.stderr.strip()[-500:]}")
        elapsed = float((tmp / "time.txt").read_text().split()[0])
        survey = []
        lines = (tmp / "survey.csv").read_text().strip().splitlines()[1:]
        for line in lines:
            r, coph, disp = (v.strip('"') for v in line.split(","))
            rk = int(r)
            W = _read_f8(tmp / f"w{rk}.bin", (m, rk))
            H = _read_f8(tmp / f"h{rk}.bin", (rk, n))
            survey.append(
                {
                    "rank": rk,
                    "cophenetic": float(coph),
                    "dispersion": float(disp),
                    **error_metrics(Xd, W, H, "kl"),
                }
            )
    return record(
        peer,
        time_s=elapsed,
        nrun=nrun,
        ranks=ranks,
        survey=survey,
        threads=threads,
        parallel_opt=opt,
    )


# --------------------------------------------------------------------------- nimfa


@contextlib.contextmanager
def _numpy_mat_shim() -> Iterator[None]:
    """nimfa 1.4 calls ``np.mat``, removed in NumPy 2; alias it to ``np.asmatrix`` meanwhile."""
    added = not hasattr(np, "mat")
    if added:
        setattr(np, "mat", np.asmatrix)  # noqa: B010 - a name ruff would flag as NPY201
    try:
        yield
    finally:
        if added:
            delattr(np, "mat")


def nimfa_nmf(
    X: Any,
    k: int,
    *,
    loss: str = "frobenius",
    max_iter: int = 100,
    seed: str = "random_vcol",
    rng_seed: int = 0,
    threads: int = DEFAULT_THREADS,
) -> dict[str, Any]:
    """nimfa ``Nmf`` (Lee & Seung multiplicative updates), an optional extra peer.

    ``update="euclidean", objective="fro"`` for Frobenius, ``"divergence"/"div"`` for KL.
    ``test_conv`` is set past ``max_iter`` so nimfa neither stops early nor evaluates its
    objective every iteration. Init: nimfa's ``random_vcol`` (averages of random columns),
    seeded through NumPy's global RNG with ``rng_seed``. nimfa keeps ``numpy.matrix``
    objects; on NumPy ≥ 2 a scoped ``np.mat`` alias is installed while it runs.
    """
    peer = "nimfa-mu" + ("/KL" if loss == "kl" else "")
    if importlib.util.find_spec("nimfa") is None:
        return unavailable(peer, "nimfa not installed (pip install nimfa)")
    with _numpy_mat_shim():
        import nimfa

        V = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        np.random.seed(rng_seed)  # noqa: NPY002 - nimfa's seeding methods draw from the global RNG
        model = nimfa.Nmf(
            V,
            rank=k,
            seed=seed,
            max_iter=max_iter,
            update="euclidean" if loss == "frobenius" else "divergence",
            objective="fro" if loss == "frobenius" else "div",
            test_conv=max_iter + 1,
        )
        with limit_threads(threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Clock() as clock:
                fit = model()
            elapsed = clock.wall
        W = fit.basis()
        H = fit.coef()
        W = W.toarray() if sp.issparse(W) else np.asarray(W)
        H = H.toarray() if sp.issparse(H) else np.asarray(H)
        n_iter = int(fit.fit.n_iter)
    return record(
        peer,
        time_s=elapsed,
        cpu_s=clock.cpu,
        n_iter=n_iter,
        metric="kl" if loss == "kl" else "rel_error",
        init=seed,
        threads=threads,
        **error_metrics(X, W, H, loss),
    )


def available_peers() -> dict[str, bool]:
    """Which peers can run here."""
    return {
        "sklearn": importlib.util.find_spec("sklearn") is not None,
        "RcppML": _r_has("RcppML"),
        "R-NMF": _r_has("NMF"),
        "nimfa": importlib.util.find_spec("nimfa") is not None,
    }


if __name__ == "__main__":  # a smoke run on a small matrix
    rng = np.random.default_rng(0)
    X0 = rng.poisson(rng.gamma(1.0, 1.0, (60, 4)) @ rng.gamma(1.0, 1.0, (4, 80))).astype(float)
    print(available_peers())
    for rec in (
        sklearn_nmf(X0, 4, solver="cd", max_iter=50),
        sklearn_nmf(X0, 4, solver="mu", max_iter=50),
        sklearn_nmf(X0, 4, solver="mu", loss="kl", max_iter=50),
        rcppml_nmf(X0, 4, max_iter=50),
        rcppml_nmf(sp.csc_matrix(X0), 4, max_iter=50),
        nimfa_nmf(X0, 4, max_iter=50),
        nimfa_nmf(X0, 4, loss="kl", max_iter=50),
    ):
        print(rec)
    sys.exit(0)
