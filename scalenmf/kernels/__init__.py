"""Pure block math on in-memory numpy / scipy.sparse blocks.

Nothing here imports dask or torch, does I/O or logs: each function takes arrays and
returns arrays, so the same kernels serve every executor.
"""

from scalenmf.kernels.gram import gram, rhs, x_ht, sq_norm
from scalenmf.kernels.nnls import cd_nnls, bpp_nnls, hals_sweep
from scalenmf.kernels.mu import mu_frobenius, mu_kl_h, kl_block, kl_divergence

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
