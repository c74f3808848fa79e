# The compiled NNLS loops (_nnls.c); optional: the numpy code runs without them.
from typing import Any

ABI: int

def sweeps(G: Any, B: Any, X: Any, count: int, moved: Any = ..., /) -> None: ...
def bpp(G: Any, B: Any, X0: Any, X: Any, ok: Any, rounds: int, tol: float, /) -> int: ...
def kl_cd(
    W: Any,
    wsum: Any,
    data: Any,
    indices: Any,
    indptr: Any,
    H: Any,
    done: Any,
    l1: float,
    l2: float,
    sweeps: int,
    tol: float,
    /,
) -> int: ...
