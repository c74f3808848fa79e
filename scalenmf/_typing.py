"""Type aliases shared across layers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

#: A column block of X: dense (m, n_j) or sparse CSC (m, n_j). The sparse types are named
#: as strings so that importing this alias does not import scipy.sparse.
Block = Union[np.ndarray, "sp.csc_matrix", "sp.spmatrix", "sp.sparray"]
