"""The DNMF training loop, kept outside the module: optimiser, clamping, W refit,
mini-batches from column shards, data-parallel gradient reduction, checkpoints.

Data parallelism is done by hand rather than with DistributedDataParallel so that the
result is exactly the full-batch gradient whatever the split: every rank computes the
*sum* of its per-column losses divided by the *global* number of columns in the step, and
the gradients are summed over ranks. Ranks whose shards are exhausted keep taking part with
an empty batch until every rank is done, so uneven shards cannot dead-lock.

Training runs on the device of the model's parameters (the estimator puts them there):
batches, the basis ``W``, the loss and statistics accumulators and the optimiser state
live on it. Checkpoints are written with every tensor on the CPU, so that one written on a
GPU resumes on a CPU and the other way round. Multi-process training runs on the CPU over
gloo (see :func:`multi_process_device`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from scalenmf.kernels.torch_kernels import resolve_device
from scalenmf.models.deep.data import (
    Batch,
    ColumnShardDataset,
    batch_to,
    load_all,
    make_loader,
)
from scalenmf.models.deep.layers import UnrolledNMF
from scalenmf.models.deep.mu import (
    kl_divergence,
    kl_w_statistics,
    kl_w_update,
    nnls_w_from_gram,
)
from scalenmf.models.deep.optim import Adam

logger = logging.getLogger(__name__)

#: Coordinate-descent sweeps of the per-step W refit. Warm-started from the previous basis
#: the refit is nearly converged after a few sweeps; the cap bounds the cost when HHᵀ is
#: ill-conditioned (correlated signatures), and the remaining gap closes over the next steps.
REFIT_SWEEPS = 10


@dataclass
class TrainConfig:
    """How to train (not what the model is).

    Parameters
    ----------
    mode : {"supervised", "unsupervised"}
    lr : float
        Adam learning rate.
    epochs : int
        Passes over the data (one optimiser step per epoch in full-batch mode).
    batch_size : int or None
        Global mini-batch size (split evenly over ranks); ``None`` trains full batch.
    num_workers : int
        DataLoader reader processes per rank (mini-batch mode).
    checkpoint_every : int
        Write a checkpoint every this many optimiser steps (0: never).
    checkpoint_path : str or None
        Checkpoint file.
    progress : bool
        Show a progress bar (rank 0 only).
    keep_best : bool
        End with the parameters (and basis) of the epoch with the lowest training loss
        instead of the last ones. Adam on the multiplicative layers is noisy late in
        training (a loss can double in one step), so the last epoch is a poor pick.
    """

    mode: str = "supervised"
    lr: float = 1e-3
    epochs: int = 500
    batch_size: int | None = None
    num_workers: int = 0
    checkpoint_every: int = 0
    checkpoint_path: str | None = None
    progress: bool = False
    keep_best: bool = True


@dataclass
class TrainState:
    """Everything a checkpoint needs to resume training exactly.

    Attributes
    ----------
    W : Tensor, shape (m, k) or None
        Current basis (unsupervised).
    stats : list of Tensor
        Running Gram statistics ``[HHᵀ (k, k), VHᵀ (m, k)]`` per column (unsupervised
        Frobenius, mini-batch).
    epoch : int
        Completed epochs.
    step : int
        Optimiser steps taken.
    step_in_epoch : int
        Steps taken in the current, unfinished epoch.
    history : list of float
        Mean loss per completed epoch.
    epoch_loss_sum, epoch_n : float, int
        Loss sum and column count of the current, unfinished epoch.
    epoch_seconds : list of float
        Wall time of each epoch run by this process (not checkpointed).
    snapshot : dict or None
        Model, optimiser and basis before the last step, to undo it if the next loss is
        not finite (not checkpointed).
    backtracked : int
        Steps undone because of a non-finite loss (not checkpointed).
    best : dict or None
        ``{"loss", "epoch", "model", "W"}`` of the best epoch so far (``keep_best``).
        Full batch: the parameters that produced the epoch's loss; mini-batch: those at
        the end of the epoch.
    """

    W: torch.Tensor | None = None
    stats: list[torch.Tensor] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    history: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_n: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    snapshot: Any = None
    backtracked: int = 0
    best: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op in a single process)."""
    if dist_info()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 for the gloo rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(rank: int, world_size: int, port: int) -> None:
    """Join a gloo process group on 127.0.0.1.

    Always gloo: multi-process training runs on the CPU (:func:`multi_process_device`), and
    nccl cannot reduce CPU tensors, so choosing it because a GPU is present would break
    CPU training on GPU machines.
    """
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )


