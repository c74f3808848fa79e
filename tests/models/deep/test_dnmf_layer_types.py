"""The relu layer types (projected gradient, HALS) and the learned least-squares start:
equal to the iteration they unroll before training, non-negative after every layer,
trained supervised and unsupervised, stored and read back with their type."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from scalenmf.cli.dnmf import dnmf  # noqa: E402
from scalenmf.io import write_matrix  # noqa: E402
from scalenmf.kernels import nnls_cd  # noqa: E402
from scalenmf.models.deep import DNMF, UnrolledNMF  # noqa: E402
from scalenmf.models.deep.inference import read_result_attrs  # noqa: E402
from scalenmf.models.deep.layers import fista_momenta  # noqa: E402


def _problem(seed: int = 0, m: int = 20, k: int = 4, n: int = 60):
    rng = np.random.default_rng(seed)
    W = rng.random((m, k))
    W /= W.sum(axis=0)
    H = rng.gamma(0.7, 40.0, (k, n))
    V = rng.poisson(W @ H).astype(np.float64)
    return V, H, W


def _lsq_start(W: np.ndarray, V: np.ndarray, lam1: float, lam2: float) -> np.ndarray:
    """relu((WᵀW + λ2 I)⁺ (WᵀV − λ1)): the clipped regularized least-squares projection."""
    G = W.T @ W + lam2 * np.eye(W.shape[1])
    return np.maximum(np.linalg.pinv(G) @ (W.T @ V - lam1), 0.0)


def _numpy_fista(W, V, L, lam1, lam2, start="lsq"):
    """L steps of accelerated projected gradient (FISTA) for the regularized NNLS."""
    G = W.T @ W + lam2 * np.eye(W.shape[1])
    b = W.T @ V - lam1
    step = 1.0 / np.linalg.eigvalsh(G).max()
    H = _lsq_start(W, V, lam1, lam2) if start == "lsq" else np.ones((W.shape[1], V.shape[1]))
    prev, t = H, 1.0
    for _ in range(L):
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        Y = H + (t - 1) / t_next * (H - prev)
        prev, H = H, np.maximum(Y - step * (G @ Y - b), 0.0)
        t = t_next
    return H


def _net(layer, W, L, lams=(0.0, 0.0), **kw):
    m, k = W.shape
    net = UnrolledNMF(m, k, L, "frobenius", *lams, dtype=torch.float64, layer=layer, **kw)
    net.init_from_w(torch.from_numpy(W))
    return net


@pytest.mark.parametrize("lams", [(0.0, 0.0), (3.0, 0.05)])
@pytest.mark.parametrize("start", ["lsq", "ones"])
def test_untrained_pgd_network_is_exactly_fista(lams, start):
    V, _, W = _problem(1)
    L = 9
    with torch.no_grad():
        out = _net("pgd", W, L, lams, start=start)(torch.from_numpy(V)).numpy()
    ref = _numpy_fista(W, V, L, *lams, start=start)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # not vacuous: the clipped start is not the solution; from ones, a step fewer differs
    assert np.abs(_lsq_start(W, V, *lams) - ref).max() > 1e-3
    if start == "ones":
        assert np.abs(_numpy_fista(W, V, L - 1, *lams, start=start) - ref).max() > 1e-3


@pytest.mark.parametrize("lams", [(0.0, 0.0), (3.0, 0.05)])
@pytest.mark.parametrize("start", ["lsq", "ones"])
def test_untrained_hals_network_is_exactly_the_kernels_hals(lams, start):
    V, _, W = _problem(2)
    L = 6
    with torch.no_grad():
        out = _net("hals", W, L, lams, start=start)(torch.from_numpy(V)).numpy()
    X0 = _lsq_start(W, V, *lams) if start == "lsq" else np.ones((W.shape[1], V.shape[1]))
    ref, _ = nnls_cd(
        W.T @ W, W.T @ V, X0, l1=lams[0], l2=lams[1], max_sweeps=L, tol=0.0
    )  # exactly L sweeps
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    ref_short, _ = nnls_cd(W.T @ W, W.T @ V, X0, l1=lams[0], l2=lams[1], max_sweeps=1, tol=0.0)
    assert np.abs(ref_short - ref).max() > 1e-3


@pytest.mark.parametrize("layer", ["pgd", "hals"])
def test_forward_with_and_without_autograd_agree_and_stay_nonnegative(layer):
    """The training path (autograd, no in-place) and the inference path give the same
    output, and every layer's output is >= 0 even with perturbed (negative) matrices."""
    V, _, W = _problem(3)
    net = _net(layer, W, 5, (0.2, 0.3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (net.A, net.B, net.P):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * p.abs().mean())
    Vt = torch.from_numpy(V)
    with torch.no_grad():
        fast = net(Vt)
    slow = net(Vt)
    torch.testing.assert_close(slow.detach(), fast, rtol=1e-10, atol=1e-10)
    assert bool((net.A < 0).any()), "the perturbation left no negative entry"
    with torch.no_grad():
        H, prev = net.initial(Vt), None
        assert float(H.min()) >= 0
        for l in range(net.n_layers):
            H, prev = net.layer(l, Vt, H, prev), H
            assert float(H.min()) >= 0.0, l
        torch.testing.assert_close(H, fast, rtol=1e-10, atol=1e-10)


def test_fista_momenta_and_clamp():
    beta = fista_momenta(4).numpy()
    assert beta[0] == 0.0 and np.all(np.diff(beta) > 0) and beta[-1] < 1
    _, _, W = _problem(4)
    net = _net("pgd", W, 3)
    with torch.no_grad():
        net.step.fill_(-1.0)
        net.momentum.fill_(2.0)
        net.A.fill_(-5.0)
    net.clamp_()
    assert float(net.step.detach().min()) == 0.0
    assert float(net.momentum.detach().max()) == 1.0
    assert float(net.A.detach().max()) == -5.0  # matrices are free (LISTA)


@pytest.mark.parametrize("layer", ["pgd", "hals"])
@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_training_can_only_help_on_the_training_data(layer, mode):
    V, H, _ = _problem(5)
    Hk = H if mode == "supervised" else None
    kw = {"mode": mode, "layer": layer, "dtype": "float64", "seed": 1, "n_layers": 4}
    start = DNMF(4, epochs=0, **kw).fit(V, Hk)
    model = DNMF(4, epochs=25, lr=3e-5, **kw).fit(V, Hk)
    hist = model.loss_history_
    assert min(hist) < hist[0], "training never improved: the test is vacuous"
    Hs, Hm = start.transform(V), model.transform(V)
    assert Hm.min() >= 0
    if mode == "supervised":
        before = ((Hs - H) ** 2).sum(axis=0).mean()
        after = ((Hm - H) ** 2).sum(axis=0).mean()
        assert after <= before
        assert after == pytest.approx(min(hist), rel=1e-9)  # keep_best kept the best epoch
    else:
        assert model.W_ is not None and model.W_.min() >= 0
        after = 0.5 * ((V - model.W_ @ Hm) ** 2).sum(axis=0).mean()
        assert after == pytest.approx(min(hist), rel=1e-9)
        assert after <= hist[0]


def test_mini_batches_and_two_processes_train_the_relu_layers():
    V, H, _ = _problem(6, n=48)
    kw = {"mode": "supervised", "layer": "hals", "dtype": "float64", "seed": 2, "epochs": 3}
    one = DNMF(4, block_cols=12, **kw).fit(V, H)
    two = DNMF(4, block_cols=12, nproc=2, **kw).fit(V, H)
    np.testing.assert_allclose(two.loss_history_, one.loss_history_, rtol=1e-9)
    np.testing.assert_allclose(two.transform(V), one.transform(V), rtol=1e-8, atol=1e-10)
    mb = DNMF(4, batch_size=16, block_cols=12, **{**kw, "layer": "pgd"}).fit(V, H)
    assert len(mb.loss_history_) == 3 and np.all(np.isfinite(mb.loss_history_))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": "pgd", "loss": "kl", "mode": "unsupervised"}, "supports only loss='frobenius'"),
        ({"layer": "hals", "init": "constant"}, "init='constant'"),
        ({"layer": "mu", "start": "lsq"}, "needs start='ones'"),
        ({"layer": "lista"}, "layer must be one of"),
        ({"layer": "pgd", "start": "zeros"}, "start must be one of"),
    ],
)
def test_unsupported_combinations_fail_in_one_line(kwargs, match):
    V, H, _ = _problem(7)
    Hk = H if kwargs.get("mode", "supervised") == "supervised" else None
    with pytest.raises(ValueError, match=match) as err:
        DNMF(4, epochs=1, **kwargs).fit(V, Hk)
    assert "\n" not in str(err.value)


