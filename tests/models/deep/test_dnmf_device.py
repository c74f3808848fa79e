"""DNMF on a device: the ``device`` option of training and inference.

Without a GPU: ``"cpu"`` keeps the results of the CPU code exactly, ``"auto"`` runs on the
CPU, ``"cuda"`` is a clear error, and models, checkpoints and Dask workers carry the option.
With a GPU (skipped elsewhere): a GPU fit equals the CPU fit to float tolerance and every
tensor of the training loop lives on the GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

torch = pytest.importorskip("torch")

from scalenmf.models.deep import DNMF  # noqa: E402
from scalenmf.models.deep import estimator as est_mod  # noqa: E402
from scalenmf.models.deep.inference import model_from_state, model_state  # noqa: E402
from scalenmf.models.deep.train import multi_process_device  # noqa: E402

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
no_gpu = pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without a GPU")


def _problem(seed: int = 0, m: int = 20, k: int = 3, n: int = 90):
    rng = np.random.default_rng(seed)
    W = rng.random((m, k))
    W /= W.sum(axis=0)
    H = rng.gamma(1.0, 40.0, (k, n))
    V = rng.poisson(W @ H).astype(np.float64)
    return V, H


#: Loss histories and ``transform(V).sum()`` written by the CPU code before the device
#: option existed (same problem and settings as below): the device="cpu" path must keep
#: them. Exact on the machine they were recorded on; the tolerance only allows another
#: BLAS's order of summation.
GOLDEN = {
    ("supervised", "frobenius", None, "mu"): (
        [
            638.5880931798595,
            689.5348844673858,
            604.5262876672159,
            598.6283690081292,
            593.856735360987,
            573.0950001386266,
            542.0280093390058,
            528.9545616446223,
        ],
        12427.645268232583,
    ),
    ("unsupervised", "frobenius", 25, "mu"): (
        [
            176.93313371667207,
            143.54147433474537,
            140.0992630842796,
            137.89766592048457,
            134.49718522450829,
            130.69215841501165,
            129.00248572176864,
            125.60419118642447,
        ],
        8248.461426336577,
    ),
    ("unsupervised", "kl", None, "constant"): (
        [
            89.32930041438674,
            41.745928609907146,
            41.786720388457816,
            41.77144885836118,
            41.722218292831954,
            41.65047885243924,
            41.56290641631572,
            41.46375738666653,
        ],
        4812.540399718776,
    ),
}


def _golden_fit(key, **extra):
    mode, loss, batch_size, init = key
    V, H = _problem()
    kw = {
        "mode": mode,
        "loss": loss,
        "dtype": "float64",
        "batch_size": batch_size,
        "epochs": 8,
        "init": init,
        "block_cols": 30,
        "seed": 3,
        "lambda1": 0.5 if mode == "unsupervised" else 0.0,
    }
    return DNMF(3, **kw, **extra).fit(V, H if mode == "supervised" else None), V


@pytest.mark.parametrize("key", list(GOLDEN))
def test_cpu_device_keeps_the_cpu_results(key):
    history, h_sum = GOLDEN[key]
    cpu, V = _golden_fit(key, device="cpu")
    default, _ = _golden_fit(key)
    np.testing.assert_allclose(cpu.loss_history_, history, rtol=1e-10)
    np.testing.assert_allclose(cpu.transform(V, batch_size=40).sum(), h_sum, rtol=1e-10)
    # the default is the CPU, bit for bit
    assert cpu.loss_history_ == default.loss_history_
    np.testing.assert_array_equal(cpu.transform(V), default.transform(V))
    assert cpu.get_params()["device"] == "cpu" == default.get_params()["device"]


@no_gpu
def test_auto_runs_on_the_cpu_without_a_gpu(monkeypatch):
    seen = []
    real_train = est_mod.train

    def recording_train(model, dataset, config, optimizer, state, **kw):
        seen.append(model.B.device)
        return real_train(model, dataset, config, optimizer, state, **kw)

    monkeypatch.setattr(est_mod, "train", recording_train)
    key = ("unsupervised", "frobenius", 25, "mu")
    auto, V = _golden_fit(key, device="auto")
    cpu, _ = _golden_fit(key, device="cpu")
    assert seen == [torch.device("cpu")] * 2
    assert auto.loss_history_ == cpu.loss_history_
    np.testing.assert_array_equal(auto.W_, cpu.W_)
    np.testing.assert_array_equal(auto.transform(V), cpu.transform(V))
    assert auto._model_on_device() is auto.model_  # no copy for the CPU


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    V, H = _problem()
    with pytest.raises(ValueError, match=r"device='cuda'.*no CUDA device"):
        DNMF(3, epochs=1, device="cuda").fit(V, H)
    model = DNMF(3, epochs=1).fit(V, H)
    model.device = "cuda"
    with pytest.raises(ValueError, match="no CUDA device"):
        model.transform(V)
    out = tmp_path / "h.zarr"
    with pytest.raises(ValueError, match="no CUDA device"):
        model.transform_to_zarr(V, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # a model saved with device="cuda" still loads here; device= chooses where it runs
    model.save(tmp_path / "m")
    back = DNMF.load(tmp_path / "m")
    assert back.device == "cuda"
    with pytest.raises(ValueError, match="no CUDA device"):
        back.transform(V)
    model.device = "cpu"
    np.testing.assert_array_equal(
        DNMF.load(tmp_path / "m", device="cpu").transform(V), model.transform(V)
    )
    # a Dask worker resolves the option itself, and refuses CUDA it does not have
    with pytest.raises(ValueError, match="no CUDA device"):
        model_from_state(model_state(model.model_, "cuda"))


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:x", "", None, 0])
def test_bad_device_names_are_rejected(device):
    V, H = _problem()
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N' or 'auto'"):
        DNMF(3, epochs=1, device=device).fit(V, H)


def test_several_processes_train_on_the_cpu_and_refuse_cuda():
    V, H = _problem()
    # refused before any process is started, GPU or not
    with pytest.raises(ValueError, match=r"2 training processes is not supported.*nproc=1"):
        DNMF(3, epochs=1, nproc=2, device="cuda").fit(V, H)
    assert multi_process_device("auto", 4) == torch.device("cpu")
    assert multi_process_device("cpu", 2) == torch.device("cpu")
    with pytest.raises(ValueError, match="not supported"):
        multi_process_device("cuda:1", 2)


def test_device_is_saved_with_the_model_and_the_checkpoint(tmp_path):
    V, _ = _problem(4)
    ck = tmp_path / "ck.pt"
    kw = {"mode": "unsupervised", "dtype": "float64", "batch_size": 30, "block_cols": 30}
    straight = DNMF(3, epochs=4, device="auto", **kw).fit(V)
    DNMF(3, epochs=2, checkpoint_every=1, checkpoint_path=str(ck), device="auto", **kw).fit(V)
    payload = torch.load(ck, weights_only=True)
    want = "cuda" if HAS_GPU else "cpu"
    assert payload["extra"]["device"].startswith(want)
    # checkpoints are device independent: every tensor was written from the CPU
    tensors = [payload["W"], *payload["stats"], *payload["model"].values()]
    tensors += [t for st in payload["optimizer"]["state"].values() for t in st.values()]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    # resuming on another device option is allowed (not part of the fingerprint)
    resumed = DNMF(3, epochs=4, checkpoint_path=str(ck), resume=True, device="cpu", **kw).fit(V)
    np.testing.assert_allclose(resumed.loss_history_, straight.loss_history_, rtol=1e-6)
    straight.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["params"]["device"] == "auto"
    assert DNMF.load(tmp_path / "m").device == "auto"
    assert DNMF.load(tmp_path / "m", device="cpu").device == "cpu"


def test_dask_workers_resolve_auto_for_themselves(tmp_path):
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(3)
    V = rng.poisson(5.0, (12, 70)).astype(np.float64)
    model = DNMF(2, mode="unsupervised", epochs=3, dtype="float64", device="auto").fit(V)
    state = model_state(model.model_, "auto")
    assert state["device"] == "auto"
    assert all(isinstance(w, np.ndarray) for w in state["weights"].values())
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        seen = client.run(lambda: str(model_from_state(state).B.device))
        out = model.transform_to_zarr(V, tmp_path / "h.zarr", scheduler=client)
    want = "cuda:0" if HAS_GPU else "cpu"
    assert sorted(seen.values()) == [want, want]
    H = zarr.open_group(out, mode="r")["H"][:]
    np.testing.assert_allclose(H, model.transform(V), rtol=1e-6 if HAS_GPU else 1e-12)


# ----------------------------------------------------------------------------- on a GPU


def _fit_pair(mode, loss, batch_size, dtype="float64", epochs=10, **extra):
    V, H = _problem(2)
    kw = {
        "mode": mode,
        "loss": loss,
        "dtype": dtype,
        "batch_size": batch_size,
        "epochs": epochs,
        "block_cols": 30,
        "seed": 5,
        "lambda1": 0.5 if mode == "unsupervised" else 0.0,
        **extra,
    }
    Hk = H if mode == "supervised" else None
    return DNMF(3, device="cpu", **kw).fit(V, Hk), DNMF(3, device="cuda", **kw).fit(V, Hk), V


@needs_gpu
@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
@pytest.mark.parametrize("loss", ["frobenius", "kl"])
@pytest.mark.parametrize("batch_size", [None, 25])
def test_gpu_fit_matches_the_cpu_fit(mode, loss, batch_size):
    cpu, gpu, V = _fit_pair(mode, loss, batch_size)
    np.testing.assert_allclose(gpu.loss_history_, cpu.loss_history_, rtol=1e-6)
    np.testing.assert_allclose(gpu.lambdas_, cpu.lambdas_, rtol=1e-6, atol=1e-9)
    H_gpu, H_cpu = gpu.transform(V), cpu.transform(V)
    assert gpu._model_on_device().B.device.type == "cuda"
    assert gpu.model_.B.device.type == "cpu"  # the fitted model stays device independent
    np.testing.assert_allclose(H_gpu, H_cpu, rtol=1e-6, atol=1e-8 * np.abs(H_cpu).max())
    if mode == "unsupervised":
        np.testing.assert_allclose(gpu.W_, cpu.W_, rtol=1e-6, atol=1e-9)
    # the comparison is not vacuous: training moved the model
    assert cpu.loss_history_[0] != cpu.loss_history_[-1]


@needs_gpu
def test_gpu_float32_fit_matches_the_cpu_fit():
    cpu, gpu, V = _fit_pair("supervised", "frobenius", None, dtype="float32")
    np.testing.assert_allclose(gpu.loss_history_, cpu.loss_history_, rtol=1e-3)
    H_cpu = cpu.transform(V)
    np.testing.assert_allclose(gpu.transform(V), H_cpu, rtol=1e-3, atol=1e-4 * H_cpu.max())


@needs_gpu
@pytest.mark.parametrize("batch_size", [None, 25])
def test_gpu_training_keeps_every_tensor_on_the_gpu(monkeypatch, batch_size):
    seen = {}
    real_train = est_mod.train

    def recording_train(model, dataset, config, optimizer, state, **kw):
        state = real_train(model, dataset, config, optimizer, state, **kw)
        seen["model"] = {t.device.type for t in model.parameters()}
        seen["W"] = state.W.device.type
        seen["stats"] = {t.device.type for t in state.stats}
        seen["adam"] = {
            t.device.type for st in optimizer.state.values() for n, t in st.items() if n != "step"
        }
        return state

    monkeypatch.setattr(est_mod, "train", recording_train)
    V, _ = _problem(2)
    DNMF(3, mode="unsupervised", epochs=3, batch_size=batch_size, device="cuda").fit(V)
    assert seen == {"model": {"cuda"}, "W": "cuda", "stats": {"cuda"}, "adam": {"cuda"}}


@needs_gpu
def test_gpu_checkpoint_resumes_on_the_cpu(tmp_path):
    V, _ = _problem(4)
    ck = tmp_path / "ck.pt"
    kw = {"mode": "unsupervised", "dtype": "float64", "batch_size": 30, "block_cols": 30}
    straight = DNMF(3, epochs=5, device="cpu", **kw).fit(V)
    DNMF(3, epochs=2, checkpoint_every=1, checkpoint_path=str(ck), device="cuda", **kw).fit(V)
    payload = torch.load(ck, weights_only=True)  # no map_location: CPU tensors only
    assert payload["W"].device.type == "cpu" and payload["extra"]["device"].startswith("cuda")
    resumed = DNMF(3, epochs=5, checkpoint_path=str(ck), resume=True, device="cpu", **kw).fit(V)
    np.testing.assert_allclose(resumed.loss_history_, straight.loss_history_, rtol=1e-6)
    back_on_gpu = DNMF(3, epochs=5, checkpoint_path=str(ck), resume=True, device="cuda", **kw)
    np.testing.assert_allclose(back_on_gpu.fit(V).loss_history_, straight.loss_history_, rtol=1e-6)


@needs_gpu
def test_gpu_transform_to_zarr_matches_the_cpu(tmp_path):
    V, _ = _problem(6)
    model = DNMF(3, mode="unsupervised", epochs=4, dtype="float64").fit(V)
    want = model.transform(V)
    model.device = "cuda"
    out = model.transform_to_zarr(V, tmp_path / "h.zarr", batch_size=17)
    np.testing.assert_allclose(zarr.open_group(out, mode="r")["H"][:], want, rtol=1e-9)
    np.testing.assert_allclose(model.transform(V, batch_size=17), want, rtol=1e-9)
