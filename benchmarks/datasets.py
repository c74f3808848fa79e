"""Seeded benchmark data: gamma–Poisson count matrices, a COSMIC catalogue, a large Zarr store.

All matrices are features × samples (m×n), the project's orientation. Every generator takes
a ``seed`` and returns the same data for the same arguments.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The COSMIC v3.4 SBS reference shipped inside the package (scalenmf/data/README.md).
COSMIC_TSV = REPO_ROOT / "scalenmf" / "data" / "COSMIC_v3.4_SBS_GRCh37.tsv"


def _gamma_factors(
    rng: np.random.Generator, m: int, n: int, rank: int, shape: float
) -> tuple[np.ndarray, np.ndarray]:
    """W (m×rank) and H (rank×n) with i.i.d. Gamma(shape, 1/shape) entries (mean 1)."""
    W = rng.gamma(shape, 1.0 / shape, size=(m, rank))
    H = rng.gamma(shape, 1.0 / shape, size=(rank, n))
    return W, H


def dense_poisson(
    m: int = 2000,
    n: int = 5000,
    rank: int = 10,
    *,
    mean_count: float = 5.0,
    shape: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Benchmark 1: dense Poisson counts of a rank-``rank`` gamma model, float64.

    W, H ~ Gamma(shape, 1/shape) (mean 1), rates Λ = c·WH scaled so the mean rate is
    ``mean_count``, X ~ Poisson(Λ). Returned C-contiguous float64 (m×n).
    """
    rng = np.random.default_rng(seed)
    W, H = _gamma_factors(rng, m, n, rank, shape)
    lam = W @ H
    lam *= mean_count / lam.mean()
    return rng.poisson(lam).astype(np.float64)


def sparse_poisson(
    m: int = 5000,
    n: int = 10000,
    rank: int = 20,
    *,
    density: float = 0.15,
    shape: float = 0.3,
    seed: int = 1,
    block: int = 1000,
) -> sp.csc_matrix:
    """Benchmark 2: sparse Poisson counts of a rank-``rank`` gamma model, scipy CSC float64.

    Sparse gamma factors (small ``shape`` ⇒ many near-zero loadings) give rates Λ = c·WH;
    c is solved (bisection on a column sample) so that the expected fraction of non-zeros,
    mean(1 − exp(−Λ)), equals ``density``. X ~ Poisson(Λ) is drawn block by block, so the
    dense rate matrix never exists in full.
    """
    rng = np.random.default_rng(seed)
    W, H = _gamma_factors(rng, m, n, rank, shape)
    sample = W @ H[:, rng.choice(n, size=min(n, 500), replace=False)]
    lo, hi = 0.0, 1.0
    while np.mean(1.0 - np.exp(-hi * sample)) < density:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 - np.exp(-mid * sample)) < density:
            lo = mid
        else:
            hi = mid
    scale = 0.5 * (lo + hi)
    blocks = []
    for start in range(0, n, block):
        lam = scale * (W @ H[:, start : start + block])
        blocks.append(sp.csc_matrix(rng.poisson(lam).astype(np.float64)))
    X = sp.hstack(blocks, format="csc")
    X.sort_indices()
    return X


@dataclass
class Catalogue:
    """A simulated mutation catalogue and its ground truth."""

    X: np.ndarray  # 96 × n counts (float64)
    W: np.ndarray  # 96 × k true signatures (columns sum to 1)
    H: np.ndarray  # k × n true exposures (mutations per signature per sample)
    signatures: list[str]
    channels: list[str]


