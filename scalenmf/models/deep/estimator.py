"""The public DNMF estimator: parameters, validation, fit / transform / save / load."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from scalenmf.models.deep.data import ColumnShardDataset, check_block, open_source
from scalenmf.models.deep.layers import UnrolledNMF, check_layer
from scalenmf.models.deep.mu import nnls_w_from_gram
from scalenmf.models.deep.train import (
    TrainConfig,
    TrainState,
    broadcast_model_,
    dist_info,
    free_port,
    gram_statistics,
    init_distributed,
    leave_process_group,
    load_checkpoint,
    make_optimizer,
    maybe_init_from_env,
    multi_process_device,
    to_cpu,
    train,
)

logger = logging.getLogger(__name__)

_MODES = ("supervised", "unsupervised")
_LOSSES = ("frobenius", "kl")
_INITS = ("mu", "constant")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Device options: a name, resolved where the work runs (``"auto"``: CUDA when present).
_DEVICE = re.compile(r"cpu|auto|cuda(:[0-9]+)?")
#: Format tag written in saved models; bumped when the layout changes.
FORMAT = "scalenmf-dnmf/1"


def validate_params(p: dict[str, Any]) -> None:
    """Check every hyper-parameter once, naming the parameter, what is allowed and what was
    given. Raises ``ValueError``."""

    def bad(name: str, allowed: str) -> None:
        raise ValueError(f"{name} must be {allowed}, got {p[name]!r}")

    if not isinstance(p["n_components"], int | np.integer) or p["n_components"] < 1:
        bad("n_components", "a positive integer")
    if not isinstance(p["n_layers"], int | np.integer) or p["n_layers"] < 1:
        bad("n_layers", "a positive integer")
    if p["mode"] not in _MODES:
        bad("mode", f"one of {_MODES}")
    if p["loss"] not in _LOSSES:
        bad("loss", f"one of {_LOSSES}")
    if p["init"] not in _INITS:
        bad("init", f"one of {_INITS}")
    check_layer(p["layer"], p["loss"], p["start"])
    if p["init"] == "constant" and p["layer"] != "mu":
        raise ValueError(
            f"init='constant' is the paper's initialisation of layer='mu'; layer="
            f"{p['layer']!r} needs init='mu' (its layers start as exact steps for a basis)"
        )
    if p["dtype"] not in _DTYPES:
        bad("dtype", f"one of {tuple(_DTYPES)}")
    for name in ("lambda1", "lambda2"):
        if not np.isfinite(p[name]) or p[name] < 0:
            bad(name, "a finite number >= 0")
    if p["lr"] is not None and not p["lr"] > 0:
        bad("lr", "> 0")
    if not isinstance(p["epochs"], int | np.integer) or p["epochs"] < 0:
        bad("epochs", "an integer >= 0")
    if p["batch_size"] is not None and p["batch_size"] < 1:
        bad("batch_size", "None (full batch) or a positive integer")
    if p["num_workers"] < 0:
        bad("num_workers", "an integer >= 0")
    if p["nproc"] < 1:
        bad("nproc", "an integer >= 1")
    if not isinstance(p["device"], str) or _DEVICE.fullmatch(p["device"]) is None:
        bad("device", "'cpu', 'cuda', 'cuda:N' or 'auto'")
    if p["mode"] == "unsupervised" and p["learn_lambdas"]:
        raise ValueError(
            "learn_lambdas=True is not allowed in unsupervised mode: λ1, λ2 are part of the "
            "objective there and would be driven to 0; pass fixed lambda1/lambda2 instead"
        )


def _effective(p: dict[str, Any]) -> dict[str, Any]:
    """Fill the mode-dependent defaults (learned λ and lr 1e-3 supervised; fixed λ and lr
    5e-4 unsupervised: the paper's settings; :data:`RELU_LR` for the relu layers)."""
    q = dict(p)
    sup = q["mode"] == "supervised"
    if q["learn_lambdas"] is None:
        q["learn_lambdas"] = sup
    if q["lr"] is None:
        q["lr"] = RELU_LR[q["layer"]] if q["layer"] in RELU_LR else (1e-3 if sup else 5e-4)
    return q


#: Default Adam learning rates of the relu layers (relative: their tensors are stored
#: relative to their initial RMS). Measured on the synthetic sets: the pseudo-inverse start
#: is ill-conditioned, so larger rates make the first steps raise the loss (HALS diverged at
#: 1e-5; projected gradient was noisy at 1e-5 and steady at 3e-6).
RELU_LR = {"pgd": 3e-6, "hals": 1e-6}


#: Below this many matrix entries per step, torch's intra-op threads cost more than they
#: save (and under CPU contention they spin: measured 100× slower on a shared 2-core box).
SMALL_STEP_ENTRIES = 1 << 21


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (unchanged when ``n`` is None)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def auto_threads(m: int, batch: int, requested: int | None) -> int | None:
    """Threads for a step over ``m × batch`` entries: 1 for small steps, else the default."""
    if requested is not None:
        return requested
    return 1 if m * batch <= SMALL_STEP_ENTRIES else None


def random_basis(m: int, k: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Uniform random ``W`` of shape (m, k) with unit column sums (signature-like)."""
    g = torch.Generator().manual_seed(int(seed))
    W = torch.rand((m, k), generator=g, dtype=torch.float64) + 1e-3
    return (W / W.sum(dim=0, keepdim=True)).to(dtype)


def _check_in_memory(X: Any, name: str) -> None:
    if isinstance(X, np.ndarray) or sp.issparse(X):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {X.shape}")
        check_block(X, name)


def build_and_train(
    params: dict[str, Any],
    V: Any,
    H: Any = None,
    *,
    progress: bool = False,
) -> tuple[UnrolledNMF, TrainState]:
    """Build the network for ``V`` and train it in this process (one rank of a group, or
    alone). The single code path behind :meth:`DNMF.fit`, the CLI and ``--nproc``.

    Parameters
    ----------
    params : dict
        Hyper-parameters (see :class:`DNMF`), already validated.
    V : path, array (m, n), sparse matrix or MatrixSource
    H : path or array (k, n), optional
        Known coefficients (supervised).
    progress : bool

    Returns
    -------
    model : UnrolledNMF
    state : TrainState
    """
    p = _effective(params)
    rank, world = dist_info()
    # resolved first: CUDA without a GPU (or with several ranks) fails before any reading
    device = multi_process_device(p["device"], world)
    tdtype = _DTYPES[p["dtype"]]
    _check_in_memory(V, "V")
    sup = p["mode"] == "supervised"
    if sup and H is None:
        raise ValueError("supervised mode needs the known coefficients H (k × n)")
    if not sup and H is not None:
        raise ValueError("H is only used in supervised mode; use mode='supervised'")
    if H is not None:
        _check_in_memory(H, "H")
    bs = p["batch_size"]
    src = open_source(V, p["block_cols"])
    m, n = src.shape
    k = int(p["n_components"])
    if n == 0 or m == 0:
        raise ValueError(f"V has shape {(m, n)}; it needs at least one row and column")
    if not sup and k > min(m, n):
        raise ValueError(f"n_components={k} is out of range: it must be <= min(m, n) = {min(m, n)}")
    if H is not None:
        hk = open_source(H).shape if not isinstance(H, np.ndarray) else H.shape
        if tuple(hk) != (k, n):
            raise ValueError(
                f"H must have shape (n_components, n_samples) = {(k, n)}, got {tuple(hk)}"
            )
    per_rank = None if bs is None or bs >= n else max(1, bs // world)
    dataset = ColumnShardDataset(
        src,
        H,
        batch_size=per_rank,
        block_cols=p["block_cols"],
        shuffle=per_rank is not None,
        seed=p["seed"],
        rank=rank,
        world_size=world,
        dtype=np.float64 if tdtype == torch.float64 else np.float32,
    )
    torch.manual_seed(p["seed"])
    model = UnrolledNMF(
        m,
        k,
        p["n_layers"],
        p["loss"],
        p["lambda1"],
        p["lambda2"],
        learn_lambdas=bool(p["learn_lambdas"]),
        dtype=tdtype,
        layer=p["layer"],
        start=p["start"],
    ).to(device)
    W0: torch.Tensor | None = None
    if sup:
        if p["init"] == "constant":
            model.init_constant(1.0)
        else:
            # start from exact MU steps with the least-squares basis of the training data
            hh, vh = gram_statistics(dataset, torch.float64, device)
            model.init_from_w(nnls_w_from_gram(hh, vh))
    elif p["init"] == "constant":
        model.init_constant(0.1)
        W0 = torch.full((m, k), 1.0 / m, dtype=tdtype, device=device)
    else:
        # drawn on the CPU whatever the device: the same seed gives the same start anywhere
        W0 = random_basis(m, k, p["seed"], tdtype).to(device)
        model.init_from_w(W0)
    broadcast_model_(model, W0)
    optimizer = make_optimizer(model, p["lr"])
    state = TrainState(W=W0)
    ckpt = p["checkpoint_path"]
    # the device is recorded but not part of the fingerprint: checkpoints resume anywhere
    extra = {"params": json.dumps(_fingerprint(p), sort_keys=True), "device": str(device)}
    if p["resume"]:
        if not ckpt or not Path(ckpt).exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt!r}")
        state, got = load_checkpoint(ckpt, model, optimizer)
        if got.get("params") != extra["params"]:
            raise ValueError(
                f"checkpoint {ckpt!r} was written with other hyper-parameters: "
                f"{got.get('params')} vs {extra['params']}"
            )
        logger.info("resumed from %s at epoch %d step %d", ckpt, state.epoch, state.step)
    config = TrainConfig(
        mode=p["mode"],
        lr=p["lr"],
        epochs=p["epochs"],
        batch_size=bs,
        num_workers=p["num_workers"],
        checkpoint_every=p["checkpoint_every"],
        checkpoint_path=ckpt,
        progress=progress,
        keep_best=bool(p["keep_best"]),
    )
    step_cols = n // world if per_rank is None else per_rank
    with torch_threads(auto_threads(m, step_cols, p["n_threads"])):
        state = train(model, dataset, config, optimizer, state, checkpoint_extra=extra)
    return model, state


def _fingerprint(p: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters that must match between a checkpoint and the run resuming it."""
    keys = (
        "n_components",
        "n_layers",
        "mode",
        "loss",
        "lambda1",
        "lambda2",
        "learn_lambdas",
        "lr",
        "batch_size",
        "init",
        "dtype",
        "seed",
        "block_cols",
        "keep_best",
    )
    out = {key: p[key] for key in keys}
    # the paper's layers leave the fingerprint as it was: older MU checkpoints still resume
    if p["layer"] != "mu" or p["start"] is not None:
        out["layer"], out["start"] = p["layer"], p["start"]
    return out


def _spawn_entry(
    rank: int,
    world: int,
    port: int,
    params: dict[str, Any],
    V: Any,
    H: Any,
    out: str,
    progress: bool,
) -> None:
    """Body of one ``--nproc`` process: join the gloo group, train, rank 0 saves."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    init_distributed(rank, world, port)
    try:
        model, state = build_and_train(params, V, H, progress=progress and rank == 0)
        if rank == 0:
            torch.save(_payload(model, state), out)
    finally:
        leave_process_group()


def _payload(model: UnrolledNMF, state: TrainState) -> dict[str, Any]:
    """The fitted state with every tensor on the CPU (device independent)."""
    return to_cpu(
        {
            "model": model.state_dict(),
            "W": state.W,
            "history": list(state.history),
            "epoch_seconds": list(state.epoch_seconds),
            "epoch": state.epoch,
            "step": state.step,
            "best_epoch": -1 if state.best is None else int(state.best["epoch"]),
        }
    )


def _labels_list(labels: Any) -> list[str] | None:
    return None if labels is None else [str(x) for x in np.asarray(labels).tolist()]


class DNMF:
    """Deep unrolled NMF (Nasser, Eldar & Sharan 2021): ``n_layers`` unrolled steps of an
    iteration for ``H`` whose matrices (and steps) are learned.

    With ``layer="mu"`` (the paper's, the default) each layer computes
    ``H ← H ⊙ (B_l V) / (A_l H + λ2 H + λ1 + ε)`` (Frobenius; the KL layer is the KL MU step
    with learned ``W``/``Wᵀ`` stand-ins) from ``H0 = 1``. ``layer="pgd"`` unrolls
    accelerated projected gradient (LISTA-style), ``layer="hals"`` one HALS coordinate
    sweep per layer, both Frobenius only, from a learned clipped least-squares start (see
    :mod:`scalenmf.models.deep.layers`). Supervised
    training minimizes ``(1/n) Σ_j ‖ĥ_j − h_j‖²`` against known ``H`` and learns λ1, λ2;
    unsupervised training minimizes the regularized objective
    ``(1/n)[½‖V − WĤ‖² + λ1 ΣĤ + λ2/2 ‖Ĥ‖²]`` (or its KL form) with fixed λ, and refits
    ``W`` by NNLS from ``ĤĤᵀ`` and ``VĤᵀ`` after every step. MU parameters are clamped
    ``≥ 0`` after each step; the other layers are non-negative by a ``relu``.

    Parameters
    ----------
    n_components : int
        ``k``.
    n_layers : int, default 10
        Depth (unrolled MU steps).
    mode : {"supervised", "unsupervised"}
    loss : {"frobenius", "kl"}
    lambda1, lambda2 : float, default 0
        L1 / L2 penalties on ``H``: initial values when learned, else fixed.
    learn_lambdas : bool, optional
        Default: True when supervised; must be False when unsupervised.
    lr : float, optional
        Adam learning rate; default 1e-3 supervised, 5e-4 unsupervised (the paper's) for
        "mu", :data:`RELU_LR` (relative steps) for "pgd" and "hals".
    epochs : int, default 500
    batch_size : int, optional
        Global mini-batch size in columns; ``None`` (default) trains full batch.
    num_workers : int, default 0
        DataLoader reader processes per training process.
    nproc : int, default 1
        Data-parallel training processes (gloo on 127.0.0.1).
    init : {"mu", "constant"}, default "mu"
        "mu": layers start as exact MU steps (supervised: with the NNLS basis of the
        training data; unsupervised: with a seeded random basis). "constant": the paper's
        initialisation (all entries 1.0 supervised / 0.1 unsupervised, ``W0 = 1/m``).
    dtype : {"float32", "float64"}
    seed : int
    block_cols : int, optional
        Column-block width for in-memory input (stores keep their chunking).
    checkpoint_every : int, default 0
        Write a checkpoint every this many optimiser steps.
    checkpoint_path : str, optional
    resume : bool
        Continue from ``checkpoint_path``.
    n_threads : int, optional
        torch intra-op threads while fitting / transforming; default: 1 for small steps
        (≤ 2M matrix entries, where threads only add overhead), else torch's default.
    keep_best : bool, default True
        End with the parameters of the epoch with the lowest training loss (Adam on the
        multiplicative layers is noisy late in training); False keeps the last epoch's.
    layer : {"mu", "pgd", "hals"}, default "mu"
        The iteration each layer unrolls: the paper's multiplicative update, accelerated
        projected gradient with learned matrices, steps and momenta, or one HALS sweep
        with a learned step per coordinate. "pgd" and "hals" support only
        ``loss="frobenius"`` and ``init="mu"`` (each starts as the exact iteration).
    start : {"ones", "lsq"}, optional
        ``H0``: all ones (the paper's; the only one for "mu") or the learned clipped
        least-squares projection ``relu(P V − q)``, initialised at the regularized
        pseudo-inverse of the basis (default for "pgd" and "hals").
    device : {"cpu", "cuda", "cuda:N", "auto"}, default "cpu"
        Where training and inference run: the network, the basis, the batches, the loss
        and statistics and the optimiser state live there. ``"auto"`` is the GPU when torch
        sees one, else the CPU, resolved where the work runs (each Dask worker of
        :meth:`transform_to_zarr` for itself); ``"cuda"`` without a GPU is a ValueError.
        Training with ``nproc > 1`` (or under ``torchrun``) runs on the CPU: ``"auto"``
        means the CPU there and a CUDA device is refused. The fitted model, saved models
        and checkpoints are device independent.

    Attributes
    ----------
    model_ : UnrolledNMF
        On the CPU; :meth:`transform` uses a copy on ``device``.
    W_ : ndarray, shape (m, k)
        Fitted basis (unsupervised mode; None when supervised).
    lambdas_ : tuple of float
        Final ``(λ1, λ2)``.
    loss_history_ : list of float
        Mean training loss per epoch.
    best_epoch_ : int
        Index in ``loss_history_`` of the epoch whose parameters were kept (the last
        epoch when ``keep_best=False``).
    epoch_seconds_ : list of float
        Wall time of each epoch of the last ``fit`` (rank 0).
    n_features_in_ : int
    feature_labels_ : list of str or None
        Row labels of the training data (checked against the input of ``transform``).
    component_labels_ : list of str
        Row labels of the training ``H`` when it had them, else ``F1..Fk``.
    """

    def __init__(
        self,
        n_components: int,
        n_layers: int = 10,
        mode: str = "supervised",
        loss: str = "frobenius",
        lambda1: float = 0.0,
        lambda2: float = 0.0,
        learn_lambdas: bool | None = None,
        lr: float | None = None,
        epochs: int = 500,
        batch_size: int | None = None,
        num_workers: int = 0,
        nproc: int = 1,
        init: str = "mu",
        dtype: str = "float32",
        seed: int = 0,
        block_cols: int | None = None,
        checkpoint_every: int = 0,
        checkpoint_path: str | None = None,
        resume: bool = False,
        n_threads: int | None = None,
        keep_best: bool = True,
        device: str = "cpu",
        layer: str = "mu",
        start: str | None = None,
    ) -> None:
        self.n_components = n_components
        self.n_layers = n_layers
        self.mode = mode
        self.loss = loss
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.learn_lambdas = learn_lambdas
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.nproc = nproc
        self.init = init
        self.dtype = dtype
        self.seed = seed
        self.block_cols = block_cols
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = checkpoint_path
        self.resume = resume
        self.n_threads = n_threads
        self.keep_best = keep_best
        self.device = device
        self.layer = layer
        self.start = start
        self.best_epoch_: int = -1
        self.model_: UnrolledNMF | None = None
        #: (device, copy of model_ there) of the last transform on a device other than the CPU
        self._device_model: tuple[torch.device, UnrolledNMF] | None = None
        self.W_: np.ndarray | None = None
        self.loss_history_: list[float] = []
        self.epoch_seconds_: list[float] = []
        self.feature_labels_: list[str] | None = None
        self.component_labels_: list[str] = []

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as a plain dict."""
        return {
            name: getattr(self, name)
            for name in (
                "n_components",
                "n_layers",
                "mode",
                "loss",
                "lambda1",
                "lambda2",
                "learn_lambdas",
                "lr",
                "epochs",
                "batch_size",
                "num_workers",
                "nproc",
                "init",
                "dtype",
                "seed",
                "block_cols",
                "checkpoint_every",
                "checkpoint_path",
                "resume",
                "n_threads",
                "keep_best",
                "device",
                "layer",
                "start",
            )
        }

    # ------------------------------------------------------------------ fit

    def fit(self, V: Any, H: Any = None, *, progress: bool = False) -> DNMF:
        """Train the network.

        Parameters
        ----------
        V : array (m, n), sparse matrix, Zarr store path, or MatrixSource
            Non-negative data, features × samples.
        H : array (k, n) or path, optional
            Known coefficients; required when ``mode="supervised"``.
        progress : bool
            Show a progress bar with the loss.

        Returns
        -------
        self
        """
        params = self.get_params()
        validate_params(params)
        if self.nproc > 1:
            multi_process_device(self.device, self.nproc)  # refuse CUDA before spawning
            payload = self._fit_spawned(params, V, H, progress)
        else:
            # under torchrun (WORLD_SIZE > 1) every launched process joins the group here
            created = maybe_init_from_env()
            try:
                rank = dist_info()[0]
                model, state = build_and_train(params, V, H, progress=progress and rank == 0)
            finally:
                if created:
                    leave_process_group()
            payload = _payload(model, state)
        src = open_source(V, self.block_cols)
        self._set_fitted(payload, src.shape[0])
        self.feature_labels_ = _labels_list(src.row_labels)
        hlab = open_source(H).row_labels if H is not None else None
        self.component_labels_ = _labels_list(hlab) or [
            f"F{i + 1}" for i in range(self.n_components)
        ]
        return self

    def _fit_spawned(
        self, params: dict[str, Any], V: Any, H: Any, progress: bool
    ) -> dict[str, Any]:
        import torch.multiprocessing as tmp

        with tempfile.TemporaryDirectory(prefix="dnmf-") as d:
            out = os.path.join(d, "result.pt")
            tmp.spawn(
                _spawn_entry,
                args=(self.nproc, free_port(), params, V, H, out, progress),
                nprocs=self.nproc,
                join=True,
            )
            return dict(torch.load(out, weights_only=True))

    def _set_fitted(self, payload: dict[str, Any], m: int) -> None:
        p = _effective(self.get_params())
        model = UnrolledNMF(
            m,
            self.n_components,
            self.n_layers,
            self.loss,
            self.lambda1,
            self.lambda2,
            learn_lambdas=bool(p["learn_lambdas"]),
            dtype=_DTYPES[self.dtype],
            layer=self.layer,
            start=self.start,
        )
        model.load_state_dict(payload["model"])
        model.eval()
        self.model_ = model
        self._device_model = None
        W = payload.get("W")
        self.W_ = None if W is None else W.detach().cpu().numpy()
        self.loss_history_ = [float(x) for x in payload.get("history", [])]
        self.epoch_seconds_ = [float(x) for x in payload.get("epoch_seconds", [])]
        best = int(payload.get("best_epoch", -1))
        self.best_epoch_ = best if best >= 0 else len(self.loss_history_) - 1
        self.n_features_in_ = m

    @property
    def lambdas_(self) -> tuple[float, float]:
        """Final ``(λ1, λ2)``."""
        model = self._fitted()
        lam = model.lambdas.detach().cpu().numpy()
        return float(lam[0]), float(lam[1])

    def _fitted(self) -> UnrolledNMF:
        if self.model_ is None:
            raise RuntimeError("this DNMF instance is not fitted yet; call fit() or DNMF.load()")
        return self.model_

    def _model_on_device(self) -> UnrolledNMF:
        """The fitted network on ``self.device`` (``model_`` itself on the CPU; elsewhere a
        copy kept for the next call)."""
        from scalenmf.models.deep.inference import on_device

        validate_params(self.get_params())
        model = self._fitted()
        net = on_device(model, self.device)
        if net is model:
            return model
        if self._device_model is not None and self._device_model[0] == net.B.device:
            return self._device_model[1]
        self._device_model = (net.B.device, net)
        return net

    # ------------------------------------------------------------------ inference

    def transform(self, V: Any, *, batch_size: int | None = 65536) -> np.ndarray:
        """Coefficients for the columns of ``V`` (the basis stays fixed).

        Parameters
        ----------
        V : array (m, n), sparse matrix, path, or MatrixSource
        batch_size : int, optional
            Columns pushed through the network at once (bounds memory).

        Returns
        -------
        ndarray, shape (k, n)
        """
        from scalenmf.models.deep.inference import transform_source

        model = self._model_on_device()
        _check_in_memory(V, "V")
        src = open_source(V, self.block_cols)
        self._check_features(src)
        width = max((b - a for a, b in src.block_bounds), default=1)
        with torch_threads(
            auto_threads(src.shape[0], min(width, batch_size or width), self.n_threads)
        ):
            return transform_source(model, src, batch_size=batch_size)

    def transform_to_zarr(
        self,
        V: Any,
        out: str | os.PathLike[str],
        *,
        scheduler: Any = None,
        batch_size: int | None = 65536,
        overwrite: bool = False,
        progress: bool = False,
    ) -> str:
        """Stream ``V`` through the network and write a result store with ``H`` (and ``W``).

        Parameters
        ----------
        V : path, array (m, n), sparse matrix or MatrixSource
        out : path
            Zarr store to create atomically (see :mod:`scalenmf.models.deep.inference`).
        scheduler : str or distributed.Client, optional
            Dask scheduler: each worker transforms its own blocks, on the device it
            resolves ``device`` to.
        batch_size : int, optional
        overwrite : bool
        progress : bool

        Returns
        -------
        str
        """
        from scalenmf.models.deep.inference import transform_to_zarr

        validate_params(self.get_params())
        # with Dask the workers resolve the device; here, before anything is written
        model = self._fitted() if scheduler is not None else self._model_on_device()
        src = open_source(V, self.block_cols)
        self._check_features(src)
        attrs = {
            "mode": self.mode,
            "loss": self.loss,
            "n_layers": self.n_layers,
            "layer": self.layer,
            "start": self._fitted().start,
            "lambdas": list(self.lambdas_),
        }
        return transform_to_zarr(
            model,
            src,
            out,
            W=self.W_,
            scheduler=scheduler,
            batch_size=batch_size,
            overwrite=overwrite,
            attrs=attrs,
            component_labels=self.component_labels_ or None,
            progress=progress,
            device=self.device,
        )

    def _check_features(self, src: Any) -> None:
        """Same number of features as in training and, when both are labelled, the same
        labels in the same order (channels must be aligned by label, never position)."""
        model = self._fitted()
        if src.shape[0] != model.n_features:
            raise ValueError(
                f"input has {src.shape[0]} features (rows) but the model was trained on "
                f"{model.n_features}"
            )
        got = _labels_list(src.row_labels)
        if got is not None and self.feature_labels_ is not None and got != self.feature_labels_:
            raise ValueError(
                "input row labels differ from the training data's (order or names); "
                "reorder the rows to the training order first"
            )

    def fit_transform(self, V: Any, H: Any = None) -> np.ndarray:
        """``fit(V, H)`` then ``transform(V)``; returns an array of shape (k, n)."""
        return self.fit(V, H).transform(V)

    def reconstruction_error(self, V: np.ndarray, H: np.ndarray | None = None) -> float:
        """Mean over columns of ``‖v − W ĥ‖²`` (unsupervised mode).

        Parameters
        ----------
        V : ndarray, shape (m, n)
        H : ndarray, shape (k, n), optional
            Coefficients; ``transform(V)`` when omitted.
        """
        if self.W_ is None:
            raise RuntimeError("reconstruction_error needs W_, available in unsupervised mode")
        Hh = self.transform(V) if H is None else H
        R = np.asarray(V, dtype=np.float64) - self.W_.astype(np.float64) @ Hh
        return float((R * R).sum() / V.shape[1])

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write the fitted model to a directory: ``config.json`` and ``weights.pt``
        (tensors only). The directory appears only when complete."""
        from scalenmf.models.deep.inference import atomic_dir

        model = self._fitted()
        config = {
            "format": FORMAT,
            "params": {
                k: v
                for k, v in self.get_params().items()
                if k not in ("checkpoint_path", "resume", "nproc", "num_workers")
            },
            "n_features": int(model.n_features),
            "loss_history": self.loss_history_,
            "lambdas": list(self.lambdas_),
            "feature_labels": self.feature_labels_,
            "component_labels": self.component_labels_,
        }
        weights: dict[str, Any] = {"model": model.state_dict()}
        if self.W_ is not None:
            weights["W"] = torch.from_numpy(np.ascontiguousarray(self.W_))
        with atomic_dir(path, overwrite=overwrite) as tmp:
            Path(tmp, "config.json").write_text(json.dumps(config, indent=2))
            torch.save(weights, os.path.join(tmp, "weights.pt"))

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None) -> DNMF:
        """Restore a model written by :meth:`save` (weights only; nothing else unpickled).

        Parameters
        ----------
        path : path
        device : {"cpu", "cuda", "cuda:N", "auto"}, optional
            Device for inference (and further training) instead of the saved one: a
            model trained on a GPU loads on a machine without one with ``device="cpu"``.
        """
        root = Path(path)
        cfg_file, w_file = root / "config.json", root / "weights.pt"
        if not cfg_file.exists() or not w_file.exists():
            raise FileNotFoundError(
                f"{str(root)!r} is not a saved DNMF model (config.json, weights.pt)"
            )
        config = json.loads(cfg_file.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(
                f"{str(root)!r} has format {config.get('format')!r}, expected {FORMAT!r}"
            )
        params = dict(config["params"])
        if device is not None:
            params["device"] = device
        est = cls(**params)
        weights = torch.load(w_file, weights_only=True, map_location="cpu")
        payload = {
            "model": weights["model"],
            "W": weights.get("W"),
            "history": config.get("loss_history", []),
        }
        est._set_fitted(payload, int(config["n_features"]))
        est.feature_labels_ = config.get("feature_labels")
        est.component_labels_ = list(config.get("component_labels") or [])
        return est