def leave_process_group() -> None:
    """Destroy the process group once every rank got here.

    Without the barrier a rank that finishes first tears down its gloo connections while
    a peer is still draining its last collective; the peer's transport thread then
    aborts the process ("terminate called without an active exception").
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def maybe_init_from_env() -> bool:
    """Join the process group described by ``torchrun``'s environment, if any.

    Returns
    -------
    bool
        True when this call created the group (the caller should destroy it).
    """
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("gloo", init_method="env://")  # CPU ranks, as init_distributed
    return True


def multi_process_device(device: str | None, world_size: int) -> torch.device:
    """The torch device of a training process among ``world_size`` data-parallel ones.

    One process resolves ``device`` as :func:`scalenmf.kernels.torch_kernels.resolve_device`
    does. Several processes train on the CPU: ``"auto"`` means the CPU there and an explicit
    CUDA device is refused, because one GPU per rank over nccl is not supported (it could
    not be tested; gloo reduces CPU tensors only in this code path).

    Raises
    ------
    ValueError
        For a CUDA device with ``world_size > 1``, or CUDA asked for without a GPU.
    """
    if world_size <= 1:
        return resolve_device(device)
    if device is None or str(device) in ("auto", "cpu"):
        return torch.device("cpu")
    raise ValueError(
        f"device={device!r} with {world_size} training processes is not supported: "
        "multi-process DNMF training runs on the CPU (gloo); use nproc=1 to train on one GPU"
    )


def broadcast_model_(model: torch.nn.Module, W: torch.Tensor | None) -> None:
    """Make every rank start from rank 0's parameters and basis."""
    if dist_info()[1] == 1:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
        if W is not None:
            dist.broadcast(W, src=0)


# ----------------------------------------------------------------------------- losses


def supervised_loss_sum(H_hat: torch.Tensor, H_true: torch.Tensor) -> torch.Tensor:
    """``Σ_j ‖ĥ_j − h_j‖²`` over the batch columns (divide by the column count for MSE).

    Parameters
    ----------
    H_hat, H_true : Tensor, shape (k, b)
    """
    return ((H_hat - H_true) ** 2).sum()


def unsupervised_loss_sum(
    V: torch.Tensor, W: torch.Tensor, H_hat: torch.Tensor, lambdas: torch.Tensor, loss: str
) -> torch.Tensor:
    """Batch sum of the regularized objective ``J`` with the basis ``W`` held constant.

    Evaluated in float64 whatever the model's dtype: a float32 network can emit large
    coefficients (a learned denominator near 0 with λ = 0) whose squared residuals overflow
    float32 although the coefficients themselves are finite.

    Parameters
    ----------
    V : Tensor, shape (m, b)
    W : Tensor, shape (m, k)
    H_hat : Tensor, shape (k, b)
    lambdas : Tensor, shape (2,)
        ``(λ1, λ2)``.
    loss : {"frobenius", "kl"}

    Returns
    -------
    Tensor, shape (), float64
    """
    V, W, H = V.double(), W.double(), H_hat.double()
    lam1, lam2 = lambdas[0].double(), lambdas[1].double()
    reg = lam1 * H.sum() + 0.5 * lam2 * (H * H).sum()
    if loss == "kl":
        return kl_divergence(V, W @ H) + reg
    R = V - W @ H
    return 0.5 * (R * R).sum() + reg


def gram_statistics(
    dataset: ColumnShardDataset, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, ...]:
    """One pass over this rank's shards: ``HHᵀ`` (k, k) and ``VHᵀ`` (m, k), summed over ranks.

    Used to fit the NNLS basis ``W`` from known ``H`` (supervised initialisation). The
    products are accumulated on ``device``.
    """
    hh: torch.Tensor | None = None
    vh: torch.Tensor | None = None
    for j in dataset.reader_blocks():
        for b in dataset.iter_block(j):
            Hb, Vb = b.H.to(device, dtype), b.V.to(device, dtype)
            hh = Hb @ Hb.T if hh is None else hh + Hb @ Hb.T
            vh = Vb @ Hb.T if vh is None else vh + Vb @ Hb.T
    if hh is None or vh is None:
        # a rank without columns (more ranks than blocks) still joins the reductions
        k, m = dataset.n_components, dataset.shape[0]
        hh = torch.zeros((k, k), dtype=dtype, device=device)
        vh = torch.zeros((m, k), dtype=dtype, device=device)
    return all_sum_(hh), all_sum_(vh)


