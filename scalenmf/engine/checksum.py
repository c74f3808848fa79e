"""A checksum of X computed where the blocks live, in one pass on any executor.

Each block hashes its decoded values (BLAKE2b); the hex digests are "summed" by string
concatenation, which the deterministic tree reduction keeps in block order; the final
checksum hashes that sequence. So it names the data *and* its blocking, which is what a
resumed fit must match; the manifest records the blocking beside it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalenmf.engine.executor import Executor

DIGEST_BYTES = 16


def _update(h: Any, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))  # type: ignore[arg-type]


def block_digest(X: Any) -> str:
    """Hex BLAKE2b of one block's shape, dtype and values (CSC arrays for sparse)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    if sp.issparse(X):
        csc = sp.csc_matrix(X)
        h.update(b"csc")
        for part in (csc.data, csc.indices, csc.indptr):
            _update(h, np.asarray(part))
        h.update(str(csc.shape).encode())
    else:
        _update(h, np.asarray(X))
    return h.hexdigest()


def checksum_step(X: Any, state: Any, bc: Any) -> tuple[Any, dict[str, str]]:
    """Block function: the block's digest (state untouched)."""
    return state, {"digests": block_digest(X)}


def input_checksum(executor: Executor) -> str:
    """``blake2b:<hex>`` of every block of the executor's source, in block order."""
    parts = executor.map_reduce(checksum_step, None)
    h = hashlib.blake2b(parts["digests"].encode(), digest_size=DIGEST_BYTES)
    return f"blake2b:{h.hexdigest()}"
