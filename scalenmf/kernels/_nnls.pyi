# The compiled NNLS loops (_nnls.c); optional: the numpy code runs without them.
from typing import Any

ABI: int

def sweeps(G: Any, B: Any, X: Any, count: int, moved: Any = ..., /) -> None: ...
def bpp(G: Any, B: Any, X0: Any, X: Any, ok: Any, rounds: int, tol: float, /) -> int: ...
