"""Pure block math on in-memory numpy / scipy.sparse blocks.

Nothing here imports dask or torch, does I/O or logs: each function takes arrays and
returns arrays, so the same kernels serve every executor.
"""

from scalenmf.kernels.gram import gram, rhs, sq_norm, x_ht
from scalenmf.kernels.mu import kl_block, kl_divergence, mu_frobenius, mu_kl_h
from scalenmf.kernels.nnls import bpp_nnls, cd_nnls, hals_sweep

__all__ = [
    "bpp_nnls",
    "cd_nnls",
    "gram",
    "hals_sweep",
    "kl_block",
    "kl_divergence",
    "mu_frobenius",
    "mu_kl_h",
    "rhs",
    "sq_norm",
    "x_ht",
]
