"""The unrolled networks: each layer is one step of an iteration for ``H`` with ``W`` fixed,
with that step's matrices (and step sizes) learned.

Three layer types (``layer=``):

``"mu"`` (the paper's; Frobenius and KL). ``A_l`` stands for ``WᵀW``, ``B_l`` for ``Wᵀ``,
``C_l`` for ``W``::

    Frobenius:  H ← H ⊙ (B_l V) / (A_l H + λ2 H + λ1 + ε)
    KL:         H ← H ⊙ B_l (V ⊘ (C_l H + ε)) / (B_l 1 + λ1 + λ2 H + ε)

``"pgd"`` (Frobenius only): accelerated projected gradient in the manner of LISTA (Gregor &
LeCun 2010), with a learned step per coordinate ``s_l`` and a learned momentum ``β_l``::

    Y ← H + β_l (H − H_prev)
    H ← relu(Y − s_l ⊙ (A_l Y − B_l V + λ1 + λ2 Y))

initialised at ``A_l = WᵀW``, ``B_l = Wᵀ``, ``s_l = 1/‖WᵀW + λ2 I‖₂`` and the FISTA momentum
sequence ``β_l = (t_l − 1)/t_{l+1}`` (Beck & Teboulle 2009).

``"hals"`` (Frobenius only): one coordinate-descent (HALS) sweep per layer, coordinate ``i``
after coordinate ``i − 1``, with a learned step per coordinate::

    h_i ← relu(h_i − s_{l,i} ((A_l H)_i − (B_l V)_i + λ1 + λ2 h_i))        i = 1..k

initialised at ``s_{l,i} = 1/((WᵀW)_ii + λ2)``: exactly :func:`scalenmf.kernels.nnls_cd`
with a fixed number of sweeps.

The start ``H0`` (``start=``) is all ones (``"ones"``, the paper's; the only start MU can
use, since MU cannot leave a zero) or the clipped regularized least-squares projection
``relu(P V − q)`` with learned ``P`` (k × m) and ``q`` (k,) initialised at
``P = (WᵀW + λ2 I)⁺ Wᵀ``, ``q = λ1 (WᵀW + λ2 I)⁺ 1`` (``"lsq"``, the default of the new
layers).

Non-negativity holds by construction: MU multiplies non-negative factors (its parameters
are clamped ≥ 0 after each optimiser step), the other layers end in a ``relu``. Their
matrices are free (LISTA); steps, momenta and λ are clamped ≥ 0. Initialised from ``W`` with
fixed λ, ``L`` layers are exactly ``L`` steps of the iteration they unroll (tested). The
module only computes; training (optimiser, clamping, the W refit) lives in
:mod:`scalenmf.models.deep.train`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scalenmf.models.deep.mu import EPS

#: Layer types and the losses each supports.
LAYERS: dict[str, tuple[str, ...]] = {
    "mu": ("frobenius", "kl"),
    "pgd": ("frobenius",),
    "hals": ("frobenius",),
}
#: Above this many entries of ``(L, k, b)`` the projected-gradient layers compute ``B_l V``
#: layer by layer instead of in one batched product (bounds the memory of large batches).
PGD_BATCHED_ENTRIES = 1 << 23
#: Starts (``None``: "ones" for MU, "lsq" for the others).
STARTS = ("ones", "lsq")


def default_start(layer: str) -> str:
    """The start a layer type uses when none is given."""
    return "ones" if layer == "mu" else "lsq"


def check_layer(layer: str, loss: str, start: str | None) -> str:
    """Validate a (layer, loss, start) combination; return the effective start.

    Raises
    ------
    ValueError
        One line naming the problem.
    """
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {tuple(LAYERS)}, got {layer!r}")
    if loss not in ("frobenius", "kl"):
        raise ValueError(f"loss must be 'frobenius' or 'kl', got {loss!r}")
    if loss not in LAYERS[layer]:
        raise ValueError(
            f"layer={layer!r} supports only loss='frobenius' (its step is a least-squares "
            f"gradient / coordinate step); use layer='mu' for loss={loss!r}"
        )
    eff = default_start(layer) if start is None else start
    if eff not in STARTS:
        raise ValueError(f"start must be one of {STARTS} or None, got {start!r}")
    if layer == "mu" and eff != "ones":
        raise ValueError(
            "layer='mu' needs start='ones': a multiplicative update cannot leave the zeros "
            "of a clipped least-squares start; use layer='pgd' or 'hals' with start='lsq'"
        )
    return eff


def fista_momenta(n_layers: int) -> torch.Tensor:
    """FISTA's momentum ``β_l = (t_l − 1)/t_{l+1}``, ``t_0 = 1``, for layers ``0..L−1``
    (``β_0 = 0``: the first layer is a plain projected-gradient step)."""
    t, out = 1.0, []
    for _ in range(n_layers):
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        out.append((t - 1.0) / t_next)
        t = t_next
    return torch.tensor(out, dtype=torch.float64)


class UnrolledNMF(nn.Module):
    """``n_layers`` unrolled steps for ``H`` with per-layer learned parameters.

    Parameters
    ----------
    n_features : int
        ``m``, rows of ``V``.
    n_components : int
        ``k``, rows of ``H``.
    n_layers : int
        Depth ``L``.
    loss : {"frobenius", "kl"}
        Which objective the layers descend (KL: ``layer="mu"`` only).
    lambda1, lambda2 : float
        Initial (or fixed) L1 / L2 penalties on ``H``, shared by all layers.
    learn_lambdas : bool
        Whether λ1, λ2 are trained parameters (supervised) or fixed buffers (unsupervised).
    dtype : torch.dtype
    layer : {"mu", "pgd", "hals"}
        The iteration each layer unrolls (see the module docstring).
    start : {"ones", "lsq"}, optional
        ``H0``; default "ones" for MU, "lsq" for the others.

    Attributes
    ----------
    layer_type : str
        ``layer`` (the method :meth:`layer` applies one layer).
    A : Parameter, shape (L, k, k)
        Stand-ins for ``WᵀW`` (Frobenius).
    B : Parameter, shape (L, k, m)
        Stand-ins for ``Wᵀ``.
    C : Parameter, shape (L, m, k)
        Stand-ins for ``W`` (KL MU only).
    step : Parameter, shape (L, k)
        Per-coordinate steps (pgd, hals).
    momentum : Parameter, shape (L,)
        Momentum per layer (pgd).
    P : Parameter, shape (k, m); q : Parameter, shape (k,)
        The learned start ``relu(P V − q)`` (``start="lsq"``).
    lambdas : Parameter or buffer, shape (2,)
        ``(λ1, λ2)``.
    """

    # scales of the relu layers' tensors (buffers; see ``eff``)
    A_scale: torch.Tensor
    B_scale: torch.Tensor
    step_scale: torch.Tensor
    P_scale: torch.Tensor
    q_scale: torch.Tensor

    def __init__(
        self,
        n_features: int,
        n_components: int,
        n_layers: int,
        loss: str = "frobenius",
        lambda1: float = 0.0,
        lambda2: float = 0.0,
        learn_lambdas: bool = False,
        dtype: torch.dtype = torch.float32,
        layer: str = "mu",
        start: str | None = None,
    ) -> None:
        super().__init__()
        self.start = check_layer(layer, loss, start)
        m, k, L = n_features, n_components, n_layers
        self.loss, self.layer_type = loss, layer
        self.n_features, self.n_components, self.n_layers = m, k, L
        # Only the tensors the chosen update uses exist (no empty parameters).
        self.B = nn.Parameter(torch.ones((L, k, m), dtype=dtype))
        if loss == "kl":
            self.C = nn.Parameter(torch.ones((L, m, k), dtype=dtype))
        else:
            self.A = nn.Parameter(torch.ones((L, k, k), dtype=dtype))
        if layer in ("pgd", "hals"):
            self.step = nn.Parameter(torch.ones((L, k), dtype=dtype))
        if layer == "pgd":
            self.momentum = nn.Parameter(fista_momenta(L).to(dtype))
        if self.start == "lsq":
            self.P = nn.Parameter(torch.zeros((k, m), dtype=dtype))
            self.q = nn.Parameter(torch.zeros((k,), dtype=dtype))
        if layer != "mu":
            # Each learned tensor X is stored relative to a fixed scale (X_eff = X · X_scale,
            # the RMS of its initial value), so that one Adam learning rate moves every
            # tensor by the same relative amount whatever the units of the data: a step of
            # 1e-3 on Wᵀ (entries ~1e-2) and on its pseudo-inverse (entries ~1e2) alike.
            for name in self._scaled():
                self.register_buffer(f"{name}_scale", torch.ones((), dtype=dtype))
        lam = torch.tensor([lambda1, lambda2], dtype=dtype)
        if learn_lambdas:
            self.lambdas = nn.Parameter(lam)
        else:
            self.register_buffer("lambdas", lam)

    def _scaled(self) -> tuple[str, ...]:
        """Names of the tensors stored relative to a scale (the relu layers' tensors)."""
        if self.layer_type == "mu":
            return ()
        names = ("A", "B", "step")
        return names + (("P", "q") if self.start == "lsq" else ())

    def eff(self, name: str) -> torch.Tensor:
        """The effective value of the learned tensor ``name`` (its parameter times its
        scale for the relu layers; the parameter itself for MU)."""
        p = getattr(self, name)
        return p * getattr(self, f"{name}_scale") if name in self._scaled() else p

    @torch.no_grad()
    def set_eff_(self, name: str, value: torch.Tensor) -> None:
        """Set the learned tensor ``name`` so that :meth:`eff` returns ``value`` (its scale
        becomes the RMS of ``value``)."""
        p = getattr(self, name)
        value = value.to(p.device, p.dtype).expand_as(p)
        if name in self._scaled():
            rms = float(value.double().pow(2).mean().sqrt())
            scale = getattr(self, f"{name}_scale")
            scale.fill_(rms if rms > 0 and math.isfinite(rms) else 1.0)
            p.copy_(value / scale)
        else:
            p.copy_(value)

    @torch.no_grad()
    def init_constant(self, value: float) -> None:
        """Fill every layer matrix with ``value`` (the paper's initialisation, MU only)."""
        if self.layer_type != "mu":
            raise ValueError(
                f"the constant initialisation is the paper's for layer='mu'; layer="
                f"{self.layer_type!r} starts from a basis (init='mu')"
            )
        for name in ("A", "B", "C"):
            if hasattr(self, name):
                getattr(self, name).fill_(value)

    @torch.no_grad()
    def init_from_w(self, W: torch.Tensor) -> None:
        """Make every layer an exact step of its iteration for the basis ``W`` (m, k), with
        the current λ (steps, momenta and the start too)."""
        W = W.to(self.B.device, self.B.dtype)
        self.set_eff_("B", W.T)
        if self.loss == "kl":
            self.C.copy_(W.expand_as(self.C))
            return
        G = W.T @ W
        self.set_eff_("A", G)
        lam1, lam2 = float(self.lambdas[0]), float(self.lambdas[1])
        G64 = G.double() + lam2 * torch.eye(self.n_components, dtype=torch.float64, device=G.device)
        if self.layer_type == "pgd":
            lip = float(torch.linalg.eigvalsh(G64).max())
            self.set_eff_("step", torch.full((1,), 1.0 / max(lip, EPS)))
            self.momentum.copy_(fista_momenta(self.n_layers).to(self.momentum))
        elif self.layer_type == "hals":
            diag = torch.diagonal(G64)
            # a dead coordinate (zero column of W, λ2 = 0) gets no step, as in nnls_cd
            inv = torch.where(diag > 0, 1.0 / torch.where(diag > 0, diag, 1.0), 0.0)
            self.set_eff_("step", inv)
        if self.start == "lsq":
            Gi = torch.linalg.pinv(G64, hermitian=True)
            P = Gi @ W.T.double()
            self.set_eff_("P", P)
            q = lam1 * Gi.sum(dim=1)
            # q is 0 without λ1 (no RMS to take): give it P's scale
            self.set_eff_("q", q)
            if float(q.abs().max()) == 0.0:
                self.q_scale.fill_(float(self.P_scale))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the constrained parameters after each optimiser step: every MU parameter
        ≥ 0 (its multiplicative form needs it); for the relu layers only steps, momenta
        and λ (their matrices are free, as in LISTA)."""
        if self.layer_type == "mu":
            for p in self.parameters():
                p.clamp_(min=0.0)
            return
        self.step.clamp_(min=0.0)
        if self.layer_type == "pgd":
            self.momentum.clamp_(min=0.0, max=1.0)
        self.lambdas.clamp_(min=0.0)

    def initial(self, V: torch.Tensor) -> torch.Tensor:
        """``H0`` for the columns ``V`` (m, b): ones, or ``relu(P V − q)``; shape (k, b)."""
        if self.start == "lsq":
            return torch.relu(self.eff("P") @ V - self.eff("q")[:, None])
        return V.new_ones((self.n_components, V.shape[1]))

    def layer(
        self, l: int, V: torch.Tensor, H: torch.Tensor, H_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply layer ``l`` to ``H`` of shape (k, b) for the columns ``V`` of shape (m, b)
        (``H_prev``: the input of the previous layer, for the pgd momentum)."""
        lam1, lam2 = self.lambdas[0], self.lambdas[1]
        if self.layer_type == "pgd":
            Y = H if H_prev is None else torch.lerp(H, H_prev, -self.momentum[l])
            M, C = self._affine(l, V)
            # H ← relu(Y − s ⊙ ((A + λ2 I) Y − (B V − λ1))), as one affine map and a relu
            return torch.relu(torch.addmm(C, M, Y))
        if self.layer_type == "hals":
            return self._hals_sweep(l, V, H)
        if self.loss == "kl":
            B = self.B[l]
            ratio = V / (self.C[l] @ H + EPS)
            den = B.sum(dim=1, keepdim=True) + lam1 + lam2 * H + EPS
            return H * (B @ ratio) / den
        return H * (self.B[l] @ V) / (self.A[l] @ H + lam2 * H + lam1 + EPS)

    def _affine(self, l: int, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``l`` of the relu layers as ``relu(M Y + C)``: ``M = I − diag(s)(A + λ2 I)``
        (k, k) and ``C = s ⊙ (B V − λ1)`` (k, b)."""
        lam1, lam2 = self.lambdas[0], self.lambdas[1]
        s = (self.step[l] * self.step_scale)[:, None]
        eye = torch.eye(self.n_components, dtype=V.dtype, device=V.device)
        M = eye - s * (self.A[l] * self.A_scale + lam2 * eye)
        C = s * ((self.B[l] * self.B_scale) @ V - lam1)
        return M, C

    def _pgd_maps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All layers' ``M = I − diag(s)(A + λ2 I)`` (L, k, k), ``diag(s) B`` (L, k, m) and
        ``−s λ1`` (L, k, 1): layer ``l`` is ``relu(M_l Y + diag(s_l) B_l V − s_l λ1)``."""
        lam1, lam2 = self.lambdas[0], self.lambdas[1]
        s = (self.step * self.step_scale)[:, :, None]
        eye = torch.eye(self.n_components, dtype=s.dtype, device=s.device)
        M = eye - s * (self.A * self.A_scale + lam2 * eye)
        return M, s * (self.B * self.B_scale), -s * lam1

    def _hals_sweep(self, l: int, V: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        """One sweep, coordinate ``i`` seeing the already updated ``0..i−1``:
        ``h_i ← relu(M_i H + c_i)`` with ``M``, ``C`` of :meth:`_affine`."""
        M, C = self._affine(l, V)
        if not torch.is_grad_enabled():
            # inference: update the rows in place (one small gemv per coordinate)
            H = H.clone()
            buf = torch.empty_like(H[0])
            for i in range(self.n_components):
                torch.addmv(C[i], H.t(), M[i], out=buf)
                torch.clamp(buf, min=0.0, out=H[i])
            return H
        # training: rows are kept apart so that autograd sees no in-place change
        rows = list(H.unbind(0))
        for i in range(self.n_components):
            rows[i] = torch.relu(torch.addmv(C[i], torch.stack(rows).t(), M[i]))
        return torch.stack(rows)

    def forward(self, V: torch.Tensor, H0: torch.Tensor | None = None) -> torch.Tensor:
        """Push columns through all layers.

        Parameters
        ----------
        V : Tensor, shape (m, b)
            Non-negative columns.
        H0 : Tensor, shape (k, b), optional
            Starting coefficients; :meth:`initial` when omitted.

        Returns
        -------
        Tensor, shape (k, b)
            Non-negative coefficients ``Ĥ``.
        """
        H = self.initial(V) if H0 is None else H0
        H_prev: torch.Tensor | None = None
        if self.layer_type == "pgd":
            # the V-independent parts of every layer at once: fewer, larger operations
            M, SB, c = self._pgd_maps()
            Ms, betas = M.unbind(0), (-self.momentum).unbind(0)
            L, k, b = self.n_layers, self.n_components, V.shape[1]
            if L * k * b <= PGD_BATCHED_ENTRIES:
                # every layer's B_l V in one batched product (per-call overhead, not
                # arithmetic, is what a small layer costs)
                Cs = torch.baddbmm(c, SB, V.expand(L, *V.shape)).unbind(0)
            else:
                Cs = tuple(torch.addmm(c[l], SB[l], V) for l in range(L))
            for l in range(L):
                Y = H if H_prev is None else torch.lerp(H, H_prev, betas[l])
                H, H_prev = torch.relu(torch.addmm(Cs[l], Ms[l], Y)), H
            return H
        for l in range(self.n_layers):
            H, H_prev = self.layer(l, V, H, H_prev), H
        return H
