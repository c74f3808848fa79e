"""Incremental refit: ``scalenmf.update`` and ``scalenmf update`` (W warm-started or frozen)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main
from scalenmf.io.results import verify_result_store
from scalenmf.models.step import NMFConfig
from scalenmf.models.update import anchor_statistics, matched_cosines
from tests.procs import BIN, ProcCluster

TRUTH = np.random.default_rng(0).gamma(0.5, 1.0, (30, 4))


def samples(n: int, seed: int) -> np.ndarray:
    """Features × samples Poisson counts of the seeded rank-4 model ``TRUTH``."""
    rng = np.random.default_rng(seed)
    return rng.poisson(TRUTH @ (rng.gamma(0.5, 1.0, (4, n)) * 20)).astype(float)


_FITS: dict[tuple[str, str], scalenmf.NMFResult] = {}


def converged(X, loss: str = "frobenius") -> scalenmf.NMFResult:
    """A fit to convergence (memoised: several tests update the same fits)."""
    key = (hashlib.sha1(np.ascontiguousarray(X).tobytes()).hexdigest(), loss)
    if key not in _FITS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            iters = 1500 if loss == "kl" else 3000
            _FITS[key] = scalenmf.nmf(X, 4, loss=loss, max_iter=iters, tol=1e-12)
    return _FITS[key]


def projected_objective(W, X, loss: str) -> float:
    return scalenmf.project(W, X, loss=loss, novelty_cosine=None, novelty_z=None).objective


@pytest.fixture(scope="module")
def old_new():
    return samples(1000, 1), samples(300, 2)


# -- the model ----------------------------------------------------------------------------


def test_hungarian_matching_pairs_permuted_factors():
    rng = np.random.default_rng(3)
    W0 = rng.gamma(0.5, 1.0, (20, 5))
    perm = np.array([3, 0, 4, 1, 2])
    W1 = W0[:, perm] * rng.uniform(0.5, 2.0, 5)  # permuted and rescaled columns
    match, cos = matched_cosines(W0, W1)
    assert list(W1[:, match].argmax(axis=0)) == list(W0.argmax(axis=0))
    np.testing.assert_array_equal(perm[match], np.arange(5))
    np.testing.assert_allclose(cos, 1.0)


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_the_old_samples_alone_leave_a_fitted_basis_in_place(loss):
    from scalenmf.models.online import w_from_statistics

    rng = np.random.default_rng(4)
    W0, H = rng.gamma(1.0, 1.0, (12, 3)), rng.gamma(1.0, 1.0, (3, 40))
    config = NMFConfig(k=3, loss=loss, solver="mu" if loss == "kl" else "als", l1_w=0.3, l2_w=0.2)
    A, B = anchor_statistics(config, W0, H)
    np.testing.assert_allclose(w_from_statistics(config, W0, A, B), W0, rtol=1e-9)


# -- the Python API -----------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_update_comes_closer_to_the_fit_of_old_and_new_samples(old_new, loss):
    X_old, X_new = old_new
    old = converged(X_old, loss)
    both = np.hstack([X_old, X_new])
    target = projected_objective(converged(both, loss).W, both, loss)
    up = scalenmf.update(old, X_new, max_iter=500, tol=1e-9)
    gap_old = projected_objective(old.W, both, loss) / target - 1
    gap_up = projected_objective(up.W, both, loss) / target - 1
    assert gap_up < 0.6 * gap_old, (gap_up, gap_old)
    assert up.W.shape == (30, 4) and up.H.shape == (4, 300)
    assert (up.W >= 0).all() and (up.H >= 0).all()
    rep = up.info["update"]
    assert rep["n_old"] == 1000 and rep["n_new"] == 300 and rep["freeze_w"] is False
    assert 0.99 < rep["min_cosine"] <= rep["mean_cosine"] <= 1.0 + 1e-12
    assert rep["match"] == [0, 1, 2, 3]  # a warm start keeps the factors in place
    assert rep["explained_variance_after"] >= rep["explained_variance_before"] - 1e-9
    np.testing.assert_allclose(
        rep["explained_variance_change"],
        rep["explained_variance_after"] - rep["explained_variance_before"],
    )
    np.testing.assert_allclose(rep["explained_variance_after"], 1 - up.relative_error**2)
    assert up.params["loss"] == loss and up.params["update"] is True


def test_forget_factor_zero_refits_on_the_new_samples_alone(old_new):
    X_old, X_new = old_new
    old = converged(X_old)
    anchored = scalenmf.update(old, X_new, max_iter=500, tol=1e-9)
    alone = scalenmf.update(old, X_new, forget_factor=0.0, max_iter=500, tol=1e-9)
    # Alone fits the new samples better, and moves further from the old basis.
    assert alone.loss_history[-1] < anchored.loss_history[-1]
    assert alone.info["update"]["min_cosine"] < anchored.info["update"]["min_cosine"]
    assert alone.info["update"]["forget_factor"] == 0.0


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_frozen_w_equals_project(old_new, loss):
    X_old, X_new = old_new
    old = converged(X_old, loss)
    frozen = scalenmf.update(old, X_new, freeze_w=True)
    proj = scalenmf.project(old, X_new)
    np.testing.assert_array_equal(frozen.W, old.W)
    np.testing.assert_allclose(frozen.H, proj.H, rtol=1e-12, atol=1e-12)
    rep = frozen.info["update"]
    np.testing.assert_allclose(rep["cosine"], 1.0)
    assert rep["explained_variance_change"] == pytest.approx(0.0, abs=1e-12)
    assert rep["explained_variance_before"] == pytest.approx(proj.explained["total_r2"])
    assert frozen.n_iter == 0


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_dense_and_sparse_updates_agree(old_new, loss):
    X_old, X_new = old_new
    old = converged(X_old, loss)
    dense = scalenmf.update(old, X_new, max_iter=20, tol=0)
    sparse = scalenmf.update(old, sp.csc_matrix(X_new), max_iter=20, tol=0)
    np.testing.assert_allclose(sparse.W, dense.W, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sparse.H, dense.H, rtol=1e-8, atol=1e-10)


def test_update_from_a_store_records_where_it_came_from(tmp_path, old_new):
    X_old, X_new = old_new
    converged(X_old).save(tmp_path / "old.zarr")
    up = scalenmf.update(tmp_path / "old.zarr", X_new, max_iter=10)
    assert up.info["update"]["from"] == str(tmp_path / "old.zarr")
    assert up.manifest["input"]["checksum"].startswith("blake2b:")
    up.save(tmp_path / "up.zarr")
    back = scalenmf.load(tmp_path / "up.zarr")
    assert back.info["update"] == json.loads(json.dumps(up.info["update"]))


def test_rows_are_aligned_by_label_and_an_online_result_is_refit_by_als(old_new):
    from scalenmf.io.matrix import as_source

    X_old, X_new = old_new
    rows = np.array([f"g{i}" for i in range(30)])
    old = scalenmf.nmf(as_source(X_old).set_labels(rows, None), 4, max_iter=300, tol=1e-9)
    perm = np.random.default_rng(5).permutation(30)
    straight = scalenmf.update(old, as_source(X_new).set_labels(rows, None), max_iter=20)
    shuffled = scalenmf.update(
        old, as_source(X_new[perm]).set_labels(rows[perm], None), max_iter=20
    )
    np.testing.assert_allclose(shuffled.W, straight.W, rtol=1e-12)
    assert list(shuffled.row_labels) == list(rows)
    online = scalenmf.nmf(X_old, 4, solver="online", batch_size=250, max_iter=3)
    up = scalenmf.update(online, X_new[:, :3], max_iter=20)  # fewer new samples than k
    assert up.params["solver"] == "als" and up.H.shape == (4, 3)


def test_api_bad_input(tmp_path, old_new):
    X_old, X_new = old_new
    old = converged(X_old)
    with pytest.raises(ValueError, match="the new data has 29 features but W has 30 rows"):
        scalenmf.update(old, X_new[:29])
    with pytest.raises(ValueError, match=r"k=3 does not match the rank of the result \(4\)"):
        scalenmf.update(old, X_new, k=3)
    with pytest.raises(FileNotFoundError, match=r"result .*missing.zarr' does not exist"):
        scalenmf.update(tmp_path / "missing.zarr", X_new)
    with pytest.raises(ValueError, match=r"forget_factor must be in \[0, 1\]"):
        scalenmf.update(old, X_new, forget_factor=1.5)
    with pytest.raises(TypeError, match="result must be an NMFResult"):
        scalenmf.update(old.W, X_new)
    with pytest.raises(ValueError, match="negative"):
        scalenmf.update(old, -X_new)


def test_lazy_names_stay_functions_after_their_modules_are_imported():
    code = (
        "import scalenmf.api.project, scalenmf.api.refit, scalenmf\n"
        "assert callable(scalenmf.project) and callable(scalenmf.update)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- the command line ---------------------------------------------------------------------


@pytest.fixture()
def stores(tmp_path, old_new):
    X_old, X_new = old_new
    scalenmf.write_matrix(tmp_path / "old.zarr", X_old, block_cols=250)
    scalenmf.write_matrix(tmp_path / "new.zarr", X_new, block_cols=100)
    scalenmf.write_matrix(tmp_path / "new_sparse.zarr", sp.csc_matrix(X_new), block_cols=100)
    scalenmf.write_matrix(tmp_path / "new29.zarr", X_new[:29], block_cols=100)
    res = CliRunner().invoke(
        main, ["fit", str(tmp_path / "old.zarr"), "-k", "4", "-o", str(tmp_path / "fit.zarr"),
               "--tol", "1e-10", "--max-iter", "1000", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return tmp_path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("new", ["new.zarr", "new_sparse.zarr"])
def test_cli_update_end_to_end(stores, new):
    out = stores / "up.zarr"
    res = cli("update", stores / "fit.zarr", stores / new, "-o", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "W moved: cosine min" in res.output and "explained variance" in res.output
    verify_result_store(out)  # complete, and the digests match
    up = scalenmf.load(out)
    ref = scalenmf.update(stores / "fit.zarr", stores / new)
    np.testing.assert_allclose(up.W, ref.W, rtol=1e-10)
    np.testing.assert_allclose(up.H, ref.H, rtol=1e-10, atol=1e-12)
    assert up.info["update"]["n_new"] == 300
    # The output exists: refused without --overwrite, replaced with it.
    res = cli("update", stores / "fit.zarr", stores / new, "-o", out, "--freeze-w")
    assert res.exit_code == 1 and "already exists" in res.output
    res = cli("update", stores / "fit.zarr", stores / new, "-o", out, "--freeze-w", "--overwrite")
    assert res.exit_code == 0, res.output
    assert "W frozen" in res.output
    frozen = scalenmf.load(out)
    np.testing.assert_array_equal(frozen.W, scalenmf.load(stores / "fit.zarr").W)
    assert frozen.info["update"]["freeze_w"] is True


def test_cli_transposed_text_input(stores, old_new):
    _, X_new = old_new
    np.savetxt(stores / "new_t.tsv", X_new.T, delimiter="\t")
    res = cli(
        "update", stores / "fit.zarr", stores / "new_t.tsv", "--transpose", "--no-header",
        "--no-row-labels", "-o", stores / "up.zarr", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    ref = scalenmf.update(stores / "fit.zarr", stores / "new.zarr")
    np.testing.assert_allclose(scalenmf.load(stores / "up.zarr").W, ref.W, rtol=1e-10)
    assert sorted(p.name for p in stores.iterdir() if p.name.startswith(".scalenmf-")) == []


def test_cli_json_report(stores):
    res = cli(
        "update", stores / "fit.zarr", stores / "new.zarr", "-o", stores / "up.zarr", "-k", 4,
        "--json", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["k"] == 4 and len(report["cosine"]) == 4 and report["match"] == [0, 1, 2, 3]
    assert {"explained_variance_before", "explained_variance_after", "min_cosine"} <= set(report)
    res = cli(
        "update", stores / "fit.zarr", stores / "new.zarr", "-o", stores / "up2.zarr",
        "--json", stores / "report.json", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0 and "W moved" in res.output
    assert json.loads((stores / "report.json").read_text())["n_new"] == 300


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{d}/fit.zarr", "{d}/new29.zarr"], "the new data has 29 features but W has 30 rows"),
        (["{d}/missing.zarr", "{d}/new.zarr"], "result '{d}/missing.zarr' does not exist"),
        (["{d}/fit.zarr", "{d}/missing.zarr"], "input '{d}/missing.zarr' does not exist"),
        (["{d}/fit.zarr", "{d}/new.zarr", "-k", "3"], "k=3 does not match the rank"),
        (["{d}/new.zarr", "{d}/new.zarr"], "is not a scalenmf result store"),
        (["{d}/fit.zarr", "{d}/new.zarr", "--forget-factor", "2"], "--forget-factor"),
    ],
    ids=["features", "missing-result", "missing-input", "k", "not-a-result", "forget"],
)
def test_cli_bad_input_is_one_line_and_exit_1(stores, args, message):
    filled = [a.format(d=stores) for a in args]
    res = cli("update", *filled, "-o", stores / "bad.zarr", "--no-progress")
    assert res.exit_code != 0 and res.exit_code in (1, 2), res.output
    if "forget" not in message:
        assert res.exit_code == 1
        errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and message.format(d=stores) in errors[0], res.output
    else:
        assert message in res.output
    assert "Traceback" not in res.output
    assert not (stores / "bad.zarr").exists()


# -- a real cluster -----------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_update_on_scheduler_and_worker_processes(stores):
    cluster = ProcCluster(stores / "procs").start(2)
    try:
        for new in ("new.zarr", "new_sparse.zarr"):
            out = stores / f"remote-{new}"
            cmd = [str(BIN / "scalenmf"), "update", str(stores / "fit.zarr"), str(stores / new)]
            cmd += ["-o", str(out), "--scheduler", cluster.address, "--no-progress"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
            assert proc.returncode == 0, proc.stderr + proc.stdout
            assert "W moved" in proc.stdout
            remote = scalenmf.load(out)
            assert remote.info["executor"] == "dask" and remote.info["n_workers"] == 2
            local = scalenmf.update(stores / "fit.zarr", stores / new)
            np.testing.assert_allclose(remote.W, local.W, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(remote.H, local.H, rtol=1e-8, atol=1e-10)
            assert remote.info["update"]["cosine"] == pytest.approx(
                local.info["update"]["cosine"], abs=1e-10
            )
        frozen = scalenmf.update(
            stores / "fit.zarr", stores / "new.zarr", freeze_w=True, scheduler=cluster.address
        )
        np.testing.assert_allclose(
            frozen.H, scalenmf.project(stores / "fit.zarr", stores / "new.zarr").H, rtol=1e-10
        )
    finally:
        cluster.stop()
