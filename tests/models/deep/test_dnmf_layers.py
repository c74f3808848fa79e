"""The unrolled layers against plain MU, MU monotonicity, NNLS, non-negativity of training."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

torch = pytest.importorskip("torch")

from scalenmf.models.deep.data import Batch  # noqa: E402
from scalenmf.models.deep.layers import UnrolledNMF  # noqa: E402
from scalenmf.models.deep.mu import (  # noqa: E402
    frobenius_cost,
    kl_cost,
    mu_step_h_frobenius,
    mu_step_h_kl,
    mu_step_w_frobenius,
    mu_step_w_kl,
    nnls_gram,
    nnls_h,
    nnls_w_from_gram,
)
from scalenmf.models.deep.train import TrainState, make_optimizer, train_step  # noqa: E402


def _data(seed: int, m: int = 12, k: int = 3, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    W = torch.rand((m, k), generator=g, dtype=torch.float64)
    H = torch.rand((k, n), generator=g, dtype=torch.float64) * 5
    V = torch.poisson(W @ H, generator=g)
    return V, W, H


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
@pytest.mark.parametrize("lams", [(0.0, 0.0), (0.7, 1.3)])
def test_network_with_mu_weights_is_exactly_mu(loss, lams):
    V, W, _ = _data(0)
    L = 7
    net = UnrolledNMF(12, 3, L, loss, *lams, dtype=torch.float64)
    net.init_from_w(W)
    step = mu_step_h_kl if loss == "kl" else mu_step_h_frobenius
    H = torch.ones((3, V.shape[1]), dtype=torch.float64)
    for _ in range(L):
        H = step(V, W, H, *lams)
    with torch.no_grad():
        out = net(V)
    torch.testing.assert_close(out, H, rtol=1e-12, atol=1e-12)
    # and a different depth would not match: the check can fail
    assert not torch.allclose(
        UnrolledNMF(12, 3, L - 1, loss, *lams, dtype=torch.float64)
        .requires_grad_(False)
        .__call__(V),
        H,
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lams", [(0.0, 0.0), (1.0, 2.0)])
def test_mu_costs_never_rise_for_fixed_w(seed, lams):
    V, W, _ = _data(seed)
    g = torch.Generator().manual_seed(100 + seed)
    for cost, step in ((frobenius_cost, mu_step_h_frobenius), (kl_cost, mu_step_h_kl)):
        H = torch.rand((3, V.shape[1]), generator=g, dtype=torch.float64) + 0.1
        prev = float(cost(V, W, H, *lams))
        for _ in range(50):
            H = step(V, W, H, *lams)
            now = float(cost(V, W, H, *lams))
            assert now <= prev * (1 + 1e-12) + 1e-12
            prev = now


def test_mu_w_steps_never_raise_cost():
    V, W, H = _data(3)
    W = W + 0.5
    for cost, step in ((frobenius_cost, mu_step_w_frobenius), (kl_cost, mu_step_w_kl)):
        Wc, prev = W.clone(), float(cost(V, W, H))
        for _ in range(30):
            Wc = step(V, Wc, H)
            now = float(cost(V, Wc, H))
            assert now <= prev * (1 + 1e-12)
            prev = now


def test_nnls_gram_matches_scipy():
    V, W, H = _data(4, m=15, k=4, n=6)
    Hn = nnls_h(V, W)
    for j in range(V.shape[1]):
        ref, _ = nnls(W.numpy(), V[:, j].numpy())
        np.testing.assert_allclose(Hn[:, j].numpy(), ref, atol=1e-7)
    Wn = nnls_w_from_gram(H @ H.T, V @ H.T)
    for i in range(V.shape[0]):
        ref, _ = nnls(H.T.numpy(), V[i].numpy())
        np.testing.assert_allclose(Wn[i].numpy(), ref, atol=1e-7)


def test_regularized_nnls_solves_kkt():
    V, W, _ = _data(5)
    lam1, lam2 = 0.5, 2.0
    Hn = nnls_h(V, W, lam1, lam2)
    grad = (W.T @ W + lam2 * torch.eye(3, dtype=W.dtype)) @ Hn - W.T @ V + lam1
    assert float(Hn.min()) >= 0
    assert float(grad.min()) > -1e-6  # stationarity on the boundary
    assert float((grad * Hn).abs().max()) < 1e-5  # complementary slackness
    assert torch.allclose(
        nnls_gram(torch.eye(2, dtype=W.dtype), -torch.ones((2, 3), dtype=W.dtype)),
        torch.zeros((2, 3), dtype=W.dtype),
    )


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_parameters_and_outputs_nonnegative_after_every_step(mode, loss):
    V, _W, H = _data(6)
    V, H = V.float(), H.float()
    learn = mode == "supervised"
    net = UnrolledNMF(12, 3, 4, loss, 0.1, 0.1, learn_lambdas=learn)
    net.init_constant(0.5)
    # a large learning rate pushes parameters through zero, so the clamp has work to do
    opt = make_optimizer(net, lr=0.6)
    state = TrainState(W=torch.rand((12, 3)) if mode == "unsupervised" else None)
    clamped = False
    for _ in range(15):
        train_step(net, opt, Batch(V, H if learn else H[:0], torch.arange(40)), state, mode, 40)
        for p in net.parameters():
            assert float(p.detach().min()) >= 0.0
            clamped |= bool((p == 0).any())
        with torch.no_grad():
            out = net(V)
        assert torch.isfinite(out).all() and float(out.min()) >= 0.0
        if state.W is not None:
            assert float(state.W.min()) >= 0.0
    assert clamped, "the test never exercised the clamp"


def test_a_diverging_step_is_undone_with_half_the_learning_rate():
    V, W, H = _data(7)
    net = UnrolledNMF(12, 3, 3, dtype=torch.float64)
    net.init_from_w(W)
    opt = make_optimizer(net, lr=0.1)
    state = TrainState(W=W.clone())
    batch = Batch(V, H[:0], torch.arange(V.shape[1]))
    train_step(net, opt, batch, state, "unsupervised", V.shape[1])
    before = {k: v.clone() for k, v in state.snapshot["model"].items()}
    with torch.no_grad():  # make the next forward pass overflow
        net.A.fill_(0.0)
        net.B.fill_(1e200)
    loss, _ = train_step(net, opt, batch, state, "unsupervised", V.shape[1])
    assert np.isfinite(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert float(net.B.max()) < 1e10  # the poisoned parameters were replaced by the snapshot
    assert not torch.equal(before["B"], net.B.detach())  # and a (smaller) step was taken
    # without a previous good state there is nothing to undo: a clear error
    fresh = UnrolledNMF(12, 3, 3, dtype=torch.float64)
    fresh.init_from_w(W)
    with torch.no_grad():
        fresh.B.fill_(1e200)
        fresh.A.fill_(0.0)
    with pytest.raises(FloatingPointError, match="diverged"):
        train_step(
            fresh,
            make_optimizer(fresh, 0.1),
            batch,
            TrainState(W=W.clone()),
            "unsupervised",
            V.shape[1],
        )


def test_adam_equals_torch_adam_bit_for_bit():
    """Our Adam (no compiler-stack import) takes exactly torch.optim.Adam's steps."""
    from scalenmf.models.deep.optim import Adam

    gen = torch.Generator().manual_seed(0)
    ours = [torch.rand(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)]
    ref = [ours[0].detach().clone().requires_grad_(True)]
    opt, ref_opt = Adam(ours, lr=0.01), torch.optim.Adam(ref, lr=0.01)
    for step in range(25):
        target = torch.rand(4, 3, generator=gen, dtype=torch.float64)
        for params, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            ((params[0] - target) ** 2 * (step + 1)).sum().backward()
            o.step()
        assert torch.equal(ours[0], ref[0]), step
    # the state round-trips and continues identically (checkpoints)
    clone = Adam([ours[0].detach().clone().requires_grad_(True)], lr=0.5)
    clone.load_state_dict(opt.state_dict())
    assert clone.param_groups[0]["lr"] == 0.01
    for o, p in ((opt, ours[0]), (clone, clone.param_groups[0]["params"][0])):
        o.zero_grad()
        (p**2).sum().backward()
        o.step()
    assert torch.equal(ours[0], clone.param_groups[0]["params"][0])
    with pytest.raises(ValueError, match="lr"):
        Adam(ours, lr=0.0)