# ----------------------------------------------------------------------------- one step


def w_statistics(
    V: torch.Tensor, W: torch.Tensor, H_hat: torch.Tensor, loss: str
) -> list[torch.Tensor]:
    """This rank's partial statistics for the basis refit, from one forward pass.

    Frobenius: ``[ĤĤᵀ (k, k), VĤᵀ (m, k)]``; KL: the MU numerator ``(V ⊘ WĤ)Ĥᵀ`` (m, k)
    and ``Ĥ1`` (k,). They depend only on the pre-step network output, so they travel in
    the step's single all-reduce with the gradients.
    """
    H = H_hat.detach()
    if loss == "kl":
        return list(kl_w_statistics(V, W, H))
    return [H @ H.T, V @ H.T]


def _refit_w(
    state: TrainState, stats: list[torch.Tensor], loss: str, n_step: int, n_total: int
) -> None:
    """Update the basis after an optimiser step from this step's summed statistics.

    Frobenius: NNLS from Gram statistics, by at most ``REFIT_SWEEPS`` warm-started exact
    coordinate-descent sweeps. In full batch the statistics are exact; with mini-batches
    they are a running average whose memory is about one epoch (``ρ = 1 − b/n``).
    KL: one multiplicative KL step for ``W`` from the step's (summed) statistics.
    """
    assert state.W is not None
    dtype = state.W.dtype
    if loss == "kl":
        num, den = (t.to(dtype) for t in stats)
        state.W = kl_w_update(state.W, num, den)
        return
    hh, vh = (t.to(dtype) / n_step for t in stats)
    rho = max(0.0, 1.0 - n_step / n_total)
    if state.stats and rho > 0:
        state.stats = [rho * state.stats[0] + (1 - rho) * hh, rho * state.stats[1] + (1 - rho) * vh]
    else:
        state.stats = [hh, vh]
    state.W = nnls_w_from_gram(state.stats[0], state.stats[1], state.W, max_sweeps=REFIT_SWEEPS)


#: How many times a step may be retried with a halved learning rate after a non-finite loss.
MAX_BACKTRACKS = 20


def _snapshot(model: UnrolledNMF, optimizer: Adam, state: TrainState) -> dict:
    """Copies of everything one optimiser step changes (to undo a diverging step)."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "W": None if state.W is None else state.W.clone(),
        "stats": [t.clone() for t in state.stats],
    }


def _restore(model: UnrolledNMF, optimizer: Adam, state: TrainState) -> None:
    """Undo the last step and halve the learning rate (it led to a non-finite loss)."""
    snap = state.snapshot
    model.load_state_dict(snap["model"])
    optimizer.load_state_dict(snap["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] *= 0.5
    state.W, state.stats = snap["W"], list(snap["stats"])


def _stat_shapes(model: UnrolledNMF) -> list[tuple[int, ...]]:
    m, k = model.n_features, model.n_components
    return [(m, k), (k,)] if model.loss == "kl" else [(k, k), (m, k)]


def _forward_backward(
    model: UnrolledNMF,
    optimizer: Adam,
    batch: Batch | None,
    state: TrainState,
    mode: str,
) -> torch.Tensor:
    """Loss, gradients, basis statistics and column count of this rank's batch, summed
    over ranks in ONE all-reduce (per-step latency, not bandwidth, limits data parallelism).

    Gradients are of the unnormalised loss sum; the caller divides by the global count.

    Returns
    -------
    Tensor, float64
        ``[Σ gradients…, Σ loss, Σ statistics… (unsupervised), Σ columns]``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device = model.B.device
    optimizer.zero_grad(set_to_none=False)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_local = 0 if batch is None else int(batch.V.shape[1])
    stats: list[torch.Tensor] = []
    if batch is not None and n_local > 0:
        batch = batch_to(batch, device)
        V = batch.V.to(model.B.dtype)
        H_hat = model(V)
        if mode == "supervised":
            loss_sum = supervised_loss_sum(H_hat.double(), batch.H.double())
        else:
            assert state.W is not None
            loss_sum = unsupervised_loss_sum(V, state.W, H_hat, model.lambdas, model.loss)
            stats = w_statistics(V, state.W, H_hat, model.loss)
        loss_sum.backward()
    elif mode == "unsupervised":
        # an idle rank still joins the reduction, with zero statistics
        stats = [
            torch.zeros(shape, dtype=torch.float64, device=device) for shape in _stat_shapes(model)
        ]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    parts = [g.reshape(-1).double() for g in grads] + [loss_sum.detach().reshape(1)]
    parts += [t.reshape(-1).double() for t in stats]
    parts.append(torch.tensor([float(n_local)], dtype=torch.float64, device=device))
    return all_sum_(torch.cat(parts))


