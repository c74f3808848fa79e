"""``scalenmf fit ... --anndata-out OUT.h5ad|OUT.zarr``: the result as an AnnData file.

The file holds what ``scalenmf.tl.nmf`` writes into an AnnData (cells × genes): H as
``obsm["X_nmf"]``, W as ``varm["nmf_W"]``, the parameters and loss history as
``uns["nmf"]``, labelled with the input's sample (obs) and feature (var) names; no X.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

#: The AnnData formats, by file suffix.
ANNDATA_SUFFIXES = (".h5ad", ".zarr")


def check_anndata_out(path: str, overwrite: bool, result_path: str) -> None:
    """Refuse, before any work, an output that cannot be written."""
    target = Path(path)
    if target.resolve() == Path(result_path).resolve():
        raise click.BadParameter(
            f"{path!r} is also the result store (-o); give the AnnData file its own name",
            param_hint="--anndata-out",
        )
    if target.suffix.lower() not in ANNDATA_SUFFIXES:
        raise click.BadParameter(f"{path!r} is neither .h5ad nor .zarr", param_hint="--anndata-out")
    if target.exists() and not overwrite:
        raise click.ClickException(
            f"output {path!r} already exists (use --overwrite to replace it)"
        )
    if not target.parent.exists():
        raise click.ClickException(f"the directory of output {path!r} does not exist")
    try:
        import anndata  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            "--anndata-out needs anndata (pip install 'scalenmf[h5ad]')"
        ) from exc


def write_anndata_out(result: Any, path: str) -> None:
    """Write ``result.to_anndata()`` to ``path`` atomically (a temporary name, then a rename)."""
    target = Path(path)
    adata = result.to_anndata()
    tmpdir = Path(tempfile.mkdtemp(prefix=".scalenmf-", dir=target.parent))
    try:
        tmp = tmpdir / target.name
        if target.suffix.lower() == ".h5ad":
            adata.write_h5ad(tmp)
        else:
            adata.write_zarr(tmp)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        tmp.rename(target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
