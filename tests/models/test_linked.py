"""Linked NMF, jNMF and iNMF: ground-truth recovery, structure, monotonicity, parity, stores."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

import scalenmf
from scalenmf.io.combine import ChainedSource
from scalenmf.io.matrix import as_source
from scalenmf.signatures import cosine_matrix

M = 40
K_SHARED, K_UNIQUE = 3, (2, 2)


def _factors(rng: np.random.Generator, k: int) -> np.ndarray:
    """Sparse-ish gamma factors: each one loads on about a third of the features."""
    return rng.gamma(1.0, 1.0, (M, k)) * (rng.random((M, k)) < 0.35) + 0.01


def make_linked(seed: int = 0, ns: tuple[int, ...] = (150, 200), k_unique=K_UNIQUE):
    """Poisson counts ``A_d ~ Poisson(S H_d + U_d V_d)``; returns data and the truth."""
    rng = np.random.default_rng(seed)
    S = _factors(rng, K_SHARED)
    Us = [_factors(rng, k) for k in k_unique]
    data = []
    for U, n in zip(Us, ns, strict=True):
        H = rng.gamma(1.0, 15.0, (K_SHARED, n))
        V = rng.gamma(1.0, 15.0, (U.shape[1], n))
        data.append(rng.poisson(S @ H + U @ V).astype(np.float64))
    return data, S, Us


@pytest.fixture(scope="module")
def linked_data():
    return make_linked()


def matched_cosines(truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    C = cosine_matrix(truth, found)
    rows, cols = linear_sum_assignment(-C)
    return C[rows, cols]


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return fn(*args, **kwargs)


def never_rises(history: list[float], rtol: float = 1e-10) -> bool:
    return all(b <= a + rtol * abs(a) for a, b in itertools.pairwise(history))


# -- the chained source ---------------------------------------------------------------------


def test_chained_source_blocks_never_straddle_datasets():
    A, B = np.ones((5, 7)), np.full((5, 4), 2.0)
    src = ChainedSource([as_source(A).reblock(3), as_source(B).reblock(3)], ["a", "b"])
    assert src.shape == (5, 11) and src.dataset_bounds == [(0, 7), (7, 11)]
    # The datasets' own blocks, offset; a sliver at a dataset's end joins the block before.
    assert src.block_bounds == [(0, 3), (3, 7), (7, 11)]
    assert src.block_dataset == [0, 0, 1]
    np.testing.assert_array_equal(src.read_columns(0, 11), np.hstack([A, B]))
    re = src.reblock(2)
    assert all(
        re.block_dataset[j] == re.dataset_of_column(a) for j, (a, _) in enumerate(re.block_bounds)
    )
    assert all(b <= 7 or a >= 7 for a, b in re.block_bounds)
    with pytest.raises(ValueError, match="straddles datasets 'a' and 'b'"):
        src.reblock([(0, 5), (5, 9), (9, 11)])


def test_chained_source_aligns_rows_by_label_and_refuses_mismatch():
    rng = np.random.default_rng(1)
    labels = np.array([f"g{i}" for i in range(6)])
    A, B = rng.random((6, 3)), rng.random((6, 4))
    perm = rng.permutation(6)
    a = as_source(A).set_labels(labels)
    b = as_source(sp.csc_matrix(B[perm])).set_labels(labels[perm])
    src = ChainedSource([a, b])
    assert not src.is_sparse  # mixed dense and sparse datasets are read dense
    np.testing.assert_allclose(src.read_columns(3, 7), B)
    other = as_source(B).set_labels([f"x{i}" for i in range(6)])
    with pytest.raises(scalenmf.InputError, match="6 of 6 features are missing"):
        ChainedSource([a, other])
    with pytest.raises(scalenmf.InputError, match="5 features"):
        ChainedSource([as_source(A), as_source(B[:5])])


# -- lNMF recovers the truth; jNMF mixes it ---------------------------------------------------


def test_lnmf_recovers_shared_into_w_and_unique_into_u(linked_data):
    (A, B), S, (UA, UB) = linked_data
    res = quiet(scalenmf.lnmf, [A, B], K_SHARED, list(K_UNIQUE), max_iter=300, tol=1e-7)
    assert res.W.shape == (M, 3) and [U.shape for U in res.U] == [(M, 2), (M, 2)]
    assert [H.shape for H in res.H] == [(3, 150), (3, 200)]
    assert [V.shape for V in res.V] == [(2, 150), (2, 200)]
    assert matched_cosines(S, res.W).min() >= 0.95
    assert matched_cosines(UA, res.U[0]).min() >= 0.95
    assert matched_cosines(UB, res.U[1]).min() >= 0.95
    # And the fit is as good as the truth's (the data were drawn from it).
    assert res.relative_error < 0.2


def test_jnmf_at_the_same_rank_mixes_shared_and_unique(linked_data):
    (A, B), S, (UA, UB) = linked_data
    lin = quiet(scalenmf.lnmf, [A, B], K_SHARED, list(K_UNIQUE), max_iter=300, tol=1e-7)
    total = K_SHARED + sum(K_UNIQUE)
    joint = quiet(scalenmf.jnmf, [A, B], total, max_iter=300, tol=1e-7)
    assert joint.k_unique == [0, 0] and joint.W.shape == (M, total)
    # jNMF finds the seven profiles but cannot keep them apart: every dataset spends part
    # of its counts on the other dataset's unique factors. lNMF spends exactly nothing.
    truth = np.hstack([S, UA, UB])
    _, cols = linear_sum_assignment(-cosine_matrix(truth, joint.W))
    other_unique = {0: cols[K_SHARED + 2 :], 1: cols[K_SHARED : K_SHARED + 2]}
    w = joint.W.sum(axis=0)
    for d in (0, 1):
        share = (w[:, None] * joint.H[d]).sum(axis=1)
        leaked = share[other_unique[d]].sum() / share.sum()
        assert leaked > 1e-3, leaked
        assert np.all(
            lin.coefficients[K_SHARED + 2 * (1 - d) : K_SHARED + 2 * (2 - d), _cols(lin, d)] == 0
        )
    # At the rank each dataset sees (k_shared + k_unique = 5), jNMF merges the unique
    # factors of the two datasets: some true unique profile has no good match.
    small = quiet(scalenmf.jnmf, [A, B], K_SHARED + K_UNIQUE[0], max_iter=300, tol=1e-7)
    best = cosine_matrix(np.hstack([UA, UB]), small.W).max(axis=1)
    assert best.min() < 0.9, best
    lin_best = cosine_matrix(np.hstack([UA, UB]), np.hstack(lin.U)).max(axis=1)
    assert lin_best.min() >= 0.95


def _cols(res, d: int) -> slice:
    ds = res.datasets[d]
    return slice(ds.start, ds.stop)


def test_three_datasets_with_different_unique_ranks():
    data, S, Us = make_linked(seed=5, ns=(120, 100, 140), k_unique=(1, 2, 3))
    res = quiet(scalenmf.lnmf, data, K_SHARED, [1, 2, 3], max_iter=300, tol=1e-7)
    assert res.k_unique == [1, 2, 3]
    assert matched_cosines(S, res.W).min() >= 0.95
    for U_true, U in zip(Us, res.U, strict=True):
        assert matched_cosines(U_true, U).min() >= 0.95


# -- structure, monotonicity, parity ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"solver": "als"},
        {"solver": "als", "nnls": "bpp", "init": "random"},
        {"solver": "hals", "l1_h": 0.5, "l2_w": 0.1},
        {"solver": "mu"},
        {"loss": "kl"},
    ],
    ids=["als", "als-bpp-random", "hals-penalties", "mu", "kl"],
)
def test_structural_zeros_and_loss_never_rises(linked_data, kwargs):
    (A, B), _, _ = linked_data
    res = quiet(scalenmf.lnmf, [A, B], 2, [1, 2], max_iter=25, tol=0, **kwargs)
    assert len(res.loss_history) == 25
    assert never_rises(res.loss_history), res.loss_history
    full = res.coefficients
    mask = np.zeros(full.shape, dtype=bool)
    mask[:2] = True  # shared factors: every dataset
    mask[2:3, :150] = True  # A's unique factor
    mask[3:5, 150:] = True  # B's two unique factors
    assert np.all(full[~mask] == 0.0)  # exactly, not approximately
    for arr in [res.W, *res.U, *res.H, *res.V]:
        assert arr.min() >= 0
    assert res.basis.shape == (M, 5)


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_dense_equals_sparse(linked_data, loss):
    (A, B), _, _ = linked_data
    kwargs = {"max_iter": 10, "tol": 0, "loss": loss, "block_cols": 64}
    dense = quiet(scalenmf.lnmf, [A, B], 2, [2, 1], **kwargs)
    sparse = quiet(scalenmf.lnmf, [sp.csc_matrix(A), sp.csc_matrix(B)], 2, [2, 1], **kwargs)
    np.testing.assert_allclose(dense.loss_history, sparse.loss_history, rtol=1e-9)
    for a, b in zip(
        dense.H + dense.V + dense.U + [dense.W],
        sparse.H + sparse.V + sparse.U + [sparse.W],
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_float32_agrees_with_float64(linked_data):
    (A, B), _, _ = linked_data
    r64 = quiet(scalenmf.lnmf, [A, B], 2, 1, max_iter=15, tol=0)
    r32 = quiet(scalenmf.lnmf, [A, B], 2, 1, max_iter=15, tol=0, dtype="float32")
    assert r32.W.dtype == np.float32 and r32.H[0].dtype == np.float32
    np.testing.assert_allclose(r32.loss_history[-1], r64.loss_history[-1], rtol=1e-3)


def test_blocking_and_restarts(linked_data):
    (A, B), _, _ = linked_data
    # Exact NNLS (BPP): coordinate descent stops per block, so it depends on the blocking.
    exact = {"max_iter": 10, "tol": 0, "nnls": "bpp"}
    one = quiet(scalenmf.lnmf, [A, B], 2, 1, block_cols=1000, **exact)
    many = quiet(scalenmf.lnmf, [A, B], 2, 1, block_cols=33, **exact)
    assert one.info["n_blocks"] == 2 and many.info["n_blocks"] == 5 + 7
    np.testing.assert_allclose(one.loss_history, many.loss_history, rtol=1e-8)
    runs = quiet(scalenmf.lnmf, [A, B], 2, 1, max_iter=10, tol=0, n_runs=3)
    assert len(runs.runs) == 3
    assert runs.loss == min(r["objective"] for r in runs.runs)


def test_per_dataset_errors_match_direct_computation(linked_data):
    (A, B), _, _ = linked_data
    res = quiet(scalenmf.lnmf, [A, B], 3, [2, 2], max_iter=30)
    for d, X in enumerate((A, B)):
        direct = np.linalg.norm(X - res.reconstruct(d)) / np.linalg.norm(X)
        assert res.datasets[d].relative_error == pytest.approx(direct, rel=1e-8)
    both = np.sqrt(
        sum(np.linalg.norm(X - res.reconstruct(d)) ** 2 for d, X in enumerate((A, B)))
        / (np.linalg.norm(A) ** 2 + np.linalg.norm(B) ** 2)
    )
    assert res.relative_error == pytest.approx(both, rel=1e-8)


# -- iNMF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["als", "hals"])
def test_inmf_objective_never_rises_and_matches_direct(linked_data, solver):
    (A, B), _, _ = linked_data
    lam = 2.0
    res = quiet(scalenmf.inmf, [A, B], 4, lam, solver=solver, max_iter=20, tol=0)
    assert never_rises(res.loss_history), res.loss_history
    assert [V.shape for V in res.V] == [(M, 4), (M, 4)]
    direct = 0.0
    for d, X in enumerate((A, B)):
        direct += np.linalg.norm(X - res.reconstruct(d)) ** 2
        direct += lam * np.linalg.norm(res.V[d] @ res.H[d]) ** 2
    assert res.loss == pytest.approx(0.5 * direct, rel=1e-8)
    for arr in [res.W, *res.V, *res.H]:
        assert arr.min() >= 0


def test_inmf_lambda_pushes_signal_onto_the_shared_basis(linked_data):
    (A, B), _, _ = linked_data

    def dataset_share(res) -> float:
        return sum(float((V @ H).sum()) for V, H in zip(res.V, res.H, strict=True)) / sum(
            float(((res.W + V) @ H).sum()) for V, H in zip(res.V, res.H, strict=True)
        )

    loose = quiet(scalenmf.inmf, [A, B], 4, 0.1, max_iter=60)
    tight = quiet(scalenmf.inmf, [A, B], 4, 50.0, max_iter=60)
    assert dataset_share(tight) < dataset_share(loose)


# -- the rank heuristic -----------------------------------------------------------------------


def test_lnmf_ranks_proposes_the_true_ranks(linked_data):
    (A, B), _, _ = linked_data
    proposal = quiet(scalenmf.lnmf_ranks, [A, B], 5, min_cosine=0.9, max_iter=300, tol=1e-7)
    assert proposal.ks == [5, 5]
    assert proposal.k_shared == 3 and proposal.k_unique == [2, 2]
    assert sum(mt["conserved"] for mt in proposal.matches) == 3
    assert proposal.cosines["dataset_2"].shape == (5, 5)
    strict = quiet(scalenmf.lnmf_ranks, [A, B], [5, 6], min_cosine=1.0, max_iter=50)
    assert strict.n_conserved == 0 and strict.k_shared == 1 and strict.k_unique == [4, 5]


# -- stores -----------------------------------------------------------------------------------


def test_store_round_trip_and_info(tmp_path: Path, linked_data):
    (A, B), _, _ = linked_data
    rows = [f"g{i}" for i in range(M)]
    a = as_source(A).set_labels(rows, [f"a{i}" for i in range(150)])
    b = as_source(B).set_labels(rows, [f"b{i}" for i in range(200)])
    res = quiet(scalenmf.lnmf, [a, b], 3, [2, 1], names=["tumour", "normal"], max_iter=10)
    path = res.save(tmp_path / "l.zarr")
    back = scalenmf.load_linked(path)
    assert isinstance(back, scalenmf.LinkedNMFResult)
    assert back.names == ["tumour", "normal"] and back.k_unique == [2, 1]
    for x, y in zip(
        res.H + res.U + res.V + [res.W], back.H + back.U + back.V + [back.W], strict=True
    ):
        np.testing.assert_array_equal(x, y)
    assert list(back.col_labels[1][:2]) == ["b0", "b1"] and back.row_labels[0] == "g0"
    plain = scalenmf.load(path)  # W and every H_d side by side
    np.testing.assert_array_equal(plain.H, np.hstack(res.H))
    from scalenmf.io.info import describe, format_description

    d = describe(path)
    assert d["model"] == "lnmf" and d["k_unique"] == [2, 1]
    text = format_description(d)
    assert "dataset tumour" in text and "columns 150:350" in text and "U_0" in text
    import zarr

    col_dataset = zarr.open_group(str(path), mode="r")["col_dataset"][:]
    assert (col_dataset[:150] == 0).all() and (col_dataset[150:] == 1).all()
    inm = quiet(scalenmf.inmf, [A, B], 3, max_iter=5)
    back_i = scalenmf.load_linked(inm.save(tmp_path / "i.zarr"))
    assert isinstance(back_i, scalenmf.INMFResult) and back_i.lam == 5.0
    with pytest.raises(scalenmf.InputError, match="not lnmf or inmf"):
        scalenmf.load_linked(scalenmf.nmf(A, 2, max_iter=5).save(tmp_path / "n.zarr"))


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((2, [1, 1, 1]), {}, ValueError, "k_unique has 3 entries for 2 datasets"),
        ((-1, 1), {}, ValueError, "k_shared must be in"),
        ((0, [0, 1]), {}, ValueError, "dataset 'dataset_1' has no factors"),
        ((30, 20), {}, ValueError, "dataset 'dataset_1'.*k must be between 1 and"),
        ((2, "two"), {}, TypeError, "k_unique must be an integer"),
        ((2, 1), {"init": "nndsvd"}, ValueError, "init must be one of 'jnmf', 'random'"),
        ((2, 1), {"solver": "mu", "loss": "frobenius", "max_iter": 0}, ValueError, "max_iter"),
    ],
)
def test_bad_parameters(linked_data, args, kwargs, error, match):
    (A, B), _, _ = linked_data
    with pytest.raises(error, match=match):
        scalenmf.lnmf([A[:, :40], B], *args, **kwargs)


def test_bad_data():
    good = np.ones((5, 6))
    with pytest.raises(ValueError, match="at least 2 datasets"):
        scalenmf.lnmf([good], 1, 1)
    with pytest.raises(TypeError, match="list of matrices"):
        scalenmf.lnmf(good, 1, 1)
    bad = good.copy()
    bad[0, 0] = -1
    with pytest.raises(scalenmf.InputError, match="negative"):
        scalenmf.lnmf([good, bad], 1, 1)
    bad[0, 0] = np.nan
    with pytest.raises(scalenmf.InputError, match="NaN"):
        scalenmf.inmf([good, bad], 1)
    with pytest.raises(scalenmf.InputError, match="'dataset_2' is all zeros"):
        scalenmf.lnmf([good, np.zeros((5, 4))], 1, 1)
    with pytest.raises(scalenmf.InputError, match="has no samples"):
        scalenmf.lnmf([good, np.zeros((5, 0))], 1, 1)
    with pytest.raises(ValueError, match="solver='als' or 'hals'"):
        scalenmf.inmf([good, good], 1, solver="mu")


def test_datasets_in_another_row_order_give_the_same_fit(linked_data):
    (A, B), _, _ = linked_data
    rows = np.array([f"g{i}" for i in range(M)])
    perm = np.random.default_rng(4).permutation(M)
    a = as_source(A).set_labels(rows)
    opts = {"max_iter": 8, "tol": 0, "block_cols": 50, "nnls": "bpp"}
    aligned = quiet(scalenmf.lnmf, [a, as_source(B).set_labels(rows)], 2, 1, **opts)
    shuffled = as_source(sp.csc_matrix(B[perm])).set_labels(rows[perm])
    other = quiet(scalenmf.lnmf, [a, shuffled], 2, 1, **opts)
    np.testing.assert_allclose(other.W, aligned.W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(other.V[1], aligned.V[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(other.row_labels, rows)


def test_inmf_dense_equals_sparse(linked_data):
    (A, B), _, _ = linked_data
    opts = {"max_iter": 8, "tol": 0, "block_cols": 64}
    dense = quiet(scalenmf.inmf, [A, B], 3, 1.0, **opts)
    sparse = quiet(scalenmf.inmf, [sp.csc_matrix(A), sp.csc_matrix(B)], 3, 1.0, **opts)
    np.testing.assert_allclose(dense.loss_history, sparse.loss_history, rtol=1e-9)
    np.testing.assert_allclose(dense.W, sparse.W, rtol=1e-7, atol=1e-9)
