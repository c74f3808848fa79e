"""``scalenmf prepare INPUT -o OUT.zarr``: the steps single-cell users run before NMF.

Streams INPUT (genes × cells, or cells × genes with ``--transpose``) through the chosen
steps and writes the prepared matrix as a new store that ``scalenmf fit`` reads:

1. ``--top-genes N``: keep the N most variable genes (``--flavor seurat_v3`` on the raw
   counts, as ``sc.pp.highly_variable_genes(flavor="seurat_v3")``; ``cnmf``: cNMF's
   v-score on counts per million); the table of every gene's statistics is written
   beside OUT as ``OUT.genes.csv``;
2. ``--normalize total``: every cell scaled to the median total count (``--target-sum``),
   totals taken over all genes, as ``sc.pp.normalize_total`` before a gene selection;
3. ``--scale-features``: every kept gene divided by its standard deviation, not centred
   (``--max-value`` clips), the cNMF recipe's last step.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from scalenmf.cli._common import input_source, user_errors


@click.command(name="prepare")
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", required=True, help="The prepared store (OUT.zarr).")
@click.option(
    "--normalize",
    type=click.Choice(["none", "total"]),
    default="none",
    show_default=True,
    help="total: scale every cell to the same total count.",
)
@click.option("--target-sum", type=float, default=None, help="The total (default: median).")
@click.option("--top-genes", type=int, default=None, help="Keep the N most variable genes.")
@click.option(
    "--flavor",
    type=click.Choice(["seurat_v3", "cnmf"]),
    default="seurat_v3",
    show_default=True,
    help="How --top-genes ranks the genes.",
)
@click.option("--scale-features", is_flag=True, help="Divide every gene by its std (ddof 1).")
@click.option("--max-value", type=float, default=None, help="Clip scaled values at this.")
@click.option("--transpose", is_flag=True, help="INPUT is cells × genes (samples × features).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@user_errors
def prepare(
    input_path: str,
    output: str,
    normalize: str,
    target_sum: float | None,
    top_genes: int | None,
    flavor: str,
    scale_features: bool,
    max_value: float | None,
    transpose: bool,
    overwrite: bool,
) -> None:
    """Normalise, select genes and scale INPUT out of core; write the result as OUT.zarr."""
    from scalenmf import convert, pp
    from scalenmf.io import storage

    if not storage.exists(input_path):
        raise click.ClickException(f"input {input_path!r} does not exist")
    if storage.exists(output) and not overwrite:
        raise click.ClickException(
            f"output {output!r} already exists (use --overwrite to replace it)"
        )
    if not storage.parent_exists(output):
        raise click.ClickException(f"the directory of output {output!r} does not exist")
    if top_genes is not None and top_genes < 1:
        raise click.BadParameter(f"must be at least 1; got {top_genes}", param_hint="--top-genes")
    if max_value is not None and not scale_features:
        raise click.UsageError("--max-value clips the scaled values: it needs --scale-features")
    if normalize == "none" and top_genes is None and not scale_features:
        raise click.UsageError(
            "nothing to do: give --normalize total, --top-genes N and/or --scale-features"
        )
    base = Path(storage.local_path(output)).parent
    workdir = Path(tempfile.mkdtemp(prefix=".scalenmf-", dir=base))
    try:
        raw = input_source(input_path, transpose, workdir)
        source: Any = raw
        steps = []
        if normalize == "total":
            source = pp.normalize_total(raw, target_sum)
            steps.append("normalize total")
        table = None
        if top_genes is not None:
            ranked = raw if flavor == "seurat_v3" else pp.normalize_total(raw, 1e6)
            table = pp.highly_variable_genes(ranked, top_genes, flavor=flavor)
            source = pp.subset_genes(source, table)
            steps.append(f"top {int(table['highly_variable'].sum())} genes ({flavor})")
        if scale_features:
            source = pp.scale_features(source, max_value=max_value)
            steps.append("scale features")
        convert(source, output, overwrite=overwrite)
        if table is not None:
            table.index.name = "gene"
            table.to_csv(f"{str(output).rstrip('/')}.genes.csv")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    m, n = source.shape
    click.echo(f"{', '.join(steps)}: {m}×{n} → {output}")
