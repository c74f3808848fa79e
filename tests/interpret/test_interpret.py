"""Interpretation: predict, Kim & Park scores, Hoyer sparseness, signature matching."""

from __future__ import annotations

import numpy as np
import pytest

import scalenmf
from scalenmf.interpret import (
    extract_features,
    feature_scores,
    hoyer_sparseness,
    normalized_h,
    predict,
    sparseness,
    top_features,
)
from scalenmf.io.errors import InputError
from scalenmf.results.nmf import NMFResult
from scalenmf.signatures import cosmic_reference, load_reference, simulate_catalogue


def _result(W, H, rows=None):
    return NMFResult(
        W=np.asarray(W, float),
        H=np.asarray(H, float),
        loss_history=[0.0],
        relative_error=0.0,
        n_iter=1,
        converged=True,
        params={},
        row_labels=rows,
    )


def test_predict_uses_the_scale_free_coefficients():
    W = np.array([[10.0, 0.1], [10.0, 0.1]])  # factor 0 is 100× larger per unit of H
    H = np.array([[1.0, 0.01], [5.0, 50.0]])
    res = _result(W, H)
    # Raw argmax of H would say factor 1 for both; scaled, sample 0 is mostly factor 0.
    np.testing.assert_allclose(normalized_h(W, H), [[20.0, 0.2], [1.0, 10.0]])
    assert predict(res).tolist() == [0, 1]
    assert predict(res, "features").tolist() == [0, 0]
    with pytest.raises(ValueError, match="samples"):
        predict(res, "genes")


def test_kim_park_scores_by_hand_and_feature_selection():
    W = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    s = feature_scores(W)
    # Specific row: 1; uniform over 3: 0; half-half: 1 + (2·½·log2 ½)/log2 3; zero row: 0.
    assert s == pytest.approx([1.0, 0.0, 1 - 1 / np.log2(3), 0.0])
    rng = np.random.default_rng(0)
    Wb = 0.1 + rng.random((200, 3)) * 0.01  # nearly uniform rows: not specific
    Wb[:5, 0] = 5.0
    Wb[5:9, 2] = 5.0
    picked = extract_features(Wb)
    assert picked[0][:5].tolist() == [0, 1, 2, 3, 4] or set(range(5)) <= set(picked[0].tolist())
    assert {5, 6, 7, 8} <= set(picked[2].tolist())
    everything = np.concatenate(picked)
    assert everything.size == np.unique(everything).size  # one factor per feature
    assert everything.size < 20  # near-uniform rows are (almost all) left out
    assert set(top_features(Wb, 5)[:, 0].tolist()) == set(range(5))
    assert top_features(Wb, 1000).shape == (200, 3)


def test_hoyer_sparseness_by_hand():
    assert hoyer_sparseness(np.array([0.0, 0.0, 3.0, 0.0])) == pytest.approx(1.0)
    assert hoyer_sparseness(np.ones(5)) == pytest.approx(0.0)
    v = np.array([1.0, 2.0, 0.0])
    expected = (np.sqrt(3) - 3 / np.sqrt(5)) / (np.sqrt(3) - 1)
    assert hoyer_sparseness(v) == pytest.approx(expected)
    assert np.isnan(hoyer_sparseness(np.zeros(3)))
    res = _result(np.eye(3), np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))
    sp_ = sparseness(res)
    assert sp_.factors == pytest.approx([1.0, 1.0, 1.0])
    assert sp_.samples == pytest.approx([1.0, 0.0])
    assert sp_.coefficients.shape == (3,)


PLANTED = ["SBS1", "SBS5", "SBS13", "SBS18", "SBS40a"]


def test_signature_matching_recovers_planted_cosmic_signatures():
    ref = cosmic_reference()
    cols = [int(np.flatnonzero(ref.names == s)[0]) for s in PLANTED]
    counts, _ = simulate_catalogue(ref.matrix[:, cols], 400, seed=2, mean_burden=3000)
    # Rows shuffled: matching must align channels by label, not by position.
    order = np.random.default_rng(0).permutation(96)
    source = scalenmf.open_matrix(counts[order]).set_labels(ref.channels[order], None)
    res = scalenmf.nmf(
        source, 5, loss="kl", max_iter=600, tol=1e-6, n_runs=3, seed=0, progress=False
    )
    matches = scalenmf.match(res)
    assert sorted(m.match for m in matches) == sorted(PLANTED)
    assert min(m.cosine for m in matches) > 0.95
    assert [m.factor for m in matches] == list(range(5))


def test_user_reference_file_and_more_factors_than_signatures(tmp_path):
    rng = np.random.default_rng(1)
    S = rng.random((6, 2))
    path = tmp_path / "ref.tsv"
    lines = ["channel\tsigA\tsigB"] + [f"c{i}\t{S[i, 0]}\t{S[i, 1]}" for i in range(6)]
    path.write_text("\n".join(lines) + "\n")
    ref = load_reference(str(path))
    assert ref.names.tolist() == ["sigA", "sigB"]
    W = np.column_stack([S[:, 1] * 3, S[:, 0], rng.random(6)])
    res = _result(W, np.ones((3, 4)), rows=np.array([f"c{i}" for i in range(6)]))
    out = scalenmf.match(res, str(path))
    assert [m.match for m in out[:2]] == ["sigB", "sigA"]
    assert out[0].cosine == pytest.approx(1.0) and out[2].match == ""
    bad = tmp_path / "bad.tsv"
    bad.write_text("channel\tsigA\nc0\tx\n")
    with pytest.raises(InputError, match="line 2"):
        load_reference(str(bad))
    with pytest.raises(InputError, match="unknown reference"):
        load_reference("cosmic-v9")
    unlabelled = _result(np.ones((5, 2)), np.ones((2, 2)))
    with pytest.raises(InputError, match="cannot align"):
        scalenmf.match(unlabelled)
