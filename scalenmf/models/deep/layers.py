"""The unrolled network: each layer is one regularized multiplicative update of ``H``.

Frobenius layer ``l`` (``A_l`` stands for ``WᵀW``, ``B_l`` for ``Wᵀ``)::

    H ← H ⊙ (B_l V) / (A_l H + λ2 H + λ1 + ε)

KL layer ``l`` (``C_l`` stands for ``W``, ``B_l`` for ``Wᵀ``)::

    H ← H ⊙ B_l (V ⊘ (C_l H + ε)) / (B_l 1 + λ1 + λ2 H + ε)

With ``A_l = WᵀW``, ``B_l = Wᵀ``, ``C_l = W`` and fixed λ, ``L`` layers are exactly ``L`` MU
steps from ``H0 = 1`` (tested). The module only computes; training (optimiser, clamping,
the W refit) lives in :mod:`scalenmf.models.deep.train`.
"""

from __future__ import annotations

import torch
from torch import nn

from scalenmf.models.deep.mu import EPS


class UnrolledNMF(nn.Module):
    """``n_layers`` unrolled MU steps for ``H`` with per-layer learned matrices.

    Parameters
    ----------
    n_features : int
        ``m``, rows of ``V``.
    n_components : int
        ``k``, rows of ``H``.
    n_layers : int
        Depth ``L``.
    loss : {"frobenius", "kl"}
        Which MU step each layer unrolls.
    lambda1, lambda2 : float
        Initial (or fixed) L1 / L2 penalties on ``H``, shared by all layers.
    learn_lambdas : bool
        Whether λ1, λ2 are trained parameters (supervised) or fixed buffers (unsupervised).
    dtype : torch.dtype

    Attributes
    ----------
    A : Parameter, shape (L, k, k)
        Stand-ins for ``WᵀW`` (Frobenius only).
    B : Parameter, shape (L, k, m)
        Stand-ins for ``Wᵀ``.
    C : Parameter, shape (L, m, k)
        Stand-ins for ``W`` (KL only).
    lambdas : Parameter or buffer, shape (2,)
        ``(λ1, λ2)``.
    """

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
    ) -> None:
        super().__init__()
        if loss not in ("frobenius", "kl"):
            raise ValueError(f"loss must be 'frobenius' or 'kl', got {loss!r}")
        m, k, L = n_features, n_components, n_layers
        self.loss = loss
        self.n_features, self.n_components, self.n_layers = m, k, L
        # Only the matrices the chosen update uses exist (no empty parameters).
        self.B = nn.Parameter(torch.ones((L, k, m), dtype=dtype))
        if loss == "kl":
            self.C = nn.Parameter(torch.ones((L, m, k), dtype=dtype))
        else:
            self.A = nn.Parameter(torch.ones((L, k, k), dtype=dtype))
        lam = torch.tensor([lambda1, lambda2], dtype=dtype)
        if learn_lambdas:
            self.lambdas = nn.Parameter(lam)
        else:
            self.register_buffer("lambdas", lam)

    @torch.no_grad()
    def init_constant(self, value: float) -> None:
        """Fill every layer matrix with ``value`` (the paper's initialisation)."""
        for name in ("A", "B", "C"):
            if hasattr(self, name):
                getattr(self, name).fill_(value)

    @torch.no_grad()
    def init_from_w(self, W: torch.Tensor) -> None:
        """Make every layer an exact MU step for the basis ``W`` of shape (m, k)."""
        W = W.to(self.B.device, self.B.dtype)
        self.B.copy_(W.T.expand_as(self.B))
        if self.loss == "kl":
            self.C.copy_(W.expand_as(self.C))
        else:
            self.A.copy_((W.T @ W).expand_as(self.A))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project every parameter onto the non-negative orthant (after each step)."""
        for p in self.parameters():
            p.clamp_(min=0.0)

    def layer(self, l: int, V: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        """Apply layer ``l`` to ``H`` of shape (k, b) for the columns ``V`` of shape (m, b)."""
        lam1, lam2 = self.lambdas[0], self.lambdas[1]
        if self.loss == "kl":
            B = self.B[l]
            ratio = V / (self.C[l] @ H + EPS)
            den = B.sum(dim=1, keepdim=True) + lam1 + lam2 * H + EPS
            return H * (B @ ratio) / den
        return H * (self.B[l] @ V) / (self.A[l] @ H + lam2 * H + lam1 + EPS)

    def forward(self, V: torch.Tensor, H0: torch.Tensor | None = None) -> torch.Tensor:
        """Push columns through all layers.

        Parameters
        ----------
        V : Tensor, shape (m, b)
            Non-negative columns.
        H0 : Tensor, shape (k, b), optional
            Starting coefficients; all ones (the paper's ``h0``) when omitted.

        Returns
        -------
        Tensor, shape (k, b)
            Non-negative coefficients ``Ĥ``.
        """
        H = V.new_ones((self.n_components, V.shape[1])) if H0 is None else H0
        for l in range(self.n_layers):
            H = self.layer(l, V, H)
        return H
