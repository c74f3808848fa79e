"""The plots and the report read what ``scalenmf rank`` and ``scalenmf consensus`` really
write (not fixtures), for labelled and unlabelled samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("matplotlib")

import scalenmf
from scalenmf.cli.main import main

pytestmark = pytest.mark.timeout(240)


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("labelled", [True, False])
def test_rank_and_consensus_outputs_feed_the_plots_and_the_report(tmp_path: Path, labelled):
    rng = np.random.default_rng(3)
    W = rng.gamma(1.0, 1.0, (40, 3))
    H = rng.gamma(1.0, 2.0, (3, 90))
    X = rng.poisson(W @ H).astype(float)
    kw = {"col_labels": [f"tumour{j}" for j in range(90)]} if labelled else {}
    scalenmf.write_matrix(tmp_path / "x.zarr", X, block_cols=30, **kw)
    res = run("rank", tmp_path / "x.zarr", "--ks", "2-4", "--n-runs", 3, "-o", tmp_path / "rank")
    assert res.exit_code == 0, res.output
    res = run("consensus", tmp_path / "x.zarr", "-k", 3, "--n-runs", 5, "-o", tmp_path / "cons")
    assert res.exit_code == 0, res.output
    for kind, src in (("rank", "rank"), ("consensus", "cons"), ("coef", "cons/result.zarr")):
        out = tmp_path / f"{kind}.png"
        # the coefficient heatmap orders the samples by the consensus clusters
        extra = ("--clusters", tmp_path / "cons") if kind == "coef" else ()
        res = run("plot", tmp_path / src, "--kind", kind, "-o", out, *extra)
        assert res.exit_code == 0, (kind, res.output)
        assert out.read_bytes()[:4] == b"\x89PNG"
    report = tmp_path / "report.html"
    res = run(
        "report",
        tmp_path / "cons" / "result.zarr",
        "-o",
        report,
        "--rank",
        tmp_path / "rank",
        "--consensus",
        tmp_path / "cons",
    )
    assert res.exit_code == 0, res.output
    html = report.read_text()
    assert "Rank survey" in html and "Consensus" in html