def train_step(
    model: UnrolledNMF,
    optimizer: Adam,
    batch: Batch | None,
    state: TrainState,
    mode: str,
    n_total: int,
) -> tuple[float, int]:
    """One synchronous optimiser step over the union of the ranks' batches.

    If the loss or a gradient is not finite (the multiplicative layers can overflow when a
    learned denominator reaches 0 with λ = 0), the previous step is undone and the step is
    retried with half the learning rate, up to ``MAX_BACKTRACKS`` times. All ranks see the
    same summed values, so they take the same decision.

    Returns
    -------
    loss_sum : float
        Global sum of per-column losses of the step (0 when no rank had data).
    n_step : int
        Global number of columns in the step; 0 means every rank is out of data.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    n_grad = sum(p.numel() for p in params)
    for attempt in range(MAX_BACKTRACKS + 1):
        flat = _forward_backward(model, optimizer, batch, state, mode)
        n_step = round(float(flat[-1]))
        if n_step == 0:
            return 0.0, 0
        if bool(torch.isfinite(flat).all()):
            break
        if state.snapshot is None or attempt == MAX_BACKTRACKS:
            raise FloatingPointError(
                f"DNMF training diverged at step {state.step} (non-finite loss); use a "
                "smaller lr, lambda1 > 0 or dtype='float64'"
            )
        # warn once per run; repeated backtracking is logged at debug level
        log = logger.warning if not state.backtracked else logger.debug
        log("non-finite loss at step %d: undoing the last step, halving lr", state.step)
        state.backtracked += 1
        _restore(model, optimizer, state)
    state.snapshot = _snapshot(model, optimizer, state)
    offset = 0
    for p in params:
        size = p.numel()
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_((flat[offset : offset + size] / n_step).view_as(p).to(p.dtype))
        offset += size
    total = float(flat[n_grad])
    optimizer.step()
    model.clamp_()
    if mode == "unsupervised":
        stats, offset = [], n_grad + 1
        for shape in _stat_shapes(model):
            size = math.prod(shape)
            stats.append(flat[offset : offset + size].view(shape))
            offset += size
        _refit_w(state, stats, model.loss, n_step, n_total)
    state.step += 1
    state.step_in_epoch += 1
    return total, n_step


# ----------------------------------------------------------------------------- checkpoints


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: to_cpu(v) for key, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: to_device(v, device) for key, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def save_checkpoint(
    path: str | os.PathLike[str],
    model: UnrolledNMF,
    optimizer: Adam,
    state: TrainState,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a resumable checkpoint (tensors and plain values only) atomically.

    Every tensor is written from the CPU, so the checkpoint resumes on any device.
    """
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "W": state.W,
        "stats": list(state.stats),
        "epoch": state.epoch,
        "step": state.step,
        "step_in_epoch": state.step_in_epoch,
        "history": list(state.history),
        "epoch_loss_sum": state.epoch_loss_sum,
        "epoch_n": state.epoch_n,
        "best": state.best,
        "extra": extra or {},
    }
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    torch.save(to_cpu(payload), tmp)
    os.replace(tmp, target)


def load_checkpoint(
    path: str | os.PathLike[str], model: UnrolledNMF, optimizer: Adam
) -> tuple[TrainState, dict[str, Any]]:
    """Restore model, optimiser and loop state from :func:`save_checkpoint` output.

    Only tensors and plain containers are unpickled (``weights_only=True``). They are read
    onto the CPU and moved to the device of the model's parameters.
    """
    payload = torch.load(path, weights_only=True, map_location="cpu")
    device = model.B.device
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state = TrainState(
        W=to_device(payload["W"], device),
        stats=to_device(list(payload["stats"]), device),
        epoch=int(payload["epoch"]),
        step=int(payload["step"]),
        step_in_epoch=int(payload["step_in_epoch"]),
        history=[float(x) for x in payload["history"]],
        epoch_loss_sum=float(payload["epoch_loss_sum"]),
        epoch_n=int(payload["epoch_n"]),
        best=to_device(payload.get("best"), device),
    )
    return state, dict(payload.get("extra", {}))


