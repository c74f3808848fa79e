"""End-to-end runs of ``scalenmf rank / consensus / match / interpret`` and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main
from scalenmf.io.tables import read_csv
from scalenmf.models.survey import SUMMARY_COLUMNS
from scalenmf.signatures import cosmic_reference, simulate_catalogue
from tests.models.test_consensus import seed001_example


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def seed001_store(tmp_path_factory) -> Path:
    X, _ = seed001_example()
    path = tmp_path_factory.mktemp("seed001") / "x.zarr"
    scalenmf.write_matrix(
        path,
        X,
        row_labels=[f"Gene_{i + 1}" for i in range(300)],
        col_labels=[f"Sample_{j + 1}" for j in range(30)],
    )
    return path


def test_rank_writes_the_survey_directory(tmp_path, seed001_store):
    out = tmp_path / "rank"
    res = run(
        "rank",
        seed001_store,
        "--ks",
        "2-4",
        "--n-runs",
        4,
        "-o",
        out,
        "--solver",
        "hals",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert "suggested k = 3" in res.output
    summary = read_csv(out / "summary.csv")
    assert [int(r["k"]) for r in summary] == [2, 3, 4]
    assert set(SUMMARY_COLUMNS) <= set(summary[0])
    assert float(summary[1]["cophenetic"]) == pytest.approx(1.0)
    assert len(read_csv(out / "null_summary.csv")) == 3
    assert json.loads((out / "suggestion.json").read_text())["k"] == 3
    assert len(read_csv(out / "runs.csv")) == 12
    g = zarr.open_group(str(out / "consensus" / "k3.zarr"), mode="r")
    assert g["consensus"].shape == (30, 30)


def test_consensus_writes_the_contract(tmp_path, seed001_store):
    out = tmp_path / "cons"
    res = run("consensus", seed001_store, "-k", 3, "--n-runs", 10, "-o", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "cophenetic=1.0000" in res.output
    rows = read_csv(out / "clusters.csv")
    assert list(rows[0])[:2] == ["sample", "cluster"]
    assert [r["sample"] for r in rows] == [f"Sample_{j + 1}" for j in range(30)]
    clusters = np.array([int(r["cluster"]) for r in rows])
    truth = np.repeat(np.arange(3), 10)
    assert len(set(zip(truth.tolist(), clusters.tolist(), strict=True))) == 3
    g = zarr.open_group(str(out / "consensus.zarr"), mode="r")
    assert g["consensus"].dtype == np.float32 and g["consensus"].shape == (30, 30)
    assert g["order"].dtype == np.int64 and sorted(g["order"][:].tolist()) == list(range(30))
    assert g["linkage"].shape == (29, 4) and g["linkage"].dtype == np.float64
    assert [str(s) for s in g["samples"][:]] == [f"Sample_{j + 1}" for j in range(30)]
    attrs = dict(g.attrs)
    assert attrs["k"] == 3 and attrs["n_runs"] == 10 and attrs["subsampled"] is False
    assert attrs["n_total"] == 30 and attrs["cophenetic"] == pytest.approx(1.0)
    assert attrs["dispersion"] == pytest.approx(1.0)
    result = scalenmf.load(out / "result.zarr")
    assert result.W.shape == (300, 3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stability"] > 0.95 and summary["subsampled"] is False
    inter = tmp_path / "inter"
    res = run("interpret", out / "result.zarr", "-o", inter, "--top", 5)
    assert res.exit_code == 0, res.output
    assert len(read_csv(inter / "top_features.csv")) == 15
    assert len(read_csv(inter / "clusters.csv")) == 30


def test_consensus_says_when_it_subsamples(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.poisson(rng.gamma(1, 1, (20, 2)) @ rng.gamma(1, 3, (2, 120))).astype(float)
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "c"
    res = run(
        "consensus",
        tmp_path / "x.npy",
        "-k",
        2,
        "--n-runs",
        4,
        "--max-samples",
        50,
        "-o",
        out,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert "subsample of 50 of 120 samples" in res.output
    g = zarr.open_group(str(out / "consensus.zarr"), mode="r")
    assert g.attrs["subsampled"] is True and g["consensus"].shape == (50, 50)
    assert len(read_csv(out / "clusters.csv")) == 120


def test_match_prints_and_writes(tmp_path):
    ref = cosmic_reference()
    planted = ["SBS1", "SBS5", "SBS13"]
    cols = [int(np.flatnonzero(ref.names == s)[0]) for s in planted]
    counts, _ = simulate_catalogue(ref.matrix[:, cols], 300, seed=1, mean_burden=3000)
    store = tmp_path / "cat.zarr"
    scalenmf.write_matrix(store, sp.csc_matrix(counts), row_labels=ref.channels)
    res = run(
        "fit",
        store,
        "-k",
        3,
        "-o",
        tmp_path / "fit.zarr",
        "--loss",
        "kl",
        "--max-iter",
        500,
        "--n-runs",
        3,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    res = run("match", tmp_path / "fit.zarr")
    assert res.exit_code == 0, res.output
    rows = read_csv(tmp_path / "fit_matches.csv")
    assert list(rows[0]) == ["factor", "match", "cosine"]
    assert sorted(r["match"] for r in rows) == sorted(planted)
    assert all(r["match"] in res.output for r in rows)
    custom = tmp_path / "ref.csv"
    lines = ["Type," + ",".join(planted)] + [
        f"{c}," + ",".join(str(v) for v in ref.matrix[i, cols]) for i, c in enumerate(ref.channels)
    ]
    custom.write_text("\n".join(lines) + "\n")
    res = run("match", tmp_path / "fit.zarr", "--reference", custom, "-o", tmp_path / "m.csv")
    assert res.exit_code == 0, res.output
    assert min(float(r["cosine"]) for r in read_csv(tmp_path / "m.csv")) > 0.95


def test_fit_with_mask_nan(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.poisson(rng.gamma(1, 1, (20, 2)) @ rng.gamma(1, 3, (2, 40))).astype(float)
    X[rng.random(X.shape) < 0.1] = np.nan
    np.save(tmp_path / "x.npy", X)
    res = run("fit", tmp_path / "x.npy", "-k", 2, "-o", tmp_path / "o.zarr", "--no-progress")
    assert res.exit_code == 1 and "mask" in res.output
    res = run(
        "fit",
        tmp_path / "x.npy",
        "-k",
        2,
        "-o",
        tmp_path / "o.zarr",
        "--mask",
        "nan",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert scalenmf.load(tmp_path / "o.zarr").info["n_missing"] == int(np.isnan(X).sum())
    res = run(
        "rank",
        tmp_path / "x.npy",
        "--ks",
        "1-2",
        "--n-runs",
        2,
        "--mask",
        "nan",
        "-o",
        tmp_path / "r",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rank", "{neg}", "--ks", "2-3", "-o", "{out}"], "negative"),
        (["rank", "{nan}", "--ks", "2-3", "-o", "{out}"], "NaN"),
        (["rank", "{x}", "--ks", "2-99", "-o", "{out}"], "k must be between"),
        (["rank", "{x}", "--ks", "three", "-o", "{out}"], "ks"),
        (["rank", "{x}", "--ks", "2", "--n-runs", "0", "-o", "{out}"], "--n-runs must be ≥ 1"),
        (["rank", "{x}", "--ks", "2", "--mask", "{short}", "-o", "{out}"], "mask has shape"),
        (["rank", "{x}", "--ks", "2", "--loss", "kl", "--solver", "hals", "-o", "{out}"], "solver"),
        (["consensus", "{x}", "-k", "0", "-o", "{out}"], "k must be"),
        (["consensus", "{x}", "-k", "50", "-o", "{out}"], "k must be between"),
        (["consensus", "{empty}", "-k", "2", "-o", "{out}"], "empty"),
        (["consensus", "{x}", "-k", "2", "-o", "{exists}"], "already exists"),
        (["match", "{x}"], "not a readable Zarr store"),
        (["match", "{result}", "--reference", "{nofile}"], "no such reference"),
        (["match", "{result}", "--reference", "cosmic-v2"], "unknown reference"),
        (["interpret", "{x}", "-o", "{out}"], "not a readable Zarr store"),
    ],
)
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, args, message):
    rng = np.random.default_rng(0)
    X = rng.random((8, 12))
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "neg.npy", -X)
    Xn = X.copy()
    Xn[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", Xn)
    np.save(tmp_path / "short.npy", np.zeros((8, 3)))
    np.save(tmp_path / "empty.npy", np.zeros((8, 0)))
    (tmp_path / "exists").mkdir()
    scalenmf.nmf(X, 2, max_iter=3).save(tmp_path / "r.zarr")
    names = {
        "x": tmp_path / "x.npy",
        "neg": tmp_path / "neg.npy",
        "nan": tmp_path / "nan.npy",
        "short": tmp_path / "short.npy",
        "empty": tmp_path / "empty.npy",
        "out": tmp_path / "out",
        "exists": tmp_path / "exists",
        "result": tmp_path / "r.zarr",
        "nofile": tmp_path / "nothing.tsv",
    }
    argv = [a.format(**names) for a in args] + (
        ["--no-progress"] if args[0] in ("rank", "consensus") else []
    )
    res = run(*argv)
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("command", ["rank", "consensus", "lnmf", "inmf", "project"])
def test_every_dask_command_takes_the_launcher_options(tmp_path, command):
    """--scheduler-file / --tls-* / --connect-timeout are shared by every Dask command."""
    from scalenmf.cli.main import main as cli

    help_text = CliRunner().invoke(cli, [command, "--help"]).output
    for option in ("--scheduler-file", "--tls-ca-file", "--tls-cert", "--connect-timeout"):
        assert option in help_text, (command, option)
    X = np.random.default_rng(0).poisson(3.0, (12, 20)).astype(float)
    scalenmf.write_matrix(tmp_path / "x.zarr", X)
    args = {
        "rank": ["rank", tmp_path / "x.zarr", "--ks", "2-3"],
        "consensus": ["consensus", tmp_path / "x.zarr", "-k", 2],
        "lnmf": [
            "lnmf",
            tmp_path / "x.zarr",
            tmp_path / "x.zarr",
            "--k-shared",
            1,
            "--k-unique",
            1,
        ],
        "inmf": ["inmf", tmp_path / "x.zarr", tmp_path / "x.zarr", "-k", 2],
        "project": ["project", tmp_path / "x.zarr", tmp_path / "x.zarr"],
    }[command]
    missing = tmp_path / "nowhere" / "scheduler.json"
    res = CliRunner().invoke(
        cli, [str(a) for a in [*args, "-o", tmp_path / "out", "--scheduler-file", missing]]
    )
    assert res.exit_code == 1 and "scheduler file" in res.output, res.output
    assert not (tmp_path / "out").exists()
