"""Type aliases shared across layers."""

from __future__ import annotations

from typing import Union

import numpy as np
import scipy.sparse as sp

#: A column block of X: dense (m, n_j) or sparse CSC (m, n_j).
Block = Union[np.ndarray, sp.csc_matrix, sp.spmatrix, sp.sparray]  # noqa: UP007 - runtime alias
