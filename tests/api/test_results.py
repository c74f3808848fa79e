"""The results are one family (``results.base.Result``): the same save / load path
handling, labels, repr and ``to_pandas``, and the same integrity checks for every store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import scalenmf
from scalenmf.io import InputError
from scalenmf.results import (
    ConsensusResult,
    INMFResult,
    LinkedNMFResult,
    NMFResult,
    ProjectionResult,
    RankSurvey,
    Result,
)

pd = pytest.importorskip("pandas")

FAST = {"max_iter": 8, "tol": 0.0, "progress": False}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    W = rng.gamma(1.0, 1.0, (20, 3))
    A = rng.poisson(W @ rng.gamma(1.0, 3.0, (3, 30))).astype(float) + 0.1
    B = rng.poisson(W @ rng.gamma(1.0, 3.0, (3, 25))).astype(float) + 0.1
    return A, B


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, Result]:
    A, B = data
    nmf = scalenmf.nmf(A, 3, **FAST)
    return {
        "nmf": nmf,
        "lnmf": scalenmf.lnmf([A, B], 2, 1, **FAST),
        "inmf": scalenmf.inmf([A, B], 2, **FAST),
        "project": scalenmf.project(nmf, B, progress=False),
        "survey": scalenmf.rank_survey(A, "2-3", n_runs=2, cv_reps=1, **FAST),
        "consensus": scalenmf.consensus(A, 2, n_runs=3, **FAST),
    }


TYPES = {
    "nmf": NMFResult,
    "lnmf": LinkedNMFResult,
    "inmf": INMFResult,
    "project": ProjectionResult,
    "survey": RankSurvey,
    "consensus": ConsensusResult,
}


@pytest.mark.parametrize("name", sorted(TYPES))
def test_every_public_function_returns_a_result(fitted, name):
    res = fitted[name]
    assert isinstance(res, TYPES[name]) and isinstance(res, Result)
    assert isinstance(res.params, dict) and res.params["memory_limit"] is None
    assert isinstance(res.info, dict) and res.info["n_blocks"] >= 1
    assert repr(res).startswith(f"{type(res).__name__}(") and repr(res).endswith(")")


@pytest.mark.parametrize("name", ["nmf", "lnmf", "inmf", "project"])
def test_stores_load_back_as_their_own_class(fitted, name, tmp_path):
    res = fitted[name]
    out = tmp_path / "r.zarr"
    assert res.save(out) == str(out)
    back = type(res).load(out)
    assert type(back) is type(res)
    np.testing.assert_array_equal(back.W, res.W)
    assert back.params == res.params
    assert repr(back) == repr(res)


def test_loading_a_store_as_another_class_is_refused(fitted, tmp_path):
    out = tmp_path / "l.zarr"
    fitted["lnmf"].save(out)
    with pytest.raises(InputError, match="lnmf, not projection"):
        ProjectionResult.load(out)
    inmf = tmp_path / "i.zarr"
    fitted["inmf"].save(inmf)
    with pytest.raises(InputError, match="holds a INMFResult, not a LinkedNMFResult"):
        LinkedNMFResult.load(inmf)


def test_directory_results_say_they_are_not_loaded_back(tmp_path):
    with pytest.raises(TypeError, match="RankSurvey is saved as a directory"):
        RankSurvey.load(tmp_path)


@pytest.mark.parametrize("name", ["lnmf", "project"])
def test_linked_and_projection_stores_are_checked_like_nmf_stores(fitted, name, tmp_path):
    """They were written without digests; now a changed value is refused on load."""
    out = tmp_path / "r.zarr"
    fitted[name].save(out)
    g = zarr.open_group(str(out), mode="r+")
    H = np.asarray(g["H"][...])
    H[0, 0] += 1.0
    g["H"][...] = H
    with pytest.raises(InputError, match=r"'H'.*checksum"):
        type(fitted[name]).load(out)


def test_loss_is_the_final_objective_where_there_is_one(fitted):
    for name in ("nmf", "lnmf", "inmf"):
        assert fitted[name].loss == fitted[name].loss_history[-1]
    assert fitted["project"].loss == pytest.approx(fitted["project"].objective)
    assert not hasattr(fitted["survey"], "loss")


def test_to_pandas_labels_every_table(fitted):
    basis, coef = fitted["lnmf"].to_pandas()
    assert basis.shape == (20, 2 + 2) and coef.shape == (4, 55)
    assert list(basis.columns) == fitted["lnmf"].factor_labels()
    np.testing.assert_array_equal(coef.to_numpy(), fitted["lnmf"].coefficients)
    W, H = fitted["inmf"].to_pandas()
    assert W.shape == (20, 2) and H.shape == (2, 55)
    H, quality = fitted["project"].to_pandas()
    assert H.shape == (3, 25) and len(quality) == 25
    np.testing.assert_array_equal(quality["cosine"], fitted["project"].cosine)
    table = fitted["survey"].to_pandas()
    assert list(table.index) == [2, 3] and "cophenetic" in table.columns
    clusters = fitted["consensus"].to_pandas()
    assert clusters.shape == (30, 1) and set(clusters["cluster"]) <= {1, 2}


def test_frame_labels_by_position_when_there_are_no_labels():
    df = Result.frame(np.ones((2, 3)), None, ["a", "b", "c"], row_name="feature")
    assert list(df.index) == [0, 1] and df.index.name == "feature"
    assert list(df.columns) == ["a", "b", "c"]


def test_rank_survey_reads_anndata_like_nmf(tmp_path: Path):
    ad = pytest.importorskip("anndata")
    rng = np.random.default_rng(1)
    counts = rng.poisson(3.0, (30, 12)).astype(float) + 0.1  # cells × genes
    adata = ad.AnnData(X=counts)
    survey = scalenmf.rank_survey(adata, "2", n_runs=2, cv_reps=0, null=False, **FAST)
    direct = scalenmf.rank_survey(counts.T, "2", n_runs=2, cv_reps=0, null=False, **FAST)
    np.testing.assert_allclose(survey.best[2].W, direct.best[2].W)


def test_jnmf_store_with_empty_unique_bases_round_trips(data, tmp_path):
    """jNMF's U_d are (m, 0): their digest and check must work on empty arrays."""
    A, B = data
    res = scalenmf.jnmf([A, B], 2, **FAST)
    out = tmp_path / "j.zarr"
    res.save(out)
    back = LinkedNMFResult.load(out)
    assert [U.shape for U in back.U] == [(20, 0), (20, 0)]
    np.testing.assert_array_equal(back.W, res.W)
    from scalenmf.io.results import verify_result_store

    verify_result_store(out)


def test_digest_of_an_empty_array_matches_its_stored_digest(tmp_path):
    from scalenmf.io.integrity import digest_array, digest_stored

    empty = np.zeros((5, 0))
    z = zarr.create_array(str(tmp_path / "e.zarr"), shape=(5, 0), chunks=(5, 1), dtype="f8")
    assert digest_array(empty) == digest_stored(z)
    assert digest_array(empty) != digest_array(np.zeros((0, 5)))
