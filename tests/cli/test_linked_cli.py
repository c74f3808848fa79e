"""End-to-end runs of ``scalenmf lnmf``, ``inmf``, ``lnmf-ranks`` and ``project``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main
from tests.models.test_linked import M, make_linked


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two datasets: A dense, B sparse with its genes in another order."""
    tmp = tmp_path_factory.mktemp("linked")
    (A, B), _, _ = make_linked(seed=3)
    rows = np.array([f"g{i}" for i in range(M)])
    perm = np.random.default_rng(0).permutation(M)
    a = scalenmf.write_matrix(tmp / "A.zarr", A, row_labels=rows, block_cols=50)
    b = scalenmf.write_matrix(
        tmp / "B.zarr", sp.csc_matrix(B[perm]), row_labels=rows[perm], block_cols=64
    )
    return {"A": Path(a), "B": Path(b), "dir": tmp, "A_data": A, "B_data": B}  # type: ignore[dict-item]


def test_lnmf_command_writes_the_store_the_api_gives(tmp_path: Path, stores) -> None:
    out = tmp_path / "l.zarr"
    res = run(
        "lnmf", stores["A"], stores["B"], "--k-shared", 3, "--k-unique", "2,2", "-o", out,
        "--max-iter", 30, "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "k_shared=3 k_unique=2,2" in res.output and "A: 150 samples" in res.output
    saved = scalenmf.load_linked(out)
    direct = scalenmf.lnmf([stores["A"], stores["B"]], 3, [2, 2], max_iter=30)
    for x, y in zip(saved.H + saved.U + saved.V, direct.H + direct.U + direct.V, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    assert saved.names == ["A", "B"]
    info = run("info", out)
    assert info.exit_code == 0 and "model" in info.output and "dataset B" in info.output


def test_jnmf_kl_and_inmf_commands(tmp_path: Path, stores) -> None:
    out = tmp_path / "j.zarr"
    res = run(
        "lnmf", stores["A"], stores["B"], "--k-shared", 4, "--k-unique", 0, "-o", out,
        "--loss", "kl", "--max-iter", 10, "--names", "tumour,normal", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert scalenmf.load_linked(out).k_unique == [0, 0]
    out = tmp_path / "i.zarr"
    res = run(
        "inmf", stores["A"], stores["B"], "-k", 4, "--lam", 2, "-o", out, "--max-iter", 10,
        "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    back = scalenmf.load_linked(out)
    assert isinstance(back, scalenmf.INMFResult) and back.lam == 2.0


def test_lnmf_ranks_command(tmp_path: Path, stores) -> None:
    evidence = tmp_path / "ranks.json"
    res = run(
        "lnmf-ranks", stores["A"], stores["B"], "--ks", 5, "--max-iter", 300, "--tol", 1e-7,
        "--json", evidence,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "proposal: k_shared=3  k_unique=2,2" in res.output
    assert "--k-shared 3 --k-unique 2,2" in res.output and "cos 0.9" in res.output
    saved = json.loads(evidence.read_text())
    assert saved["k_shared"] == 3 and len(saved["matches"]) == 5


def test_project_command_with_qc_table_and_transfer(tmp_path: Path, stores) -> None:
    fit = tmp_path / "l.zarr"
    assert run(
        "lnmf", stores["A"], stores["B"], "--k-shared", 3, "--k-unique", "2,2", "-o", fit,
        "--max-iter", 30, "--no-progress",
    ).exit_code == 0  # fmt: skip
    out, qc = tmp_path / "p.zarr", tmp_path / "qc.tsv"
    res = run("project", fit, stores["B"], "-o", out, "--qc", qc, "--k-new", 2, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "projected 200 samples on k=3" in res.output and "k_new=2" in res.output
    back = scalenmf.load_projection(out)
    assert back.U.shape == (M, 2)
    lines = qc.read_text().splitlines()
    assert lines[0].split("\t")[:4] == ["sample", "cosine", "relative_error", "novel"]
    assert len(lines) == 201
    # The same from the API (B's rows are aligned to W's labels in both).
    direct = scalenmf.project(scalenmf.load(fit), stores["B"], k_new=2)
    np.testing.assert_allclose(back.H, direct.H, rtol=1e-8, atol=1e-10)


def test_project_onto_a_signature_table(tmp_path: Path) -> None:
    from scalenmf.signatures import cosmic_reference

    ref = cosmic_reference()
    W = ref.matrix[:, :3]
    table = tmp_path / "sigs.tsv"
    with open(table, "w") as fh:
        fh.write("Type\t" + "\t".join(ref.names[:3]) + "\n")
        for ch, row in zip(ref.channels, W, strict=True):
            fh.write(ch + "\t" + "\t".join(f"{v:.8g}" for v in row) + "\n")
    rng = np.random.default_rng(1)
    X = rng.poisson(W @ rng.gamma(1.0, 200.0, (3, 20))).astype(float)
    perm = rng.permutation(96)
    new = scalenmf.write_matrix(tmp_path / "x.zarr", X[perm], row_labels=ref.channels[perm])
    out = tmp_path / "p.zarr"
    res = run("project", table, new, "-o", out, "--bootstrap", 10, "--no-progress")
    assert res.exit_code == 0, res.output
    back = scalenmf.load_projection(out)
    assert list(back.factor_labels) == list(ref.names[:3])
    direct = scalenmf.project(W, X)
    np.testing.assert_allclose(back.H, direct.H, rtol=1e-6, atol=1e-6)
    assert back.H_lower is not None and np.nanmedian(back.cosine) > 0.95


@pytest.mark.parametrize(
    "args,message",
    [
        (["lnmf", "{A}", "{B}", "--k-shared", 2, "--k-unique", "1,1,1"], "3 entries for 2"),
        (["lnmf", "{A}", "{B}", "--k-shared", 2, "--k-unique", "x"], "integers separated"),
        (["lnmf", "{A}", "--k-shared", 2, "--k-unique", 1], "at least 2 datasets"),
        (["lnmf", "{A}", "{B}", "--k-shared", 99, "--k-unique", 1], "k must be between"),
        (["lnmf", "{A}", "{bad}", "--k-shared", 2, "--k-unique", 1], "negative"),
        (["lnmf", "{A}", "{other}", "--k-shared", 2, "--k-unique", 1], "features are missing"),
        (["lnmf", "{A}", "{corrupt}", "--k-shared", 2, "--k-unique", 1], "not a readable Zarr"),
        (["inmf", "{A}", "{B}", "-k", 2, "--solver", "mu"], "'als' or 'hals'"),
        (["lnmf-ranks", "{A}", "{B}", "--ks", "0"], "at least 1"),
        (["project", "{A}", "{B}"], "more factors"),
        (["project", "{fit}", "{other}"], "features are missing"),
        (["project", "{fit}", "{bad}"], "negative"),
        (["project", "{fit}", "{A}", "--k-new", 500], "k must be between"),
        (["project", "{fit}", "{A}", "--novelty-cosine", "high"], "number or 'none'"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_nothing_written(
    tmp_path: Path, stores, args, message
) -> None:
    import re

    d = stores["dir"]
    bad = d / "bad.zarr"
    if not bad.exists():
        X = np.ones((M, 10))
        X[0, 0] = -1
        scalenmf.write_matrix(bad, X, row_labels=[f"g{i}" for i in range(M)])
        scalenmf.write_matrix(
            d / "other.zarr", np.ones((M, 10)), row_labels=[f"x{i}" for i in range(M)]
        )
        (d / "corrupt.zarr").mkdir()
        (d / "corrupt.zarr" / "zarr.json").write_text("{not json")
        scalenmf.lnmf([stores["A"], stores["B"]], 2, 1, max_iter=5, tol=0).save(d / "fit.zarr")
    paths = {
        "A": stores["A"], "B": stores["B"], "bad": bad, "other": d / "other.zarr",
        "corrupt": d / "corrupt.zarr", "fit": d / "fit.zarr",
    }  # fmt: skip
    out = tmp_path / "out.zarr"
    argv = [str(a).format(**paths) for a in args] + ["-o", str(out)]
    if args[0] == "lnmf-ranks":
        argv = argv[:-2]
    res = run(*argv)
    assert res.exit_code == 1 or (res.exit_code == 2 and "Invalid value" in res.output), res.output
    assert re.search(message, res.output), res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.zarr")]


def test_existing_output_is_refused(tmp_path: Path, stores) -> None:
    out = tmp_path / "l.zarr"
    out.mkdir()
    res = run("lnmf", stores["A"], stores["B"], "--k-shared", 2, "--k-unique", 1, "-o", out)
    assert res.exit_code == 1 and "already exists" in res.output
    res = run("lnmf", stores["A"], stores["B"], "--k-shared", 2, "--k-unique", 1, "-o", out,
              "--workers", 2, "--scheduler", "tcp://127.0.0.1:1")  # fmt: skip
    assert res.exit_code == 2 and "not both" in res.output


def test_project_transposed_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    W = rng.gamma(1.0, 1.0, (12, 3))
    X = rng.poisson(W @ rng.gamma(1.0, 10.0, (3, 25))).astype(float)
    fit = scalenmf.nmf(X, 3, max_iter=20).save(tmp_path / "fit.zarr")
    np.save(tmp_path / "samples_by_features.npy", X.T)
    out = tmp_path / "p.zarr"
    res = run("project", fit, tmp_path / "samples_by_features.npy", "-o", out, "--transpose")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(
        scalenmf.load_projection(out).H, scalenmf.project(fit, X).H, rtol=1e-10, atol=1e-12
    )
