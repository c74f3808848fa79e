"""Shared plumbing for the benchmarks: threads, timing, error metrics, child processes, tables.

Everything that has to be *identical for every peer* lives here: the thread settings and the
error metrics. Peers report their own factors ``W`` (m×k) and ``H`` (k×n); their own error
numbers are never used.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RcppMLthreads",  # read by RcppML::getRcppMLthreads()
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_THREADS = 2


# --------------------------------------------------------------------------- threads


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a subprocess with every known thread knob set to ``threads``."""
    env = dict(os.environ if base is None else base)
    for var in THREAD_ENV_VARS:
        env[var] = str(threads)
    return env


def set_thread_env(threads: int) -> None:
    """Set the thread variables in this process (inherited by every subprocess we start)."""
    os.environ.update({var: str(threads) for var in THREAD_ENV_VARS})


@contextlib.contextmanager
def limit_threads(threads: int) -> Iterator[None]:
    """Limit BLAS/OpenMP pools in this process (threadpoolctl when installed) and torch."""
    ctx: contextlib.AbstractContextManager[Any]
    try:
        from threadpoolctl import threadpool_limits

        ctx = threadpool_limits(limits=threads)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        ctx = contextlib.nullcontext()
    torch = sys.modules.get("torch")  # only if something already imported it
    old_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        with ctx:
            yield
    finally:
        if torch is not None and old_torch is not None:
            torch.set_num_threads(old_torch)


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Call ``fn()`` and return ``(result, wall seconds)`` (time.perf_counter)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class Clock:
    """Wall (``perf_counter``) and CPU (``process_time``, all threads) seconds of a block.

    ``cpu / wall`` close to the thread count means the block had its cores to itself;
    much lower on a CPU-bound fit means other work on the machine was competing.
    """

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def runnable_now() -> int:
    """Runnable threads on the machine right now (4th field of /proc/loadavg), 0 if unknown."""
    try:
        with open("/proc/loadavg") as fh:
            return int(fh.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0


def wait_for_quiet(max_load: float | None, timeout: float = 600.0) -> float:
    """Wait until the machine is quiet, or ``timeout`` seconds passed.

    Quiet: the 1-minute load average is ≤ ``max_load`` and, on three checks a second
    apart, nothing but this process is runnable. For shared machines: call before a
    measurement. Returns the 1-minute load seen last. A no-op when ``max_load`` is None.
    """
    load = load_average()
    if max_load is None:
        return load
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load = load_average()
        if load <= max_load:
            calm = 0
            for _ in range(3):
                calm += runnable_now() <= 1
                time.sleep(1.0)
            if calm == 3:
                break
        time.sleep(2.0)
    return load


# --------------------------------------------------------------------------- error metrics


def _column_blocks(n: int, block: int) -> Iterator[slice]:
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def _dense_block(X: Any, cols: slice) -> np.ndarray:
    blk = X[:, cols]
    if sp.issparse(blk):
        blk = blk.toarray()
    return np.asarray(blk, dtype=np.float64)


def _block_width(m: int, budget_bytes: int = 64 * 2**20) -> int:
    return max(1, budget_bytes // (8 * max(m, 1)))


def frobenius_norm(X: Any) -> float:
    """‖X‖_F in float64, for dense or scipy.sparse X."""
    if sp.issparse(X):
        d = np.asarray(X.data, dtype=np.float64)
        return float(np.sqrt(d @ d))
    total = 0.0
    for cols in _column_blocks(X.shape[1], _block_width(X.shape[0])):
        b = _dense_block(X, cols)
        total += float(np.einsum("ij,ij->", b, b))
    return float(np.sqrt(total))


def relative_error(X: Any, W: np.ndarray, H: np.ndarray) -> float:
    """‖X − WH‖_F / ‖X‖_F, computed directly (not by the Gram trick), block by block.

    X is features × samples (m×n), W is m×k, H is k×n. Residuals are formed explicitly per
    column block in float64, so the number does not suffer the cancellation of the Gram
    trick and is the same code for every peer.
    """
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    _check_shapes(X, W, H)
    num = 0.0
    for cols in _column_blocks(X.shape[1], _block_width(X.shape[0])):
        r = _dense_block(X, cols) - W @ H[:, cols]
        num += float(np.einsum("ij,ij->", r, r))
    return float(np.sqrt(num)) / frobenius_norm(X)


KL_EPS = 1e-12


def kl_divergence(X: Any, W: np.ndarray, H: np.ndarray) -> float:
    """Generalized KL divergence D(X ‖ WH) = Σ x·log(x / y) − x + y, with 0·log 0 = 0.

    y = WH is clipped below at ``KL_EPS`` (1e-12) where x > 0. For sparse X the Σ y term is
    ``1ᵀ W H 1`` and the log term runs over the non-zeros only (exact, no densifying).
    """
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    _check_shapes(X, W, H)
    sum_y = float(W.sum(axis=0) @ H.sum(axis=1))
    if sp.issparse(X):
        Xc = sp.csc_matrix(X)
        x = np.asarray(Xc.data, dtype=np.float64)
        rows = Xc.indices
        cols = np.repeat(np.arange(Xc.shape[1]), np.diff(Xc.indptr))
        y = np.empty_like(x)
        step = 1_000_000
        for s in range(0, x.size, step):
            e = s + step
            y[s:e] = np.einsum("ij,ij->i", W[rows[s:e]], H[:, cols[s:e]].T)
        pos = x > 0
        log_term = float(np.sum(x[pos] * np.log(x[pos] / np.maximum(y[pos], KL_EPS))))
        return log_term - float(x.sum()) + sum_y
    log_term = 0.0
    sum_x = 0.0
    for cols_ in _column_blocks(X.shape[1], _block_width(X.shape[0])):
        xb = _dense_block(X, cols_)
        yb = W @ H[:, cols_]
        pos = xb > 0
        xp = xb[pos]
        log_term += float(np.sum(xp * np.log(xp / np.maximum(yb[pos], KL_EPS))))
        sum_x += float(xb.sum())
    return log_term - sum_x + sum_y


def _check_shapes(X: Any, W: np.ndarray, H: np.ndarray) -> None:
    m, n = X.shape
    if W.shape[0] != m or H.shape[1] != n or W.shape[1] != H.shape[0]:
        raise ValueError(
            f"factor shapes do not match X {X.shape}: W {W.shape}, H {H.shape} "
            "(expected W m×k and H k×n, X features × samples)"
        )


def error_metrics(X: Any, W: np.ndarray, H: np.ndarray, loss: str) -> dict[str, float]:
    """The numbers recorded for every run: Frobenius relative error always, KL for KL runs.

    ``error`` is the number compared across peers: ``rel_error`` for Frobenius runs, the
    generalized KL divergence for KL runs (``kl_per_count`` = KL / ΣX is printed as well).
    """
    out = {"rel_error": relative_error(X, W, H)}
    if loss == "kl":
        kl = kl_divergence(X, W, H)
        total = float(X.sum())
        out.update(kl=kl, kl_per_count=kl / total if total else float("nan"), error=kl)
    else:
        out["error"] = out["rel_error"]
    return out


# --------------------------------------------------------------------------- records


def record(peer: str, **fields: Any) -> dict[str, Any]:
    """A peer record: ``{peer, time_s, n_iter, rel_error, error, ...}`` (missing → None)."""
    rec: dict[str, Any] = {"peer": peer, "time_s": None, "n_iter": None, "rel_error": None}
    rec.update(fields)
    return rec


def unavailable(peer: str, why: str) -> dict[str, Any]:
    """The record returned when a peer's software is missing or failed."""
    return record(peer, status="not installed" if "not installed" in why else "failed", note=why)


# --------------------------------------------------------------------------- child processes


@dataclass
class ChildResult:
    """What a measured child process gave back."""

    value: Any
    returncode: int
    wall_s: float
    peak_rss_bytes: int  # ru_maxrss of that child (from wait4), whole process
    rss_before_bytes: int | None  # the child's RSS right before the measured call
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_in_child(
    target: str,
    kwargs: dict[str, Any],
    *,
    threads: int = DEFAULT_THREADS,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    preload: Sequence[str] = (),
) -> ChildResult:
    """Run ``module:function(**kwargs)`` in a fresh Python and measure its peak RSS.

    The child is started with every thread variable set to ``threads``; its peak resident
    set size is read from ``os.wait4`` (``ru_maxrss`` of exactly that child, so earlier
    children do not pollute it). The child also reports its RSS just before calling the
    target (interpreter + imports), so the cost of the measured work can be told apart.
    """
    with tempfile.TemporaryDirectory(prefix="scalenmf-bench-child-") as tmp:
        inp, outp = Path(tmp, "in.pkl"), Path(tmp, "out.pkl")
        inp.write_bytes(pickle.dumps((target, kwargs, threads, list(preload))))
        full_env = thread_env(threads, env)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p
        )
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.common", "--child", str(inp), str(outp)],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=str(REPO_ROOT),
        )
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
        # drain stderr in a thread so a chatty child cannot block on a full pipe
        err_chunks: list[bytes] = []
        assert proc.stderr is not None
        drain = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))  # type: ignore[union-attr]
        drain.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        drain.join()
        if timer is not None:
            timer.cancel()
        stderr = b"".join(err_chunks).decode(errors="replace")
        value: Any = None
        extra: dict[str, Any] = {}
        rss_before = None
        if outp.exists():
            payload = pickle.loads(outp.read_bytes())
            value = payload.get("value")
            rss_before = payload.get("rss_before")
            extra = {k: v for k, v in payload.items() if k not in ("value", "rss_before")}
        return ChildResult(
            value=value,
            returncode=proc.returncode,
            wall_s=wall,
            peak_rss_bytes=int(usage.ru_maxrss) * 1024,  # Linux reports KiB
            rss_before_bytes=rss_before,
            stderr=stderr,
            extra=extra,
        )


