"""The evaluation: data alignment by label, disjoint folds, a reduced end-to-end run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

import scalenmf.data
from scalenmf.cli.dnmf import dnmf
from scalenmf.experiments import dnmf_eval as ev

#: Small real data shipped with the tests: the first 200 samples of one synthetic set and
#: the first 120 BRCA-560 genomes (tests/data/README.md).
DATA = Path(__file__).parent.parent.parent / "data"
COSMIC = Path(scalenmf.data.__file__).parent / "COSMIC_v3.4_SBS_GRCh37.tsv"
SET = "syn.2.7a.7b.abst_sp.sp"


@pytest.mark.parametrize(("n", "k"), [(1000, 5), (17, 3), (560, 5)])
def test_folds_are_disjoint_and_cover_all_columns(n, k):
    folds = ev.kfold_indices(n, k, seed=1)
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(n))
    for tr, te in folds:
        assert np.intersect1d(tr, te).size == 0
        assert tr.size + te.size == n


def test_the_papers_split_leaks_training_columns():
    tr, te = ev.kfold_indices(1000, 5, seed=1)[0]
    leaky = ev.paper_leaky_test_index(te, 1000)
    assert np.isin(leaky, tr).mean() > 0.5


def test_synsig_is_aligned_by_label_and_consistent():
    d = ev.load_synsig(DATA / "synsig" / SET)
    assert d.V.shape == (96, 200) and d.H is not None and d.W is not None
    # the catalog is the product of signatures and exposures up to rounding
    rel = np.abs(d.W @ d.H - d.V).sum() / d.V.sum()
    assert rel < 0.05
    # COSMIC's file uses another channel order; aligned by label the signatures agree
    import csv

    with open(COSMIC) as f:
        rows = list(csv.reader(f, delimiter="\t"))
    col = rows[0].index("SBS2")
    cosmic = ev.align_rows(
        [r[0] for r in rows[1:]], np.array([float(r[col]) for r in rows[1:]]), "cosmic"
    )
    assert np.corrcoef(cosmic, d.W[:, 0])[0, 1] > 0.99
    with pytest.raises(ValueError, match="channels"):
        ev.align_rows([f"x{i}" for i in range(96)], d.V, "bad")


def test_brca_loads_in_canonical_order(tmp_path):
    d = ev.load_brca(DATA / "icgc_brca560_sbs96_counts_first120.npy")
    assert d.V.shape == (96, 120) and d.V.min() >= 0 and d.k == 12
    raw = np.load(DATA / "icgc_brca560_sbs96_counts_first120.npy")
    # the file is substitution-major with the 5' then the 3' base: A[C>A]C is column 1
    assert d.V[ev.CHANNELS.index("A[C>A]C"), 7] == raw[7, 1]
    np.save(tmp_path / "bad.npy", raw[:, :95])
    with pytest.raises(ValueError, match=r"expected shape \(n, 96\)"):
        ev.load_brca(tmp_path / "bad.npy")


def test_reduced_evaluation_writes_the_table(tmp_path):
    out = tmp_path / "eval"
    res = CliRunner().invoke(
        dnmf,
        [
            "evaluate",
            "--data",
            str(DATA),
            "--sets",
            SET,
            "--folds",
            "2",
            "--epochs",
            "15",
            "--lambdas",
            "0",
            "--no-brca",
            "--max-samples",
            "120",
            "-o",
            str(out),
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    import csv

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    arms = {r["arm"] for r in rows}
    assert {
        "dnmf",
        "nnls",
        "mu_10",
        "mu_conv",
        "mu_paper",
        "mu_random",
        "mu_nndsvd",
        "nnls_dnmf_w",
        "mu_10_dnmf_w",
    } <= arms
    assert {r["fold"] for r in rows} == {"0", "1"}
    assert all(float(r["score"]) >= 0 for r in rows)
    summary = (out / "summary.md").read_text()
    assert "| supervised | nnls |" in summary and "Wall time" in summary
    assert "holds?" in (out / "claims.md").read_text()
    assert (out / "ratios_boxplot.png").stat().st_size > 1000
    res = CliRunner().invoke(
        dnmf,
        ["evaluate", "--data", str(DATA), "--sets", "nope", "-o", str(tmp_path / "x"), "--quiet"],
    )
    assert res.exit_code != 0 and "unknown synsig" in res.output
