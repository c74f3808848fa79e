"""Result stores of linked NMF, iNMF and projections: every factor, labels and datasets.

A linked result store is a scalenmf result store (so ``scalenmf.load`` reads its W and H)
with more arrays and a ``model`` attribute. lNMF / jNMF (``model = "lnmf"``)::

    W           (m, k_shared)        shared basis
    H           (k_shared, n)        its coefficients, all datasets side by side
    U_<d>       (m, k_unique_d)      unique basis of dataset d (0-based)
    V_<d>       (k_unique_d, n_d)    its coefficients
    col_dataset (n,)                 dataset of every column of H
    row_labels, col_labels, factor_labels

iNMF (``model = "inmf"``): W (m, k), H (k, n), V_<d> (m, k), col_dataset. A projection
(``model = "projection"``): W (m, k) the basis used, H (k, n), cosine, relative_error,
novel, basis_cosine, basis_relative_error (n,), and when asked U (m, r), V (r, n),
new_share (n,), H_lower / H_upper (k, n).

The attrs ``datasets`` list every dataset's name, its column range in H and col_dataset,
its ranks and its relative error. Arrays over samples are chunked by columns.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from scalenmf.io.errors import InputError
from scalenmf.io.results import read_result, write_result


def write_model_store(
    path: str | os.PathLike[str],
    arrays: dict[str, np.ndarray],
    *,
    sample_axis: dict[str, int],
    attrs: dict[str, Any],
    labels: dict[str, Any] | None = None,
    col_chunk: int | None = None,
    overwrite: bool = False,
) -> str:
    """Write a result store atomically; ``sample_axis[name]`` marks arrays over samples.

    The writer of plain results (``write_result``) with the chunking said by
    ``sample_axis``, so these stores carry the same digests and are checked the same way.

    Parameters
    ----------
    arrays : dict of str to ndarray
    sample_axis : dict of str to int
        For arrays whose axis ``i`` runs over samples: that axis is chunked by
        ``col_chunk``; every other array is one chunk per 65,536 rows.
    attrs : dict
        JSON-able; must hold ``model``.
    labels : dict of str to sequence, optional
    """
    if "model" not in attrs:
        raise ValueError("the attrs of a linked / iNMF / projection store must name its model")
    return write_result(
        path,
        arrays,
        attrs=attrs,
        labels=labels,
        col_chunk=col_chunk,
        overwrite=overwrite,
        sample_axis=sample_axis,
    )


def read_model_store(
    path: str | os.PathLike[str], model: str | tuple[str, ...]
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
    """Read a store written by ``write_model_store``, checking its ``model``."""
    arrays, attrs, labels = read_result(path)
    wanted = (model,) if isinstance(model, str) else model
    found = attrs.get("model")
    if found not in wanted:
        what = found if found is not None else "a plain NMF result"
        raise InputError(
            f"{str(path)!r} holds {what}, not {' or '.join(wanted)} (use the matching loader)"
        )
    return arrays, attrs, labels
