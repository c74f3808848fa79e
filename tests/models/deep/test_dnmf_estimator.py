"""DNMF estimator: fitting, data-parallel parity, checkpoints, save/load, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from scalenmf.io import write_matrix  # noqa: E402
from scalenmf.models.deep import DNMF  # noqa: E402


def _problem(seed: int = 0, m: int = 20, k: int = 3, n: int = 90):
    rng = np.random.default_rng(seed)
    W = rng.random((m, k))
    W /= W.sum(axis=0)
    H = rng.gamma(1.0, 40.0, (k, n))
    V = rng.poisson(W @ H).astype(np.float64)
    return V, H, W


def test_supervised_training_lowers_the_loss_and_beats_its_start():
    V, H, _ = _problem()
    start = DNMF(3, mode="supervised", epochs=0, dtype="float64").fit(V, H)
    model = DNMF(3, mode="supervised", epochs=60, lr=1e-2, dtype="float64").fit(V, H)
    h0 = ((start.transform(V) - H) ** 2).sum(axis=0).mean()
    h1 = ((model.transform(V) - H) ** 2).sum(axis=0).mean()
    assert model.loss_history_[-1] < model.loss_history_[0]
    assert h1 < h0
    assert model.W_ is None and min(model.lambdas_) >= 0


def test_unsupervised_training_fits_a_basis():
    V, _, _ = _problem(1)
    model = DNMF(3, mode="unsupervised", epochs=40, dtype="float64", seed=2).fit(V)
    assert model.W_ is not None and model.W_.shape == (20, 3) and model.W_.min() >= 0
    assert model.loss_history_[-1] < model.loss_history_[0]
    assert model.lambdas_ == (0.0, 0.0)  # fixed, not learned
    err = model.reconstruction_error(V)
    assert err < ((V - V.mean(axis=1, keepdims=True)) ** 2).sum() / V.shape[1]


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_keep_best_ends_with_the_lowest_training_loss(mode):
    """Full batch: the kept parameters (and basis) reproduce the minimum of the history."""
    V, H, _ = _problem(8)
    Hk = H if mode == "supervised" else None
    # a large learning rate makes the loss bounce, so the best epoch is not the last
    kw = {"mode": mode, "epochs": 40, "lr": 0.05, "dtype": "float64", "seed": 3}
    best = DNMF(3, **kw).fit(V, Hk)
    last = DNMF(3, keep_best=False, **kw).fit(V, Hk)
    hist = np.asarray(best.loss_history_)
    np.testing.assert_array_equal(hist, last.loss_history_)
    assert best.best_epoch_ == int(np.argmin(hist)) and last.best_epoch_ == len(hist) - 1
    assert best.best_epoch_ < len(hist) - 1, "the loss did not bounce: the test is vacuous"
    Hh = best.transform(V)
    if mode == "supervised":
        again = ((Hh - H) ** 2).sum(axis=0).mean()
    else:
        again = 0.5 * ((V - best.W_ @ Hh) ** 2).sum(axis=0).mean()
    assert again == pytest.approx(hist.min(), rel=1e-9)
    assert not np.allclose(Hh, last.transform(V))


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_sparse_and_zarr_input_match_dense(tmp_path, mode):
    V, H, _ = _problem(2)
    V[:, ::4] = 0
    kw = {"mode": mode, "epochs": 8, "dtype": "float64", "block_cols": 16}
    Hk = H if mode == "supervised" else None
    store = tmp_path / "v.zarr"
    write_matrix(store, V, block_cols=16)
    outs = [DNMF(3, **kw).fit(obj, Hk).transform(V) for obj in (V, sp.csr_matrix(V), str(store))]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-10)
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-10)


def test_two_gloo_processes_match_one_process():
    """Full batch: the two ranks' shards together are the one process's batch."""
    V, H, _ = _problem(3, n=70)
    for mode in ("unsupervised", "supervised"):
        kw = {"mode": mode, "epochs": 6, "dtype": "float64", "block_cols": 16, "seed": 4}
        Hk = H if mode == "supervised" else None
        one = DNMF(3, **kw).fit(V, Hk)
        two = DNMF(3, nproc=2, **kw).fit(V, Hk)
        np.testing.assert_allclose(two.loss_history_, one.loss_history_, rtol=1e-9)
        np.testing.assert_allclose(two.transform(V), one.transform(V), rtol=1e-8, atol=1e-10)
        if mode == "unsupervised":
            np.testing.assert_allclose(two.W_, one.W_, rtol=1e-8, atol=1e-12)
        # the parity is not vacuous: training moved the model
        assert not np.allclose(one.loss_history_[0], one.loss_history_[-1])


@pytest.mark.parametrize("batch_size", [None, 20])
def test_checkpoint_resume_gives_the_uninterrupted_result(tmp_path, batch_size):
    V, _H, _ = _problem(4)
    ck = tmp_path / "ck.pt"
    kw = {
        "mode": "unsupervised",
        "dtype": "float64",
        "batch_size": batch_size,
        "block_cols": 25,
        "seed": 1,
    }
    straight = DNMF(3, epochs=5, **kw).fit(V)
    DNMF(3, epochs=2, checkpoint_every=1, checkpoint_path=str(ck), **kw).fit(V)
    assert ck.exists()
    resumed = DNMF(3, epochs=5, checkpoint_path=str(ck), resume=True, **kw).fit(V)
    np.testing.assert_allclose(resumed.loss_history_, straight.loss_history_, rtol=1e-12)
    np.testing.assert_allclose(resumed.transform(V), straight.transform(V), rtol=1e-12)
    with pytest.raises(ValueError, match="other hyper-parameters"):
        DNMF(3, epochs=5, checkpoint_path=str(ck), resume=True, **{**kw, "seed": 9}).fit(V)


def test_mid_epoch_checkpoint_resume(tmp_path):
    V, H, _ = _problem(5)
    ck = tmp_path / "ck.pt"
    kw = {"mode": "supervised", "dtype": "float64", "batch_size": 30, "block_cols": 30}
    straight = DNMF(3, epochs=3, **kw).fit(V, H)
    # 3 steps per epoch; a checkpoint every 4 steps lands inside epoch 2
    DNMF(3, epochs=2, checkpoint_every=4, checkpoint_path=str(ck), **kw).fit(V, H)
    payload = torch.load(ck, weights_only=True)
    assert payload["step"] == 4 and payload["step_in_epoch"] == 1
    resumed = DNMF(3, epochs=3, checkpoint_path=str(ck), resume=True, **kw).fit(V, H)
    np.testing.assert_allclose(resumed.transform(V), straight.transform(V), rtol=1e-12)


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_save_load_round_trip(tmp_path, mode, loss):
    V, H, _ = _problem(6)
    model = DNMF(3, mode=mode, loss=loss, epochs=5, lambda1=0.5, lambda2=0.25).fit(
        V, H if mode == "supervised" else None
    )
    model.save(tmp_path / "m")
    back = DNMF.load(tmp_path / "m")
    np.testing.assert_array_equal(back.transform(V), model.transform(V))
    assert back.lambdas_ == model.lambdas_
    assert back.loss_history_ == model.loss_history_
    assert back.get_params() == {**model.get_params(), "checkpoint_path": None, "resume": False}
    if mode == "unsupervised":
        np.testing.assert_array_equal(back.W_, model.W_)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["params"]["mode"] == mode
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "m")


def test_load_rejects_what_is_not_a_model(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="not a saved DNMF model"):
        DNMF.load(tmp_path / "x")


@pytest.mark.parametrize(
    ("kwargs", "fit_args", "match"),
    [
        ({"n_components": 0}, "unsup", "n_components"),
        ({"n_components": 30, "mode": "unsupervised"}, "unsup", "out of range"),
        ({"n_components": 3, "mode": "bogus"}, "unsup", "mode"),
        (
            {"n_components": 3, "mode": "unsupervised", "learn_lambdas": True},
            "unsup",
            "learn_lambdas",
        ),
        ({"n_components": 3, "lambda1": -1.0}, "sup", "lambda1"),
        ({"n_components": 3}, "sup-noH", "needs the known coefficients"),
        ({"n_components": 3}, "sup-badH", "shape"),
        ({"n_components": 3, "mode": "unsupervised"}, "neg", "negative"),
        ({"n_components": 3, "mode": "unsupervised"}, "nan", "NaN"),
    ],
)
def test_bad_input_is_rejected_clearly(kwargs, fit_args, match):
    V, H, _ = _problem(7)
    args: tuple
    if fit_args == "sup":
        args = (V, H)
    elif fit_args == "sup-noH":
        args = (V,)
    elif fit_args == "sup-badH":
        args = (V, H[:, :-1])
    elif fit_args == "neg":
        V[2, 3] = -1
        args = (V,)
    elif fit_args == "nan":
        V[2, 3] = np.nan
        args = (V,)
    else:
        args = (V,)
    with pytest.raises(ValueError, match=match):
        DNMF(**{"epochs": 1, **kwargs}).fit(*args)


def test_transform_checks_features():
    V, H, _ = _problem(8)
    model = DNMF(3, epochs=1).fit(V, H)
    with pytest.raises(ValueError, match="features"):
        model.transform(V[:-1])
    with pytest.raises(RuntimeError, match="not fitted"):
        DNMF(3).transform(V)


TORCHRUN_SCRIPT = """
import os
import sys
import numpy as np
import torch.distributed as dist
from scalenmf.models.deep import DNMF
calls = []
real_all_reduce = dist.all_reduce
def counting_all_reduce(t, *a, **kw):
    calls.append(dist.get_world_size())
    return real_all_reduce(t, *a, **kw)