def test_layer_type_is_saved_and_old_models_read_as_mu(tmp_path):
    V, H, _ = _problem(8)
    model = DNMF(4, epochs=2, layer="pgd", dtype="float64").fit(V, H)
    model.save(tmp_path / "m")
    back = DNMF.load(tmp_path / "m")
    assert back.layer == "pgd" and back.model_.layer_type == "pgd" and back.model_.start == "lsq"
    np.testing.assert_array_equal(back.transform(V), model.transform(V))
    # a model saved before the layer types existed has neither key: it is an MU model
    mu = DNMF(4, epochs=2, dtype="float64").fit(V, H)
    mu.save(tmp_path / "old")
    cfg_path = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["params"]["layer"], cfg["params"]["start"]
    cfg_path.write_text(json.dumps(cfg))
    old = DNMF.load(tmp_path / "old")
    assert old.layer == "mu" and old.model_.start == "ones"
    np.testing.assert_array_equal(old.transform(V), mu.transform(V))


def test_result_store_records_the_layer_and_old_stores_read_as_mu(tmp_path):
    import zarr

    V, H, _ = _problem(9)
    model = DNMF(4, epochs=1, layer="hals", dtype="float64").fit(V, H)
    out = model.transform_to_zarr(V, tmp_path / "h.zarr")
    attrs = read_result_attrs(out)
    assert attrs["layer"] == "hals" and attrs["start"] == "lsq"
    np.testing.assert_allclose(zarr.open_group(out, mode="r")["H"][:], model.transform(V))
    root = zarr.open_group(out, mode="r+")
    old = dict(root.attrs["scalenmf"])
    del old["layer"], old["start"]
    root.attrs["scalenmf"] = old
    attrs = read_result_attrs(out)
    assert attrs["layer"] == "mu" and attrs["start"] == "ones"
    with pytest.raises(ValueError, match="not a DNMF result store"):
        read_result_attrs(tmp_path / "nothing.zarr")