def _child_main(inp: str, outp: str) -> int:
    target, kwargs, threads, preload = pickle.loads(Path(inp).read_bytes())
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    for name in preload:
        mod_name, _, attr = name.partition(":")
        mod = importlib.import_module(mod_name)
        if attr:
            getattr(mod, attr)()
    payload: dict[str, Any] = {}
    with limit_threads(threads):
        payload["rss_before"] = _proc_status_bytes("VmRSS")
        try:
            payload["value"] = func(**kwargs)
        except Exception as exc:  # reported to the parent, which decides
            payload["error"] = f"{type(exc).__name__}: {exc}"
        payload["vmhwm"] = _proc_status_bytes("VmHWM")
    Path(outp).write_bytes(pickle.dumps(payload))
    return 1 if "error" in payload else 0


# --------------------------------------------------------------------------- machine info


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "?"))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def total_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def r_versions(packages: Sequence[str] = ("RcppML", "NMF", "Matrix")) -> dict[str, str | None]:
    """Versions of R and of the given R packages (None when missing)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return {"R": None, **{p: None for p in packages}}
    code = "cat(paste0('R=', R.version$major, '.', R.version$minor), sep='\\n');" + "".join(
        f"cat(paste0('{p}=', tryCatch(as.character(packageVersion('{p}')), "
        "error=function(e) 'NA')), sep='\\n');"
        for p in packages
    )
    try:
        out = subprocess.run(
            [rscript, "--vanilla", "-e", code], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {"R": None, **{p: None for p in packages}}
    vals: dict[str, str | None] = {}
    for line in out.splitlines():
        if "=" in line:
            key, val = line.split("=", 1)
            vals[key] = None if val == "NA" else val
    return vals


def blas_info() -> list[str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [
        f"{d.get('internal_api')} {d.get('version')} ({d.get('num_threads')} threads)"
        for d in threadpool_info()
    ]


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, cores, memory, thread setting and versions of everything that is measured."""
    mem = total_memory_bytes()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(mem / 2**30, 1) if mem else None,
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for mod in ("numpy", "scipy", "sklearn", "zarr", "dask", "nimfa", "scalenmf"):
        info[mod] = _version(mod)
    info.update({f"R:{k}" if k != "R" else "R": v for k, v in r_versions().items()})
    with limit_threads(threads):
        info["blas"] = "; ".join(blas_info())
    return info


# --------------------------------------------------------------------------- tables


def fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return str(value)
        return format(float(value), spec)
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table; ``columns`` is a list of (key, header). Missing values print ``–``."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return float(num) / float(den)


def goal_met(value: float | None, goal: float | None) -> bool | None:
    """``value ≤ goal`` (None when either is unknown)."""
    if value is None or goal is None:
        return None
    return bool(value <= goal)


def machine_table(info: dict[str, Any]) -> str:
    return markdown_table(
        [{"k": k, "v": v} for k, v in info.items()], [("k", "item"), ("v", "value")]
    )


def dump_json(obj: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2], sys.argv[3]))
    print(json.dumps(machine_info(DEFAULT_THREADS), indent=2))