# ----------------------------------------------------------------------------- the loop


def make_optimizer(model: UnrolledNMF, lr: float) -> Adam:
    """Adam over the trainable parameters (λ only when they are learned)."""
    return Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def train(
    model: UnrolledNMF,
    dataset: ColumnShardDataset,
    config: TrainConfig,
    optimizer: Adam,
    state: TrainState,
    *,
    callback: Callable[[int, float], None] | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> TrainState:
    """Train ``model`` for ``config.epochs`` epochs (continuing from ``state``).

    Parameters
    ----------
    model : UnrolledNMF
    dataset : ColumnShardDataset
        This rank's view of the data (its ``batch_size`` is the per-rank batch; ``None``
        means full batch).
    config : TrainConfig
    optimizer : Adam
    state : TrainState
        Starting state (fresh, or loaded from a checkpoint); ``state.W`` must hold the
        initial basis in unsupervised mode.
    callback : callable, optional
        ``callback(epoch, mean_loss)`` after each epoch.
    checkpoint_extra : dict, optional
        Plain JSON-like values stored in every checkpoint (hyper-parameters).

    Returns
    -------
    TrainState
    """
    rank, _ = dist_info()
    device = model.B.device
    n_total = dataset.shape[1]
    full_batch = dataset.batch_size is None
    # full batch: the data are copied to the device once and stay there
    resident = batch_to(load_all(dataset), device) if full_batch else None
    bar = tqdm(
        total=config.epochs,
        initial=state.epoch,
        disable=not config.progress or rank != 0,
        desc="dnmf train",
        unit="epoch",
    )
    try:
        while state.epoch < config.epochs:
            t_epoch = time.perf_counter()
            dataset.set_epoch(state.epoch)
            if resident is not None:
                batches: Any = iter([resident][state.step_in_epoch :])
            else:
                batches = iter(
                    make_loader(dataset, config.num_workers, pin_memory=device.type == "cuda")
                )
                # resume mid-epoch: replay the epoch's deterministic order up to the step
                for _ in range(state.step_in_epoch):
                    next(batches, None)
            while True:
                batch = next(batches, None)
                loss_sum, n_step = train_step(model, optimizer, batch, state, config.mode, n_total)
                if n_step == 0:
                    break
                state.epoch_loss_sum += loss_sum
                state.epoch_n += n_step
                if (
                    config.checkpoint_every
                    and config.checkpoint_path
                    and state.step % config.checkpoint_every == 0
                    and rank == 0
                ):
                    save_checkpoint(
                        config.checkpoint_path, model, optimizer, state, checkpoint_extra
                    )
            mean_loss = state.epoch_loss_sum / max(state.epoch_n, 1)
            if config.keep_best:
                _remember_if_best(model, state, mean_loss, full_batch)
            state.history.append(mean_loss)
            state.epoch_seconds.append(time.perf_counter() - t_epoch)
            state.epoch += 1
            state.step_in_epoch = 0
            state.epoch_loss_sum, state.epoch_n = 0.0, 0
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.5g}")
            if callback is not None:
                callback(state.epoch, mean_loss)
            logger.debug("epoch %d loss %.6g", state.epoch, mean_loss)
    finally:
        bar.close()
    if config.keep_best and state.best is not None:
        model.load_state_dict(state.best["model"])
        if state.best["W"] is not None:
            state.W = state.best["W"].clone()
    return state


def _remember_if_best(
    model: UnrolledNMF, state: TrainState, mean_loss: float, full_batch: bool
) -> None:
    """Keep a copy of the parameters behind the lowest epoch loss seen so far.

    Every rank sees the same global loss, so all ranks keep the same epoch.
    """
    if not math.isfinite(mean_loss):
        return
    if state.best is not None and mean_loss >= state.best["loss"]:
        return
    if full_batch and state.snapshot is not None:
        # the loss was computed before this epoch's single step: the snapshot produced it
        weights, W = state.snapshot["model"], state.snapshot["W"]
    else:
        weights = model.state_dict()
        W = state.W
    state.best = {
        "loss": float(mean_loss),
        "epoch": state.epoch,
        "model": {name: t.detach().clone() for name, t in weights.items()},
        "W": None if W is None else W.detach().clone(),
    }