def read_cosmic(path: str | Path = COSMIC_TSV) -> tuple[np.ndarray, list[str], list[str]]:
    """COSMIC SBS reference: (96 × S matrix, channel labels, signature names)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    names = rows[0][1:]
    channels = [r[0] for r in rows[1:]]
    S = np.array([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float64)
    return S, channels, names


# Signatures common in pan-cancer catalogues; SBS1 and SBS5 (clock-like) are in most samples.
DEFAULT_SIGNATURES = (
    "SBS1",
    "SBS5",
    "SBS2",
    "SBS13",
    "SBS3",
    "SBS4",
    "SBS7a",
    "SBS17b",
    "SBS18",
    "SBS40a",
)


def cosmic_catalogue(
    n: int = 100_000,
    *,
    signatures: tuple[str, ...] = DEFAULT_SIGNATURES,
    mean_burden: float = 1500.0,
    burden_dispersion: float = 2.0,
    seed: int = 2,
    path: str | Path = COSMIC_TSV,
) -> Catalogue:
    """Benchmark 4: a 96 × n catalogue simulated from COSMIC v3.4 SBS signatures.

    Per sample: a total burden T ~ NegBin(mean ``mean_burden``, shape ``burden_dispersion``)
    (so hundreds to thousands of mutations, heavy-tailed); SBS1 and SBS5 always active, each
    other signature active with probability 0.3; activities ~ Gamma(0.7) on the active set,
    normalized and scaled by T; counts X ~ Poisson(W·H).
    """
    S, channels, names = read_cosmic(path)
    idx = [names.index(s) for s in signatures]
    W = S[:, idx] / S[:, idx].sum(axis=0, keepdims=True)
    rng = np.random.default_rng(seed)
    k = len(idx)
    p = burden_dispersion / (burden_dispersion + mean_burden)
    burden = np.maximum(rng.negative_binomial(burden_dispersion, p, size=n), 50).astype(float)
    always = np.array([s in ("SBS1", "SBS5") for s in signatures])
    active = always[:, None] | (rng.random((k, n)) < 0.3)
    act = rng.gamma(0.7, 1.0, size=(k, n)) * active
    act /= act.sum(axis=0, keepdims=True)
    H = act * burden
    X = rng.poisson(W @ H).astype(np.float64)
    return Catalogue(X=X, W=W, H=H, signatures=list(signatures), channels=channels)


# --------------------------------------------------------------------------- out of core


def write_zarr_store(
    path: str | Path,
    *,
    nbytes: int | None = None,
    memory_budget: int | None = None,
    factor: float = 3.0,
    m: int = 2000,
    rank: int = 10,
    block: int | None = None,
    chunk_bytes: int = 32 * 2**20,
    mean_count: float = 5.0,
    compress: bool = True,
    seed: int = 3,
    overwrite: bool = False,
    array_path: str | None = None,
) -> dict[str, Any]:
    """Benchmark 3: write a dense float32 Zarr v3 array (m, n) chunked by column blocks (m, B).

    The uncompressed size is ``nbytes`` or, if omitted, ``factor × memory_budget`` (default
    3×). n = nbytes / (4·m), rounded up to whole blocks; B is chosen so a chunk holds about
    ``chunk_bytes`` (32 MiB). Values are Poisson counts of a rank-``rank`` gamma model,
    generated block by block (memory ~ one block). The array is the store's root array;
    ``compress=False`` writes raw chunks (no codec cost on read). Returns a description.
    An existing store with the same shape and chunks is reused unless ``overwrite``.
    With ``array_path`` (e.g. ``"X"``) the array is written at that path inside a group
    instead of at the root; ``info["array"]`` is then the array's own path.
    """
    import zarr

    if nbytes is None:
        if memory_budget is None:
            raise ValueError("give nbytes or memory_budget")
        nbytes = int(factor * memory_budget)
    if block is None:
        block = max(1, chunk_bytes // (4 * m))
    n_blocks = max(1, -(-nbytes // (4 * m * block)))
    n = n_blocks * block
    path = Path(path)
    arr_loc = path / array_path if array_path else path
    if path.exists() and not overwrite:
        try:
            arr = zarr.open_array(str(arr_loc), mode="r")
            if arr.shape == (m, n) and arr.chunks == (m, block) and arr.dtype == np.float32:
                return _store_info(path, arr_loc, arr, reused=True, write_s=0.0)
        except Exception:
            pass
    kwargs: dict[str, Any] = {}
    if not compress:
        kwargs["compressors"] = None
    if array_path:
        group = zarr.open_group(str(path), mode="w")
        arr = group.create_array(
            array_path, shape=(m, n), chunks=(m, block), dtype="float32", overwrite=True, **kwargs
        )
    else:
        arr = zarr.create_array(
            store=str(path),
            shape=(m, n),
            chunks=(m, block),
            dtype="float32",
            overwrite=True,
            **kwargs,
        )
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, size=(m, rank))
    scale = mean_count / (rank * 1.0)  # E[(WH)_ij] = rank for unit-mean gamma factors
    t0 = time.perf_counter()
    for j in range(n_blocks):
        H = rng.gamma(1.0, 1.0, size=(rank, block))
        arr[:, j * block : (j + 1) * block] = rng.poisson(scale * (W @ H)).astype(np.float32)
    return _store_info(path, arr_loc, arr, reused=False, write_s=time.perf_counter() - t0)


def _store_info(
    path: Path, arr_loc: Path, arr: Any, *, reused: bool, write_s: float
) -> dict[str, Any]:
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    m, n = arr.shape
    return {
        "path": str(path),
        "array": str(arr_loc),
        "shape": (m, n),
        "chunks": tuple(arr.chunks),
        "dtype": str(arr.dtype),
        "nbytes": int(m) * int(n) * 4,
        "disk_bytes": disk,
        "reused": reused,
        "write_s": write_s,
    }


def sequential_read_seconds(path: str | Path, *, repeat: int = 1) -> dict[str, Any]:
    """Time one plain sequential read of a dense Zarr store: each chunk once, summed.

    Chunks are read in column order with plain ``zarr`` indexing (decompression included,
    one thread of Python driving it, zarr's own codec pipeline as configured), and each
    block is reduced with ``.sum()`` so the data are really touched. The best of ``repeat``
    passes is returned along with every pass. The OS page cache is not dropped: after the
    store was written it is usually warm, as it is for the engine's later iterations.
    """
    import zarr

    arr = zarr.open_array(str(path), mode="r")
    m, n = arr.shape
    B = arr.chunks[1]
    passes = []
    total = 0.0
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        total = 0.0
        for start in range(0, n, B):
            total += float(np.asarray(arr[:, start : start + B]).sum(dtype=np.float64))
        passes.append(time.perf_counter() - t0)
    return {"seconds": min(passes), "passes": passes, "checksum": total, "shape": (m, n)}