dist.all_reduce = counting_all_reduce
V = np.load(sys.argv[1])
model = DNMF(3, mode="unsupervised", epochs=4, dtype="float64", block_cols=16, seed=4).fit(V)
if dist.is_initialized():
    raise SystemExit("fit() must leave the process group it created")
with open(sys.argv[2] + f".rank{os.environ['RANK']}", "w") as fh:
    fh.write(f"{len(calls)} {min(calls, default=0)}")
if os.environ.get("RANK") == "0":
    model.save(sys.argv[2])
"""


@pytest.mark.timeout(180)
def test_torchrun_launch_matches_one_process(tmp_path):
    """Two processes started by ``torchrun`` (full batch, split by blocks) train as one."""
    import subprocess
    import sys
    from pathlib import Path

    from scalenmf.models.deep.train import free_port

    V, _, _ = _problem(9, n=80)
    np.save(tmp_path / "v.npy", V)
    (tmp_path / "job.py").write_text(TORCHRUN_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun),
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        str(tmp_path / "job.py"),
        str(tmp_path / "v.npy"),
        str(tmp_path / "model"),
    ]
    env = {"OMP_NUM_THREADS": "1", **__import__("os").environ}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):  # both ranks really took part in collectives of a 2-process group
        n_calls, world = map(int, (tmp_path / f"model.rank{rank}").read_text().split())
        assert n_calls > 0 and world == 2
    two = DNMF.load(tmp_path / "model")
    one = DNMF(3, mode="unsupervised", epochs=4, dtype="float64", block_cols=16, seed=4).fit(V)
    np.testing.assert_allclose(two.loss_history_, one.loss_history_, rtol=1e-9)
    np.testing.assert_allclose(two.W_, one.W_, rtol=1e-8, atol=1e-12)
