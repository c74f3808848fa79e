"""``scalenmf plot`` / ``scalenmf report`` / ``scalenmf demo`` end to end, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

pytest.importorskip("matplotlib")

import scalenmf
from scalenmf.cli.main import main
from scalenmf.cli.plot import PLOT_KINDS
from scalenmf.plot import KINDS
from tests.plot_fixtures import catalogue, consensus_dir, rank_dir

#: The module's result is fitted on a local Dask cluster (worker processes start).
pytestmark = pytest.mark.timeout(180)

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def fitted_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``scalenmf fit`` of a sparse Zarr catalogue on a local Dask cluster (2 worker
    processes), plus model-selection directories for it."""
    root = tmp_path_factory.mktemp("cli")
    counts, channels, samples = catalogue(50)
    X = root / "counts.zarr"
    scalenmf.write_matrix(
        X, sp.csc_matrix(counts), row_labels=channels, col_labels=samples, block_cols=16
    )
    store = root / "result.zarr"
    res = run(
        "fit",
        X,
        "-k",
        3,
        "--loss",
        "kl",
        "--n-runs",
        2,
        "--max-iter",
        60,
        "--tol",
        0,
        "-o",
        store,
        "--workers",
        2,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    return {
        "root": root,
        "store": store,
        "rank": rank_dir(root / "survey"),
        "consensus": consensus_dir(root / "consensus", scalenmf.load(store)),
    }


def test_cli_kinds_are_the_api_kinds() -> None:
    assert PLOT_KINDS == tuple(KINDS)


@pytest.mark.parametrize("kind", PLOT_KINDS)
def test_plot_every_kind(kind: str, fitted_dirs: dict[str, Path], tmp_path: Path) -> None:
    source = {"rank": fitted_dirs["rank"], "consensus": fitted_dirs["consensus"]}.get(
        kind, fitted_dirs["store"]
    )
    ext = ("png", "pdf", "svg")[PLOT_KINDS.index(kind) % 3]
    out = tmp_path / f"{kind}.{ext}"
    res = run("plot", source, "--kind", kind, "-o", out, "--dpi", 60)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    assert out.read_bytes().startswith(MAGIC[ext]) and out.stat().st_size > 3000
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_plot_options_reach_the_plot(fitted_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "coef.png"
    res = run(
        "plot",
        fitted_dirs["store"],
        "--kind",
        "coef",
        "--clusters",
        fitted_dirs["consensus"] / "clusters.csv",
        "--max-samples",
        20,
        "-o",
        out,
    )
    assert res.exit_code == 0, res.output
    res = run(
        "plot", fitted_dirs["consensus"], "--kind", "basis", "--top", 3, "-o", out, "--overwrite"
    )
    assert res.exit_code == 0, res.output


def test_report_end_to_end(fitted_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    res = run(
        "report",
        fitted_dirs["store"],
        "-o",
        out,
        "--rank",
        fitted_dirs["rank"],
        "--consensus",
        fitted_dirs["consensus"],
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    text = out.read_text()
    for section in (
        "parameters",
        "convergence",
        "factors",
        "top-features",
        "matches",
        "clusters",
        "consensus",
        "rank-survey",
    ):
        assert f'<section id="{section}">' in text
    params = text.split('<section id="parameters">')[1].split("</section>")[0]
    assert "sparse float64" in params, "the input kind is reported"
    assert "<td>a Dask cluster of 2 workers</td>" in params, "the executor is reported"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("plot", "{root}/missing.zarr", "--kind", "basis", "-o", "{out}.png"),
            "no such result store",
        ),
        (
            ("plot", "{store}", "--kind", "heatmap", "-o", "{out}.png"),
            "unknown plot kind 'heatmap'",
        ),
        (("plot", "{store}", "--kind", "basis", "-o", "{out}.jpg"), "cannot tell the image format"),
        (("plot", "{root}", "--kind", "rank", "-o", "{out}.png"), "has no summary.csv"),
        (
            ("plot", "{store}", "--kind", "consensus", "-o", "{out}.png"),
            "not a consensus directory",
        ),
        (("plot", "{rank}", "--kind", "coef", "-o", "{out}.png"), "rank survey directory"),
        (
            (
                "plot",
                "{store}",
                "--kind",
                "coef",
                "--clusters",
                "{root}/nope.csv",
                "-o",
                "{out}.png",
            ),
            "no such clusters.csv or consensus directory",
        ),
        (("plot", "{store}", "--kind", "basis", "-o", "{root}/no/dir/x.png"), "does not exist"),
        (("report", "{root}/missing.zarr", "-o", "{out}.html"), "no such result store"),
        (("report", "{store}", "-o", "{out}.pdf"), "ending in .html"),
        (("report", "{store}", "--rank", "{root}", "-o", "{out}.html"), "has no summary.csv"),
        (
            ("report", "{store}", "--reference", "{root}/none.tsv", "-o", "{out}.html"),
            "no such reference file",
        ),
    ],
)
def test_bad_input_exits_1_and_writes_nothing(
    args: tuple[str, ...], message: str, fitted_dirs: dict[str, Path], tmp_path: Path
) -> None:
    names = {
        "root": fitted_dirs["root"],
        "store": fitted_dirs["store"],
        "rank": fitted_dirs["rank"],
        "out": tmp_path / "out",
    }
    before = sorted(p.name for p in fitted_dirs["root"].iterdir())
    res = run(*(a.format(**names) for a in args))
    assert res.exit_code == 1, res.output
    assert message in res.output
    assert res.output.count("\n") == 1, "one line"
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in fitted_dirs["root"].iterdir()) == before


def test_plot_replaces_an_existing_image_atomically(
    fitted_dirs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "c.png"
    out.write_bytes(b"old")
    # Without --overwrite an existing file is refused (the rule of every command).
    assert run("plot", fitted_dirs["store"], "--kind", "convergence", "-o", out).exit_code == 1
    assert out.read_bytes() == b"old"
    res = run("plot", fitted_dirs["store"], "--kind", "convergence", "-o", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(MAGIC["png"])
    res = run("plot", fitted_dirs["rank"], "--kind", "consensus", "-o", out, "--overwrite")
    assert res.exit_code == 1
    assert out.read_bytes().startswith(MAGIC["png"]), "a failed plot keeps the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


@pytest.mark.timeout(120)
def test_demo_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo.zarr"
    res = run("demo", "-o", out, "-k", 3, "--samples", 40)
    assert res.exit_code == 0, res.output
    report = tmp_path / "demo.html"
    assert f"Report written to {report}" in res.output
    text = report.read_text()
    assert '<section id="matches">' in text and "SBS1" in text
    res = run("demo", "-o", tmp_path / "d2.zarr", "-k", 2, "--samples", 30, "--report", "none")
    assert res.exit_code == 0 and not (tmp_path / "d2.html").exists()
    np.testing.assert_equal(scalenmf.load(out).k, 3)
