"""Consensus measures against hand-computed values, and the seed 001 example end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

import scalenmf
from scalenmf.models.consensus import (
    consensus_matrix,
    cophenetic,
    dispersion,
    dispersion_from_labels,
    factor_consensus,
    sample_consensus,
    silhouette,
)


def seed001_example(seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    """Seed 001: 300 genes × 30 samples, 3 clusters of 10, noise sd 0.2 clipped at 0."""
    rng = np.random.default_rng(seed)
    W = rng.uniform(0, 2, (300, 3))
    truth = np.repeat(np.arange(3), 10)
    H = np.zeros((3, 30))
    H[truth, np.arange(30)] = rng.uniform(1, 2, 30)
    X = W @ H + rng.normal(0, 0.2, (300, 30))
    return np.maximum(X, 0), truth


def test_cophenetic_and_dispersion_of_a_tiny_consensus_matrix_by_hand():
    # Samples 0,1 always together; 2 with 3 in two of three runs.
    C = np.array(
        [
            [1.0, 1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 2 / 3],
            [0.0, 0.0, 2 / 3, 1.0],
        ]
    )
    # Dispersion: (1/16) Σ 4 (C − ½)²: 14 entries at 0 or 1 contribute 1 each, two at 2/3
    # contribute 4·(1/6)² = 1/9 each.
    assert dispersion(C) == pytest.approx((14 + 2 / 9) / 16)
    # Distances 1 − C (condensed order 01 02 03 12 13 23): 0, 1, 1, 1, 1, 1/3. Average
    # linkage merges {0,1} at 0, {2,3} at 1/3, then both at 1: cophenetic distances
    # 0, 1, 1, 1, 1, 1/3 — identical, so the correlation is 1.
    assert cophenetic(C) == pytest.approx(1.0)
    # A matrix whose tree cannot reproduce it: d = (0.2, 0.6, 0.5) for pairs 01, 02, 12.
    C3 = 1 - np.array([[0, 0.2, 0.6], [0.2, 0, 0.5], [0.6, 0.5, 0]])
    # Average linkage joins 0,1 at 0.2, then 2 at (0.6 + 0.5)/2 = 0.55: cophenetic
    # distances (0.2, 0.55, 0.55); Pearson correlation with (0.2, 0.6, 0.5) by hand:
    d, c = np.array([0.2, 0.6, 0.5]), np.array([0.2, 0.55, 0.55])
    dm, cm = d - d.mean(), c - c.mean()
    expected = float(dm @ cm / math.sqrt((dm @ dm) * (cm @ cm)))
    assert cophenetic(C3) == pytest.approx(expected)
    assert dispersion(C3) == pytest.approx(np.mean(4 * (C3 - 0.5) ** 2))


def test_consensus_matrix_and_label_dispersion():
    labels = np.array([[0, 0, 1, 1, 2], [0, 0, 1, 2, 2], [1, 1, 0, 0, 2]])
    C = consensus_matrix(labels)
    assert C[2, 3] == pytest.approx(2 / 3) and C[3, 4] == pytest.approx(1 / 3)
    assert np.allclose(C, C.T) and np.allclose(np.diag(C), 1)
    assert dispersion_from_labels(labels) == pytest.approx(dispersion(C))
    rng = np.random.default_rng(0)
    big = rng.integers(0, 4, (6, 300))
    assert dispersion_from_labels(big) == pytest.approx(dispersion(consensus_matrix(big)))


def test_silhouette_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    pts = rng.random((40, 3))
    D = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    labels = rng.integers(0, 3, 40)
    np.testing.assert_allclose(
        silhouette(D, labels), metrics.silhouette_samples(D, labels, metric="precomputed")
    )


def test_subsampled_consensus_still_clusters_every_sample():
    rng = np.random.default_rng(2)
    truth = np.repeat(np.arange(3), 40)
    labels = np.stack(
        [np.where(rng.random(120) < 0.05, rng.integers(0, 3, 120), truth) for _ in range(8)]
    )
    full = sample_consensus(labels, 3)
    sub = sample_consensus(labels, 3, max_samples=30, seed=0)
    assert not full.subsampled and sub.subsampled and sub.samples.size == 30
    assert sub.matrix.shape == (30, 30) and sub.n_total == 120
    assert sub.dispersion == pytest.approx(full.dispersion)  # exact from the labels
    # Same partition (up to the cluster numbers) for every sample.
    pairs = set(zip(full.clusters.tolist(), sub.clusters.tolist(), strict=True))
    assert len(pairs) == 3


def test_factor_consensus_recovers_shared_factors_and_drops_an_outlier():
    rng = np.random.default_rng(3)
    base = rng.random((30, 3))
    Ws = []
    for _ in range(8):
        W = base * rng.uniform(0.5, 2, 3) + rng.random((30, 3)) * 0.02
        Ws.append(W[:, rng.permutation(3)])
    Ws[5][:, 0] = rng.random(30) ** 8  # one factor unlike anything else
    fc = factor_consensus(Ws)
    assert fc.silhouette > 0.5
    assert fc.kept.sum() == 8 * 3 - 1 and not fc.kept[5].all()
    cos = (fc.W / np.linalg.norm(fc.W, axis=0)).T @ (base / np.linalg.norm(base, axis=0))
    assert np.sort(cos.max(axis=1)).min() > 0.99
    np.testing.assert_allclose(fc.W.sum(axis=0), 1.0)


def test_seed001_clusters_recovered_exactly_and_cophenetic_one_at_k3():
    X, truth = seed001_example()
    res = scalenmf.consensus(X, 3, n_runs=30, progress=False)
    assert res.cophenetic == pytest.approx(1.0)
    assert res.dispersion == pytest.approx(1.0)
    # The clusters equal the truth up to their numbering.
    pairs = set(zip(truth.tolist(), res.clusters.tolist(), strict=True))
    assert len(pairs) == 3 and len({p[1] for p in pairs}) == 3
    # R NMF's predict on the consensus fit agrees too.
    pred = scalenmf.predict(res.result)
    assert len(set(zip(truth.tolist(), pred.tolist(), strict=True))) == 3
    assert res.stability > 0.95 and not res.subsampled
    assert res.result.W.shape == (300, 3) and (res.result.H >= 0).all()
