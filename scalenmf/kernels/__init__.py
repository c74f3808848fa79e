"""Pure block math on in-memory numpy / scipy.sparse blocks.

Nothing here imports dask or torch, does I/O or logs: each function takes arrays and
returns arrays, so the same kernels serve every executor. One implementation of each:

- :mod:`.penalty` — penalty folding and the batch shapes;
- :mod:`.nnls` — coordinate descent / HALS (:func:`nnls_cd`) and block principal pivoting
  (:func:`nnls_bpp`), batched, with shared or per-column Grams;
- :mod:`.mu` — multiplicative updates (Frobenius, KL) and the KL block statistics;
- :mod:`.fixed` — the exact fixed-basis solve of a whole block;
- :mod:`.gram` — the Gram statistics; :mod:`.hashing` — counter-based randomness.

:mod:`.batched` holds the Gram statistics of masked fits.
"""

from scalenmf.kernels.fixed import solve_fixed_basis, solve_fixed_basis_kl
from scalenmf.kernels.gram import gram, rhs, sq_norm, x_ht
from scalenmf.kernels.mu import EPS, kl_block, kl_divergence, mu_frobenius, mu_kl_h, wh_at
from scalenmf.kernels.nnls import NNLSInfo, nnls_bpp, nnls_cd, unconstrained_start
from scalenmf.kernels.penalty import fold_penalties

__all__ = [
    "EPS",
    "NNLSInfo",
    "fold_penalties",
    "gram",
    "kl_block",
    "kl_divergence",
    "mu_frobenius",
    "mu_kl_h",
    "nnls_bpp",
    "nnls_cd",
    "rhs",
    "solve_fixed_basis",
    "solve_fixed_basis_kl",
    "sq_norm",
    "unconstrained_start",
    "wh_at",
    "x_ht",
]
