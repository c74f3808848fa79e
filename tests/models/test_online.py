"""Online (mini-batch) NMF: ``nmf(X, k, solver="online")`` on the one block step."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf
from scalenmf.engine import LocalExecutor
from scalenmf.io.matrix import as_source
from scalenmf.models.fits import objective
from scalenmf.models.nmf import NMFConfig, NMFModel
from scalenmf.models.online import block_batches, run_online
from scalenmf.models.step import fit_step


def _catalogue(sparse: bool = False, n: int = 400):
    rng = np.random.default_rng(0)
    W = rng.gamma(0.5, 1, (24, 4))
    H = rng.gamma(0.5, 1, (4, n)) * 20
    X = rng.poisson(W @ H).astype(float)
    return sp.csc_matrix(X) if sparse else X


def test_batches_cover_every_block_once_per_epoch():
    rng = np.random.default_rng(1)
    widths = [30] * 10 + [7]
    batches = block_batches(widths, 70, rng)
    flat = sorted(j for b in batches for j in b)
    assert flat == list(range(11))
    assert all(sum(widths[j] for j in b) >= 70 for b in batches[:-1])


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_every_epoch_lowers_the_objective(loss):
    X = _catalogue()
    finals = [
        scalenmf.nmf(X, 4, loss=loss, solver="online", batch_size=50, max_iter=e, tol=0)
        for e in (1, 2, 4)
    ]
    objs = [r.loss_history[-1] for r in finals]
    assert objs[0] > objs[1] > objs[2]
    for r in finals:
        assert (r.W >= 0).all() and (r.H >= 0).all()
        assert r.params["solver"] == "online" and r.params["batch_size"] == 50


def test_the_full_batch_optimum_is_a_fixed_point_of_the_exact_online_solver():
    X = _catalogue()
    full = scalenmf.nmf(X, 4, max_iter=2000, tol=1e-12, seed=3)
    source = as_source(X, block_cols=40)
    config = NMFConfig(k=4, solver="als")
    model = NMFModel(config, [full.W.copy()], [1.0], float((X * X).sum()))
    executor = LocalExecutor(source)
    trace = run_online(
        model, executor, max_epochs=2, tol=0, batch_cols=80, forget_factor=1.0, warm_start=True
    )
    np.testing.assert_allclose(model.Ws[0], full.W, rtol=1e-5, atol=1e-6 * full.W.max())
    np.testing.assert_allclose(trace.objectives[0][-1], full.loss_history[-1], rtol=1e-8)
    # The last pass measures the objective exactly: the one step gives the same figure.
    bc = model.broadcast([0], first=False)
    part, a = model.part(executor.map_reduce(fit_step, bc), 0)
    exact, _ = objective(config, model.xx, part, a, bc.groups[0].grams[0][a], model.Ws[0])
    np.testing.assert_allclose(trace.objectives[0][-1], exact, rtol=1e-10)


def test_online_comes_close_to_the_full_batch_objective():
    X = _catalogue(n=2000)
    full = scalenmf.nmf(X, 4, max_iter=1000, tol=1e-9, seed=0)
    online = scalenmf.nmf(X, 4, solver="online", batch_size=100, max_iter=30, tol=1e-6)
    assert online.loss_history[-1] <= 1.02 * full.loss_history[-1]


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_dense_and_sparse_online_fits_agree(loss):
    kw = dict(loss=loss, solver="online", batch_size=60, max_iter=3, tol=0, l1_h=0.1, l2_w=0.2)
    dense = scalenmf.nmf(_catalogue(), 4, **kw)
    sparse = scalenmf.nmf(_catalogue(sparse=True), 4, **kw)
    np.testing.assert_allclose(sparse.W, dense.W, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sparse.H, dense.H, rtol=1e-8, atol=1e-10)


@pytest.mark.cluster
@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_online_on_dask_workers_gives_the_laptop_fit(loss):
    kw = dict(loss=loss, solver="online", batch_size=60, max_iter=2, tol=0)
    local = scalenmf.nmf(_catalogue(), 4, **kw)
    remote = scalenmf.nmf(_catalogue(), 4, workers=2, **kw)
    assert remote.info["executor"] == "dask"
    np.testing.assert_allclose(remote.W, local.W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(remote.H, local.H, rtol=1e-10, atol=1e-12)


def test_online_options_are_checked_by_name():
    X = _catalogue()
    with pytest.raises(ValueError, match="batch_size"):
        scalenmf.nmf(X, 3, solver="online", batch_size=0)
    with pytest.raises(ValueError, match="forget_factor"):
        scalenmf.nmf(X, 3, solver="online", forget_factor=1.5)
    with pytest.raises(ValueError, match="one run"):
        scalenmf.nmf(X, 3, solver="online", n_runs=3)
    with pytest.raises(ValueError, match="mask"):
        scalenmf.nmf(X, 3, solver="online", mask=np.zeros(X.shape, dtype=bool))
    with pytest.raises(ValueError, match="online"):
        scalenmf.rank_survey(X, "2-3", solver="online", progress=False)


def test_the_cli_fits_online(tmp_path):
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    path = tmp_path / "x.npy"
    np.save(path, _catalogue())
    out = tmp_path / "out.zarr"
    res = CliRunner().invoke(
        main,
        [
            "fit",
            str(path),
            "-k",
            "3",
            "-o",
            str(out),
            "--solver",
            "online",
            "--max-iter",
            "3",
            "--batch-size",
            "100",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    saved = scalenmf.load(out)
    assert saved.params["solver"] == "online" and saved.params["batch_size"] == 100


# -- the first-epoch schedule, the exact statistics and the passes over X ------------------


class _CountingSource:
    """A source that counts the columns its blocks are read with (the executor re-reads
    blocks with ``cache=False``, so this is the I/O of a fit)."""

    def __init__(self, source):
        self._source = source
        self.cols_read = 0

    def read_block(self, j):
        a, b = self._source.block_bounds[j]
        self.cols_read += b - a
        return self._source.read_block(j)

    def __getattr__(self, name):
        return getattr(self._source, name)


def _online_model(X, config, block_cols, seed=0, sample=True, tmp_path=None):
    """An online model on X, started (NNDSVDa) on the warm-up sample; with ``tmp_path`` X
    is a Zarr store there, read (and counted) block by block."""
    from scalenmf.models.init import initialize
    from scalenmf.models.online import warmup_sample

    if tmp_path is not None:
        import zarr

        path = str(tmp_path / "x.zarr")
        zarr.create_array(
            store=path, shape=X.shape, chunks=(X.shape[0], block_cols), dtype="float64"
        )[...] = X
        X = path
    source = _CountingSource(as_source(X, block_cols=block_cols))
    executor = LocalExecutor(source, cache=False)
    blocks = warmup_sample(source.block_bounds, seed) if sample else None
    start = initialize(executor, config.k, "nndsvda", seed, 1, np.dtype(np.float64), blocks=blocks)
    model = NMFModel(config, start.Ws, start.h_start, start.xx)
    return source, executor, model, blocks


def test_the_reported_passes_are_the_columns_read(tmp_path):
    from scalenmf.models.online import init_passes

    X = _catalogue(n=2000)
    config = NMFConfig(k=4, solver="hals", inner_sweeps=10)
    source, executor, model, sample = _online_model(X, config, 50, tmp_path=tmp_path)
    assert (
        sample is not None and sum(b - a for a, b in (source.block_bounds[j] for j in sample)) < 100
    )
    init_cols = source.cols_read
    assert init_cols == init_passes("nndsvda", source.block_bounds, sample) * 2000
    info = {}
    run_online(model, executor, max_epochs=2, tol=0, batch_cols=100, sample=sample, info=info)
    assert info["warmup_iterations"] >= 2
    assert source.cols_read == pytest.approx(init_cols + info["passes"] * 2000)
    # warm-up + 2 epochs + the last pass, each epoch one pass exactly
    assert info["passes_at_epoch"][1] - info["passes_at_epoch"][0] == pytest.approx(1.0)
    assert info["passes"] == pytest.approx(info["passes_at_epoch"][-1] + 1.0)


def test_the_statistics_hold_every_block_once_with_its_weight():
    """A = Σ_j ω_j H_j H_jᵀ, B = Σ_j ω_j X_j H_jᵀ over the blocks' current H, whatever the
    decays and revisits (the first epoch forgets, later epochs do not)."""
    from scalenmf.models.online import _Online, block_batches

    X = _catalogue(n=600)
    config = NMFConfig(k=4, solver="hals", inner_sweeps=10)
    _, executor, model, _ = _online_model(X, config, 50, sample=False)
    from scalenmf.models.step import initial_states

    executor.set_states(initial_states([0] * executor.source.n_blocks))
    fit = _Online(model, executor, None)
    rng = np.random.default_rng(4)
    widths = [b - a for a, b in executor.source.block_bounds]
    for epoch in (1, 1, 2):
        for batch in block_batches(widths, 100, rng):
            fit.decay(fit.rho(sum(widths[j] for j in batch), epoch, 50.0))
            _, part, a, _ = fit.step(batch)
            fit.add(batch, part, a)
    A = np.zeros((4, 4))
    B = np.zeros((24, 4))
    hsum = np.zeros(4)
    for j, state in enumerate(executor.states()):
        (H,) = state.H.values()
        a, b = executor.source.block_bounds[j]
        A += fit.weight[j] * H[0] @ H[0].T
        B += fit.weight[j] * X[:, a:b] @ H[0].T
        hsum += fit.weight[j] * H[0].sum(axis=1)
    assert fit.exact and np.all(fit.weight == 1.0)
    np.testing.assert_allclose(fit.A, A, rtol=1e-9)
    np.testing.assert_allclose(fit.B, B, rtol=1e-9)
    np.testing.assert_allclose(fit.hsum, hsum, rtol=1e-9)


def test_the_objective_read_off_the_statistics_is_the_full_objective():
    from scalenmf.models.online import statistics_objective

    rng = np.random.default_rng(2)
    X = rng.poisson(3.0, (30, 200)).astype(float)
    W, H = rng.random((30, 5)), rng.random((5, 200))
    config = NMFConfig(k=5, l1_w=0.3, l2_w=0.2, l1_h=0.1, l2_h=0.4)
    obj, rel = statistics_objective(config, float((X * X).sum()), W, H @ H.T, X @ H.T, H.sum(1))
    sq = float(((X - W @ H) ** 2).sum())
    direct = 0.5 * sq + 0.3 * W.sum() + 0.1 * (W**2).sum() + 0.1 * H.sum() + 0.2 * (H**2).sum()
    np.testing.assert_allclose(obj, direct, rtol=1e-10)
    np.testing.assert_allclose(rel, np.sqrt(sq / (X * X).sum()), rtol=1e-10)


def test_the_clipped_least_squares_start_fills_only_unsolved_columns():
    from scalenmf.models.step import _clipped_ls_start

    rng = np.random.default_rng(3)
    W = rng.random((20, 3))
    H_true = rng.random((3, 8))
    G, B = (W.T @ W)[None], (W.T @ (W @ H_true))[None]
    H0 = np.zeros((1, 3, 8))
    H0[0, :, :2] = 7.0  # already solved: kept as they are
    out = _clipped_ls_start(G, B, H0, 0.0, 0.0)
    np.testing.assert_array_equal(out[0, :, :2], 7.0)
    np.testing.assert_allclose(out[0, :, 2:], H_true[:, 2:], rtol=1e-8)
    assert (_clipped_ls_start(G, -B, np.zeros((1, 3, 8)), 0.0, 0.0) == 0).all()


def test_the_default_online_solver_keeps_the_full_batch_optimum():
    """HALS sweeps from the clipped start, exact W steps: a warm start at the optimum of the
    full-batch fit stays there (to the sweeps' accuracy)."""
    X = _catalogue()
    full = scalenmf.nmf(X, 4, max_iter=3000, tol=1e-13, seed=3)
    source = as_source(X, block_cols=40)
    config = NMFConfig(k=4, solver="hals", inner_sweeps=10)
    model = NMFModel(config, [full.W.copy()], [1.0], float((X * X).sum()))
    trace = run_online(
        model, LocalExecutor(source), max_epochs=2, tol=0, batch_cols=80, warm_start=True
    )
    np.testing.assert_allclose(model.Ws[0], full.W, rtol=1e-4, atol=1e-5 * full.W.max())
    np.testing.assert_allclose(trace.objectives[0][-1], full.loss_history[-1], rtol=1e-7)


def test_one_epoch_after_the_warm_up_comes_close_to_full_batch():
    """Within three passes (start and warm-up on a sample, one epoch, the last pass) the
    objective is near the full-batch optimum, and further epochs bring it closer."""
    X = _catalogue(n=4000)
    full = scalenmf.nmf(X, 4, max_iter=3000, tol=1e-10, seed=0)
    one = scalenmf.nmf(X, 4, solver="online", batch_size=50, max_iter=1, tol=0)
    assert one.info["online"]["passes"] <= 3.0
    assert one.info["online"]["warmup_iterations"] >= 2
    assert one.loss_history[-1] <= 1.02 * full.loss_history[-1]
    three = scalenmf.nmf(X, 4, solver="online", batch_size=50, max_iter=3, tol=0)
    assert full.loss_history[-1] * (1 - 1e-9) <= three.loss_history[-1] < one.loss_history[-1]


def test_the_epoch_budget_and_the_tolerance_stop_the_fit():
    X = _catalogue(n=1000)
    budget = scalenmf.nmf(X, 4, solver="online", batch_size=50, max_iter=3, tol=0)
    assert budget.n_iter == 3 and not budget.converged
    loose = scalenmf.nmf(X, 4, solver="online", batch_size=50, max_iter=50, tol=0.5)
    assert loose.n_iter == 2 and loose.converged
    assert len(loose.info["online"]["passes_at_epoch"]) == 2


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_out_of_core_online_fit_equals_the_in_memory_one(tmp_path, loss):
    """A Zarr store read block by block under a memory limit gives the fit of the same
    matrix in memory. The limit is set above what this process holds already (the memory
    plan counts the whole process, and a long test session grows it)."""
    import zarr

    from scalenmf.engine.memory import process_rss

    X = _catalogue(n=3000).astype(np.float32)
    path = str(tmp_path / "x.zarr")
    arr = zarr.create_array(store=path, shape=X.shape, chunks=(24, 100), dtype="float32")
    arr[...] = X
    kw = dict(loss=loss, solver="online", batch_size=100, max_iter=2, tol=0, l1_w=0.1, l2_h=0.1)
    limit = f"{(process_rss() >> 20) + 400}MB"
    disk = scalenmf.nmf(path, 4, memory_limit=limit, **kw)
    memory = scalenmf.nmf(X, 4, **kw)
    np.testing.assert_allclose(disk.W, memory.W, rtol=1e-5, atol=1e-6 * memory.W.max())
    np.testing.assert_allclose(disk.loss_history, memory.loss_history, rtol=1e-6)


def test_kl_online_keeps_the_full_batch_mu_optimum():
    """KL keeps one share of the statistics per batch, replaced when the batch is seen
    again: a warm start at the fixed point of full-batch MU stays there."""
    X = _catalogue()
    full = scalenmf.nmf(X, 4, loss="kl", max_iter=20000, tol=1e-14, seed=3)
    source = as_source(X, block_cols=40)
    config = NMFConfig(k=4, solver="mu", loss="kl", mu_steps=4000)
    model = NMFModel(config, [full.W.copy()], [1.0], float((X * X).sum()))
    trace = run_online(
        model, LocalExecutor(source), max_epochs=1, tol=0, batch_cols=80, warm_start=True
    )
    np.testing.assert_allclose(model.Ws[0], full.W, rtol=1e-3, atol=1e-4 * full.W.max())
    np.testing.assert_allclose(trace.objectives[0][-1], full.loss_history[-1], rtol=1e-6)


def test_kl_online_newton_w_step_keeps_the_full_batch_optimum():
    """The online KL fit's W step minimises the batches' second-order models of the loss:
    at the full-batch optimum their sum is its gradient and Hessian, so a warm start
    there stays there (H by coordinate descent to a tight tolerance)."""
    from scalenmf.models.online import ONLINE_KL

    X = _catalogue()
    full = scalenmf.nmf(X, 4, loss="kl", max_iter=20000, tol=1e-14, seed=3)
    source = as_source(X, block_cols=40)
    tight = {**ONLINE_KL, "inner_sweeps": 2000, "inner_tol": 1e-12}
    config = NMFConfig(k=4, solver="mu", loss="kl", **tight)
    model = NMFModel(config, [full.W.copy()], [1.0], float((X * X).sum()))
    trace = run_online(
        model, LocalExecutor(source), max_epochs=2, tol=0, batch_cols=80, warm_start=True
    )
    np.testing.assert_allclose(model.Ws[0], full.W, rtol=1e-3, atol=1e-4 * full.W.max())
    np.testing.assert_allclose(trace.objectives[0][-1], full.loss_history[-1], rtol=1e-6)


def test_kl_online_comes_close_to_the_full_batch_objective_in_few_epochs():
    """H by coordinate descent and W by the Newton step: three epochs land within 1.5 %
    of the KL objective full-batch MU reaches at convergence (0.9 % here; one MU step of
    each, the scheme before, was 274 % above it after three epochs and 91 % after ten)."""
    X = _catalogue(n=2000)
    with pytest.warns(scalenmf.ConvergenceWarning):  # MU is that slow
        full = scalenmf.nmf(X, 4, loss="kl", max_iter=5000, tol=1e-10, seed=0)
    online = scalenmf.nmf(X, 4, loss="kl", solver="online", batch_size=100, max_iter=3, tol=0)
    assert online.loss_history[-1] <= 1.015 * full.loss_history[-1]
    assert (online.W > 0).all() and (online.H >= 0).all()


def test_batches_keep_the_blocks_of_a_storage_chunk_together():
    """Blocks narrower than a chunk: the chunks come in a random order and each chunk's
    blocks one after another, every block once."""
    rng = np.random.default_rng(3)
    groups = [j // 4 for j in range(20)]  # 5 chunks of 4 blocks
    batches = block_batches([10] * 20, 20, rng, groups)
    flat = [j for b in batches for j in b]
    assert sorted(flat) == list(range(20))
    seen_chunks = [groups[b[0]] for b in batches]
    assert all(len({groups[j] for j in b}) == 1 for b in batches)
    assert sorted(seen_chunks) == sorted(g for g in range(5) for _ in range(2))
    assert [seen_chunks[i] for i in range(0, 10, 2)] == [
        seen_chunks[i + 1] for i in range(0, 10, 2)
    ]
    assert seen_chunks[::2] != sorted(seen_chunks[::2])  # a random order of chunks (seeded)


def test_kl_online_keeps_the_seen_ws_in_the_scratch_store_with_the_states(monkeypatch):
    """With the block states in a scratch store, the W each batch was solved with goes
    there too (it grows with n), and the fit is the one with everything in memory."""
    from scalenmf.engine import local
    from scalenmf.models import online

    X = _catalogue(n=1200)
    kw = dict(loss="kl", solver="online", batch_size=100, max_iter=3, tol=0, seed=2)
    memory = scalenmf.nmf(X, 4, **kw)
    seen = []
    real = online._Online._remember_W

    def spy(self, blocks):
        real(self, blocks)
        seen.append((len(self.W_seen), int(self.seen_version.max())))

    monkeypatch.setattr(online._Online, "_remember_W", spy)
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    stored = scalenmf.nmf(X, 4, memory_limit="4GB", **kw)
    assert stored.info["states_in_store"] is True
    assert seen and seen[-1][0] == 0 and seen[-1][1] >= len(seen) // 2
    np.testing.assert_array_equal(stored.W, memory.W)
    np.testing.assert_array_equal(stored.loss_history, memory.loss_history)