def test_cli_trains_and_transforms_with_a_layer_type(tmp_path):
    V, H, _ = _problem(10)
    write_matrix(tmp_path / "v.zarr", V)
    np.save(tmp_path / "h.npy", H)
    runner = CliRunner()
    res = runner.invoke(
        dnmf,
        [
            "train",
            str(tmp_path / "v.zarr"),
            "-k",
            "4",
            "-o",
            str(tmp_path / "m"),
            "--h",
            str(tmp_path / "h.npy"),
            "--layer",
            "hals",
            "--layers",
            "3",
            "--epochs",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "hals layers" in res.output
    res = runner.invoke(
        dnmf,
        [
            "transform",
            str(tmp_path / "m"),
            str(tmp_path / "v.zarr"),
            "-o",
            str(tmp_path / "h.zarr"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert read_result_attrs(tmp_path / "h.zarr")["layer"] == "hals"
    res = runner.invoke(
        dnmf,
        [
            "train",
            str(tmp_path / "v.zarr"),
            "-k",
            "4",
            "-o",
            str(tmp_path / "m2"),
            "--layer",
            "pgd",
            "--loss",
            "kl",
            "--epochs",
            "1",
        ],
    )
    assert res.exit_code != 0
    assert "supports only loss='frobenius'" in res.output
    assert not (tmp_path / "m2").exists()


def test_layer_evaluation_writes_rows_for_every_layer_type(tmp_path):
    """A reduced `dnmf evaluate --layer ...` on the shipped slice of a synthetic set, and
    the BRCA path (no known H: reconstruction error at the ANLS basis) on its slice."""
    from pathlib import Path

    from scalenmf.experiments import dnmf_eval as ev

    data = Path(__file__).parent.parent.parent / "data"
    out = tmp_path / "layers"
    args = ["evaluate", "--data", str(data), "--sets", "syn.2.7a.7b.abst_sp.sp"]
    args += ["--folds", "3", "--fold-limit", "1", "--epochs", "3", "--no-brca"]
    args += ["--max-samples", "90", "--depths", "2,4", "--layer", "pgd", "--layer", "hals"]
    args += ["--layer", "mu", "-o", str(out), "--quiet"]
    res = CliRunner().invoke(dnmf, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    import csv

    with open(out / "layers.csv") as f:
        rows = list(csv.DictReader(f))
    arms = {r["arm"] for r in rows}
    for layer in ("mu", "pgd", "hals"):
        assert {f"{layer}_2", f"{layer}_4", f"{layer}_2_iter", f"{layer}_4_iter"} <= arms
    assert {"nnls", "mu_conv", "hals_conv"} <= arms
    assert {r["fold"] for r in rows} == {"0"}
    assert all(float(r["score"]) >= 0 and float(r["seconds_per_1000"]) > 0 for r in rows)
    text = (out / "layers.md").read_text()
    assert "| pgd × 4 |" in text and "| hals × 2 |" in text and "exact NNLS" in text
    assert "error ≤ 10× exact NNLS" in text
    # the untrained HALS network is HALS from the clipped start: converged HALS is
    # (nearly) exact NNLS
    score = {r["arm"]: float(r["score"]) for r in rows}
    assert score["hals_conv"] == pytest.approx(score["nnls"], rel=1e-2)
    brca = ev.load_brca(data / "icgc_brca560_sbs96_counts_first120.npy")
    folds = ev.kfold_indices(brca.V.shape[1], 4, 1)
    cfg = ev.EvalConfig(epochs=2, layer_types=("pgd",), layer_depths=(3,), mu_max_iter=200)
    rows2 = ev.layers_fold(brca, *folds[0], 0, cfg)
    got = {r.arm: r.score for r in rows2}
    assert set(got) == {"nnls", "hals_conv", "mu_conv", "pgd_3", "pgd_3_iter"}
    # reconstruction error: nothing beats exact NNLS with the same basis
    assert all(v >= got["nnls"] * (1 - 1e-9) for v in got.values())
