"""File formats beyond the Zarr store and .npy: CSV/TSV, Matrix Market, .h5ad.

Each format module here provides:

- a ``Reader`` (registered by ``scalenmf.io.readers``, which imports the format modules
  here): what ``open_matrix(path)`` uses. Text formats are read into memory (fine for
  catalogues and modest matrices); .h5ad is read lazily.
- a ``Stager``: what ``convert`` uses to bring a file of any size into column-block order
  in bounded memory before the Zarr writer streams it (see ``_stage``).

Formats are picked by name from these registries, never by an if-ladder in the callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scalenmf.io.formats import delimited, h5ad, mtx
from scalenmf.io.formats._stage import StageContext
from scalenmf.io.source import MatrixSource


@dataclass(frozen=True)
class Stager:
    """A way to prepare one file format for streaming conversion.

    ``stage(path, ctx)`` returns a source in X's orientation (features × samples; it
    applies ``ctx.transpose`` itself) whose blocks can be read in any order.
    """

    name: str
    can_stage: Callable[[Path], bool]
    stage: Callable[[Path, StageContext], MatrixSource]


_STAGERS: list[Stager] = []


def register_stager(stager: Stager) -> None:
    """Add a stager (a later one with the same name replaces the earlier)."""
    for i, existing in enumerate(_STAGERS):
        if existing.name == stager.name:
            _STAGERS[i] = stager
            return
    _STAGERS.append(stager)


def stager_for(path: Path) -> Stager | None:
    """The first registered stager that accepts ``path``, if any."""
    for stager in _STAGERS:
        if stager.can_stage(path):
            return stager
    return None


def _anndata_zarr_csc(path: Path) -> bool:
    from scalenmf.io.zarr_store import anndata_csc_group

    return anndata_csc_group(path)


def _stage_anndata_zarr_csc(path: Path, ctx: StageContext) -> MatrixSource:
    from scalenmf.io.formats._stage import transpose_sparse
    from scalenmf.io.zarr_store import open_anndata_csc_stored

    stored = open_anndata_csc_stored(path)
    return stored if ctx.transpose else transpose_sparse(stored, ctx)


register_stager(Stager("csv", delimited.can_open, delimited.stage))
register_stager(Stager("mtx", mtx.can_open, mtx.stage))
register_stager(Stager("h5ad-csc", h5ad.can_stage, h5ad.stage))
register_stager(Stager("anndata-zarr-csc", _anndata_zarr_csc, _stage_anndata_zarr_csc))

__all__ = ["StageContext", "Stager", "register_stager", "stager_for"]
