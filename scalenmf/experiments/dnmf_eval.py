"""Re-run the DNMF paper's evaluation, correctly, with fair baselines.

Protocol (per data set): k-fold cross-validation with disjoint folds; everything fitted on
the training columns only; every method scored with the same metric on the test columns.

* Supervised (synthetic sets, known H): score = mean over test columns of ``‖ĥ − h‖²``.
  Arms: DNMF with learned λ (``dnmf``), with λ fixed at 0 (``dnmf_fixed_lambda``), with the
  paper's constant initialisation (``dnmf_paper_init``); the least-squares basis ``W_ls`` of
  the training data (NNLS from ``V_train``, ``H_train``) with test H by NNLS (``nnls``), by
  MU at equal cost (``mu_L``: as many iterations as DNMF has layers), by 100 MU iterations
  (``mu_100``) and by MU to convergence (``mu_conv``); and the paper's MU baseline (MU from
  constant initialisation on ``V_train``, test H by 10 MU iterations: ``mu_paper``).
* Unsupervised (synthetic sets and BRCA-560, per λ): score = mean over test columns of
  ``‖v − W ĥ‖²`` (Frobenius) or of the KL divergence (KL). Arms: DNMF (``dnmf``: its W, its
  network for test H); MU from random and NNDSVD-A initialisation run to convergence with
  test H by MU to convergence (``mu_random``, ``mu_nndsvd``); NNLS test H with the random-MU
  basis (``nnls_mu_w``) and with DNMF's basis (``nnls_dnmf_w``; for KL: KL-MU to convergence,
  ``mu_conv_dnmf_w``); MU with DNMF's basis at equal cost and 100 iterations
  (``mu_L_dnmf_w``, ``mu_100_dnmf_w``); the paper's MU (constant initialisation, test H by
  100 iterations: ``mu_paper``).

``paper_leaky_test_index`` reproduces the split bug of the original code (``~index`` on an
integer index selects columns counted from the end, mostly training columns); it is used
only with ``EvalConfig(paper_split=True)`` (``--paper-split``), to show how much the leak
flatters every method, never for the headline numbers.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalenmf.models.deep.estimator import DNMF
from scalenmf.models.deep.mu import (
    frobenius_cost,
    kl_cost,
    kl_divergence,
    mu_step_h_frobenius,
    mu_step_h_kl,
    mu_step_w_frobenius,
    mu_step_w_kl,
    nnls_h,
    nnls_w_from_gram,
)

logger = logging.getLogger(__name__)

SUBSTITUTIONS = ("C>A", "C>G", "C>T", "T>A", "T>C", "T>G")
BASES = "ACGT"
#: Canonical channel order used internally: substitution-major, then 5′, then 3′ base.
CHANNELS = tuple(f"{a}[{s}]{b}" for s in SUBSTITUTIONS for a in BASES for b in BASES)
SYNSIG_SETS = (
    "syn.2.7a.7b.abst_sa.sa.96",
    "syn.2.7a.7b.abst_sp.sp",
    "syn.2.7a.7b.bladder.and.melanoma_sa.sa.96",
    "syn.2.7a.7b.bladder.and.melanoma_sp.sp",
    "syn.3.5.40.abst_sa.sa.96",
    "syn.3.5.40.abst_sp.sp",
    "syn.3.5.40.rcc.and.ovary_sa.sa.96",
    "syn.3.5.40.rcc.and.ovary_sp.sp",
    "syn.many.types_sa.sa.96",
    "syn.many.types_sp.sp",
    "syn.pancreas_sa.sa.96",
    "syn.pancreas_sp.sp",
)
BRCA_K = 12


# ----------------------------------------------------------------------------- data


#: Environment variable naming the data folder when ``--data`` is not given.
DATA_ENV = "SCALENMF_SHARED_DATA"


def default_data_dir() -> Path:
    """The data folder from ``$SCALENMF_SHARED_DATA``; without it ``--data`` is needed.

    Raises
    ------
    ValueError
        When the variable is not set.
    """
    import os

    folder = os.environ.get(DATA_ENV)
    if not folder:
        raise ValueError(
            "give the folder with synsig/ and icgc_brca560_sbs96_counts.npy as --data DIR "
            f"(or set {DATA_ENV})"
        )
    return Path(folder)


def channel_label(mutation: str, trinucleotide: str) -> str:
    """``("C>A", "ACA") -> "A[C>A]A"``: one label format for every source."""
    if len(trinucleotide) != 3 or trinucleotide[1] != mutation[0]:
        raise ValueError(f"inconsistent channel {mutation!r} / {trinucleotide!r}")
    return f"{trinucleotide[0]}[{mutation}]{trinucleotide[2]}"


def align_rows(labels: list[str], values: np.ndarray, what: str) -> np.ndarray:
    """Reorder rows of ``values`` from ``labels`` to :data:`CHANNELS` by label."""
    pos = {lab: i for i, lab in enumerate(labels)}
    missing = [c for c in CHANNELS if c not in pos]
    if missing or len(pos) != len(CHANNELS):
        raise ValueError(
            f"{what}: channels do not match the 96 SBS channels (missing {missing[:3]})"
        )
    return values[[pos[c] for c in CHANNELS]]


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@dataclass
class SigData:
    """One data set in canonical channel order.

    Attributes
    ----------
    name : str
    V : ndarray, shape (96, n)
    H : ndarray, shape (k, n) or None
    W : ndarray, shape (96, k) or None
    k : int
    """

    name: str
    V: np.ndarray
    H: np.ndarray | None
    W: np.ndarray | None
    k: int


def load_synsig(folder: Path) -> SigData:
    """Catalog, exposures and signatures of one synthetic set, aligned by labels."""
    header, rows = _read_csv(folder / "ground.truth.syn.catalog.csv")
    labels = [channel_label(r[0], r[1]) for r in rows]
    samples = header[2:]
    V = align_rows(labels, np.array([[float(x) for x in r[2:]] for r in rows]), folder.name)
    sh, srows = _read_csv(folder / "ground.truth.syn.sigs.csv")
    sig_names = sh[2:]
    W = align_rows(
        [channel_label(r[0], r[1]) for r in srows],
        np.array([[float(x) for x in r[2:]] for r in srows]),
        folder.name + " sigs",
    )
    eh, erows = _read_csv(folder / "ground.truth.syn.exposures.csv")
    exp_samples = eh[1:]
    by_sig = {r[0]: np.array([float(x) for x in r[1:]]) for r in erows}
    col = {s: i for i, s in enumerate(exp_samples)}
    if set(col) != set(samples) or set(by_sig) != set(sig_names):
        raise ValueError(f"{folder.name}: exposures do not match catalog samples / signatures")
    order = [col[s] for s in samples]
    H = np.stack([by_sig[s][order] for s in sig_names])
    return SigData(folder.name, V, H, W, len(sig_names))


def load_brca(path: Path) -> SigData:
    """The ICGC breast genomes (560 in the full set): ``.npy`` of shape (n, 96), samples by
    SBS channels in substitution-major order."""
    X = np.load(path)
    if X.ndim != 2 or X.shape[1] != len(CHANNELS) or X.shape[0] == 0:
        raise ValueError(f"{path}: expected shape (n, 96), got {X.shape}")
    # documented order of this file: substitution, then 5' base, then 3' base
    labels = [f"{a}[{s}]{b}" for s in SUBSTITUTIONS for a in BASES for b in BASES]
    return SigData(
        "brca560", align_rows(labels, X.T.astype(np.float64), "brca"), None, None, BRCA_K
    )


# ----------------------------------------------------------------------------- folds


def kfold_indices(n: int, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled k-fold split: disjoint test folds covering ``0..n-1`` once.

    Returns
    -------
    list of (train_idx, test_idx)
    """
    if not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must be in [2, {n}], got {n_folds}")
    perm = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(perm, n_folds)
    out = []
    for i, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != i])
        out.append((np.sort(train), np.sort(test)))
    return out


def paper_leaky_test_index(test_idx: np.ndarray, n: int) -> np.ndarray:
    """The original code's test columns: ``~test_idx`` on integers is ``-test_idx - 1``,
    i.e. columns counted from the end, most of which are training columns. Documented
    here to quantify the leak; never used for scoring."""
    return (-np.asarray(test_idx) - 1) % n


# ----------------------------------------------------------------------------- baselines


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


def mu_h(
    V: torch.Tensor,
    W: torch.Tensor,
    n_iter: int,
    lam: tuple[float, float],
    loss: str,
    tol: float | None = None,
) -> torch.Tensor:
    """``n_iter`` MU steps for H from ``H0 = 1`` (stop early when ``tol`` is met)."""
    step = mu_step_h_kl if loss == "kl" else mu_step_h_frobenius
    cost = kl_cost if loss == "kl" else frobenius_cost
    H = torch.ones((W.shape[1], V.shape[1]), dtype=V.dtype)
    prev = math.inf
    for it in range(n_iter):
        H = step(V, W, H, *lam)
        if tol is not None and it % 10 == 9:
            now = float(cost(V, W, H, *lam))
            if math.isfinite(prev) and prev - now <= tol * abs(prev):
                break
            prev = now
    return H


def nndsvda(V: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVD initialisation (Boutsidis & Gallopoulos 2008), zeros filled with the mean."""
    U, S, Vt = np.linalg.svd(V, full_matrices=False)
    W, H = np.zeros((V.shape[0], k)), np.zeros((k, V.shape[1]))
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0] = np.sqrt(S[0]) * np.abs(Vt[0])
    for j in range(1, k):
        x, y = U[:, j], Vt[j]
        xp, xn, yp, yn = np.maximum(x, 0), np.maximum(-x, 0), np.maximum(y, 0), np.maximum(-y, 0)
        pos = np.linalg.norm(xp) * np.linalg.norm(yp)
        neg = np.linalg.norm(xn) * np.linalg.norm(yn)
        u, v, s = (xp, yp, pos) if pos >= neg else (xn, yn, neg)
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        if nu > 0 and nv > 0:
            W[:, j] = np.sqrt(S[j] * s) * u / nu
            H[j] = np.sqrt(S[j] * s) * v / nv
    avg = V.mean()
    W[W == 0], H[H == 0] = avg, avg
    return W, H


def mu_nmf(
    V: torch.Tensor,
    W: torch.Tensor,
    H: torch.Tensor,
    lam: tuple[float, float],
    loss: str,
    max_iter: int,
    tol: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating MU (λ on H, none on W, as in the paper) until the objective's relative
    decrease over 10 iterations is below ``tol`` (or ``max_iter``)."""
    hstep = mu_step_h_kl if loss == "kl" else mu_step_h_frobenius
    wstep = mu_step_w_kl if loss == "kl" else mu_step_w_frobenius
    cost = kl_cost if loss == "kl" else frobenius_cost
    prev = math.inf
    for it in range(max_iter):
        H = hstep(V, W, H, *lam)
        W = wstep(V, W, H)
        if tol is not None and it % 10 == 9:
            now = float(cost(V, W, H, *lam))
            if math.isfinite(prev) and prev - now <= tol * abs(prev):
                break
            prev = now
    return W, H


# ----------------------------------------------------------------------------- scoring


def h_mse(H_hat: np.ndarray | torch.Tensor, H: np.ndarray) -> float:
    """Mean over columns of ``‖ĥ − h‖²``."""
    D = np.asarray(H_hat, dtype=np.float64) - H
    return float((D * D).sum() / H.shape[1])


def recon_score(
    V: np.ndarray, W: np.ndarray | torch.Tensor, H: np.ndarray | torch.Tensor, loss: str
) -> float:
    """Mean over columns of ``‖v − Wh‖²`` (Frobenius) or of ``KL(v | Wh)`` (KL)."""
    Wn, Hn = np.asarray(W, dtype=np.float64), np.asarray(H, dtype=np.float64)
    if loss == "kl":
        return float(kl_divergence(_t(V), _t(Wn @ Hn))) / V.shape[1]
    R = V - Wn @ Hn
    return float((R * R).sum() / V.shape[1])


# ----------------------------------------------------------------------------- runs


@dataclass
class EvalConfig:
    """Settings of :func:`run_evaluation` (defaults: the paper's)."""

    folds: int = 5
    epochs: int = 500
    n_layers: int = 10
    lambdas: tuple[float, ...] = (0.0, 1.0, 2.0)
    max_samples: int | None = None
    seed: int = 1
    brca: bool = True
    mu_max_iter: int = 3000
    mu_tol: float = 1e-6
    dtype: str = "float32"
    jobs: int = 1
    paper_split: bool = False
    #: layer types and depths of :func:`run_layer_evaluation`
    layer_types: tuple[str, ...] = ("mu", "pgd", "hals")
    layer_depths: tuple[int, ...] = (10, 20)
    #: training epochs of the layer comparison (None: ``epochs``)
    layer_epochs: int | None = None
    #: evaluate only the first N folds of the split (None: all)
    fold_limit: int | None = None


@dataclass
class Row:
    """One score: data set, fold, setting, arm."""

    dataset: str
    fold: int
    setting: str
    arm: str
    score: float
    seconds: float


def supervised_fold(
    d: SigData, tr: np.ndarray, te: np.ndarray, fold: int, cfg: EvalConfig
) -> list[Row]:
    """All supervised arms on one fold."""
    assert d.H is not None
    Vtr, Htr, Vte, Hte = d.V[:, tr], d.H[:, tr], d.V[:, te], d.H[:, te]
    rows: list[Row] = []
    L = cfg.n_layers

    def add(arm: str, score: float, t0: float) -> None:
        rows.append(Row(d.name, fold, "supervised", arm, score, time.perf_counter() - t0))

    for arm, kw in (
        ("dnmf", {}),
        ("dnmf_fixed_lambda", {"learn_lambdas": False}),
        ("dnmf_paper_init", {"init": "constant", "lambda1": 1.0, "lambda2": 1.0}),
    ):
        t0 = time.perf_counter()
        model = DNMF(
            d.k,
            n_layers=L,
            mode="supervised",
            epochs=cfg.epochs,
            dtype=cfg.dtype,
            seed=cfg.seed + fold,
            **kw,
        ).fit(Vtr, Htr)
        add(arm, h_mse(model.transform(Vte), Hte), t0)
    t0 = time.perf_counter()
    Wls = nnls_w_from_gram(_t(Htr @ Htr.T), _t(Vtr @ Htr.T))
    add("nnls", h_mse(nnls_h(_t(Vte), Wls), Hte), t0)
    for arm, it in ((f"mu_{L}", L), ("mu_100", 100)):
        t0 = time.perf_counter()
        add(arm, h_mse(mu_h(_t(Vte), Wls, it, (0.0, 0.0), "frobenius"), Hte), t0)
    t0 = time.perf_counter()
    add(
        "mu_conv",
        h_mse(mu_h(_t(Vte), Wls, cfg.mu_max_iter, (0.0, 0.0), "frobenius", cfg.mu_tol), Hte),
        t0,
    )
    t0 = time.perf_counter()
    Vt = _t(Vtr)
    Wp, _ = mu_nmf(
        Vt,
        torch.full((96, d.k), 1.0, dtype=Vt.dtype),
        torch.ones((d.k, Vt.shape[1]), dtype=Vt.dtype),
        (0.0, 0.0),
        "frobenius",
        cfg.epochs,
        None,
    )
    add("mu_paper", h_mse(mu_h(_t(Vte), Wp, 10, (0.0, 0.0), "frobenius"), Hte), t0)
    return rows


def unsupervised_fold(
    d: SigData, tr: np.ndarray, te: np.ndarray, fold: int, lam: float, loss: str, cfg: EvalConfig
) -> list[Row]:
    """All unsupervised arms on one fold for ``λ1 = λ2 = lam``."""
    Vtr, Vte = d.V[:, tr], d.V[:, te]
    rows: list[Row] = []
    L, k = cfg.n_layers, d.k
    lams = (lam, lam)
    setting = f"unsupervised {loss} λ={lam:g}"
    Vt, Vtest = _t(Vtr), _t(Vte)

    def add(arm: str, score: float, t0: float) -> None:
        rows.append(Row(d.name, fold, setting, arm, score, time.perf_counter() - t0))

    t0 = time.perf_counter()
    model = DNMF(
        k,
        n_layers=L,
        mode="unsupervised",
        loss=loss,
        lambda1=lam,
        lambda2=lam,
        epochs=cfg.epochs,
        dtype=cfg.dtype,
        seed=cfg.seed + fold,
    ).fit(Vtr)
    assert model.W_ is not None
    Wd = _t(model.W_)
    add("dnmf", recon_score(Vte, model.W_, model.transform(Vte), loss), t0)
    t0 = time.perf_counter()
    # exact inference with DNMF's basis: NNLS (Frobenius) or KL-MU run to convergence (KL)
    if loss == "frobenius":
        add("nnls_dnmf_w", recon_score(Vte, Wd, nnls_h(Vtest, Wd, *lams), loss), t0)
    else:
        Hc = mu_h(Vtest, Wd, cfg.mu_max_iter, lams, loss, cfg.mu_tol)
        add("mu_conv_dnmf_w", recon_score(Vte, Wd, Hc, loss), t0)
    for arm, it in ((f"mu_{L}_dnmf_w", L), ("mu_100_dnmf_w", 100)):
        t0 = time.perf_counter()
        add(arm, recon_score(Vte, Wd, mu_h(Vtest, Wd, it, lams, loss), loss), t0)
    rng = np.random.default_rng(cfg.seed + fold)
    scale = math.sqrt(Vtr.mean() / k)
    inits = {
        "mu_random": (rng.random((96, k)) * scale, rng.random((k, Vtr.shape[1])) * scale),
        "mu_nndsvd": nndsvda(Vtr, k),
    }
    Wr = None
    for arm, (W0, H0) in inits.items():
        t0 = time.perf_counter()
        W, _ = mu_nmf(Vt, _t(W0), _t(H0), lams, loss, cfg.mu_max_iter, cfg.mu_tol)
        Hte = mu_h(Vtest, W, cfg.mu_max_iter, lams, loss, cfg.mu_tol)
        add(arm, recon_score(Vte, W, Hte, loss), t0)
        Wr = W if Wr is None else Wr
    assert Wr is not None
    if loss == "frobenius":
        t0 = time.perf_counter()
        add("nnls_mu_w", recon_score(Vte, Wr, nnls_h(Vtest, Wr, *lams), loss), t0)
    t0 = time.perf_counter()
    Wp, _ = mu_nmf(
        Vt,
        torch.full((96, k), 1.0 / 96, dtype=Vt.dtype),
        torch.ones((k, Vt.shape[1]), dtype=Vt.dtype),
        lams,
        loss,
        cfg.epochs,
        None,
    )
    add("mu_paper", recon_score(Vte, Wp, mu_h(Vtest, Wp, 100, lams, loss), loss), t0)
    return rows


# ----------------------------------------------------------------------------- summary


#: (setting prefix, comparison arm, the paper's claim, the paper's DNMF/alternative ratio,
#: data sets: "synsig", "brca560" or "all")
CLAIMS: tuple[tuple[str, str, str, str, str], ...] = (
    ("supervised", "dnmf_fixed_lambda", "learned λ beats fixed λ (supervised)", "0.62", "all"),
    ("supervised", "mu_paper", "supervised DNMF beats MU (paper's baseline)", "3e-4", "all"),
    ("supervised", "nnls", "supervised DNMF beats NNLS with the least-squares W", "—", "all"),
    ("supervised", "mu_L", "supervised DNMF beats MU at equal cost ({L} iterations)", "—", "all"),
    ("supervised", "mu_conv", "supervised DNMF beats MU run to convergence", "—", "all"),
    (
        "unsupervised",
        "mu_paper",
        "unsupervised DNMF beats MU (paper's constant init), synsig",
        "0.054–0.22",
        "synsig",
    ),
    (
        "unsupervised",
        "mu_random",
        "unsupervised DNMF beats MU, random init, converged, synsig",
        "—",
        "synsig",
    ),
    (
        "unsupervised",
        "mu_nndsvd",
        "unsupervised DNMF beats MU, NNDSVD init, converged, synsig",
        "—",
        "synsig",
    ),
    (
        "unsupervised",
        "mu_paper",
        "BRCA-560: DNMF beats MU (paper's constant init)",
        "0.12–0.16",
        "brca560",
    ),
    (
        "unsupervised",
        "mu_random",
        "BRCA-560: DNMF beats MU, random init, converged",
        "—",
        "brca560",
    ),
    (
        "unsupervised",
        "mu_nndsvd",
        "BRCA-560: DNMF beats MU, NNDSVD init, converged",
        "—",
        "brca560",
    ),
    (
        "unsupervised",
        "mu_L_dnmf_w",
        "{L} layers beat {L} MU iterations with the same W",
        "—",
        "all",
    ),
    (
        "unsupervised",
        "mu_100_dnmf_w",
        "{L} layers match 100 MU iterations with the same W",
        "≈1",
        "all",
    ),
    (
        "unsupervised",
        "exact_dnmf_w",
        "{L} layers match exact inference with the same W",
        "—",
        "all",
    ),
)


def geo_mean(x: list[float]) -> float:
    """Geometric mean of positive numbers (nan when empty)."""
    arr = np.asarray([v for v in x if v > 0 and math.isfinite(v)])
    return float(np.exp(np.log(arr).mean())) if arr.size else float("nan")


def ratios(rows: list[Row], datasets: str = "all") -> dict[tuple[str, str], list[float]]:
    """DNMF / arm score ratios per (setting, arm), one per data set (folds averaged).

    A data set where DNMF's score is not finite in some fold (the network overflowed on
    test columns) gets the ratio ``inf``: it counts as DNMF worse, and :func:`geo_mean`
    leaves it out of the average (the tables report how many).

    ``datasets``: "all", "brca560" or "synsig" (every set but BRCA-560).
    """
    means: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        if datasets == "brca560" and r.dataset != "brca560":
            continue
        if datasets == "synsig" and r.dataset == "brca560":
            continue
        means[(r.dataset, r.setting, r.arm)].append(r.score)
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (ds, setting, arm), vals in sorted(means.items()):
        if arm == "dnmf":
            continue
        ref = means.get((ds, setting, "dnmf"))
        if ref:
            num = float(np.mean(ref))
            out[(setting, arm)].append(
                num / float(np.mean(vals)) if math.isfinite(num) else math.inf
            )
    return out


def summary_table(rows: list[Row], n_layers: int) -> str:
    """Markdown: geometric-mean DNMF/arm ratio per setting (< 1: DNMF better)."""
    rat = ratios(rows)
    lines = [
        "| setting | arm | DNMF / arm (geo. mean) | sets where DNMF better | DNMF non-finite |",
        "|---|---|---|---|---|",
    ]
    for (setting, arm), vals in sorted(rat.items()):
        better = sum(v < 1 for v in vals)
        bad = sum(not math.isfinite(v) for v in vals)
        lines.append(f"| {setting} | {arm} | {geo_mean(vals):.3g} | {better}/{len(vals)} | {bad} |")
    del n_layers
    return "\n".join(lines)


def claims_text(rows: list[Row], n_layers: int) -> str:
    """Plain statements of which claims hold on this run.

    "yes": DNMF better in the geometric mean and on ≥ 75 % of the data sets (for "match"
    claims: within 5 %); "no": worse in the geometric mean and better on ≤ 25 %; else "mixed".
    """
    out = ["| claim | paper's ratio | measured DNMF / alternative | holds? |", "|---|---|---|---|"]
    for prefix, arm, text, paper, datasets in CLAIMS:
        arm = arm.replace("mu_L", f"mu_{n_layers}")
        text = text.replace("{L}", str(n_layers))
        rat = ratios(rows, datasets)
        arms = ("nnls_dnmf_w", "mu_conv_dnmf_w") if arm == "exact_dnmf_w" else (arm,)
        vals = [v for (s, a), vs in rat.items() if s.startswith(prefix) and a in arms for v in vs]
        if not vals:
            continue
        g = geo_mean(vals)
        better = sum(v < 1 for v in vals)
        if "match" in text:
            verdict = "yes" if g <= 1.05 else "no"
        elif g < 1 and better >= 0.75 * len(vals):
            verdict = "yes"
        elif g >= 1 and better <= 0.25 * len(vals):
            verdict = "no"
        else:
            verdict = "mixed"
        bad = sum(not math.isfinite(v) for v in vals)
        note = f", {bad} non-finite" if bad else ""
        out.append(
            f"| {text} | {paper} | {g:.3g} ({better}/{len(vals)} better{note}) | {verdict} |"
        )
    return "\n".join(out)


def read_results(path: Path) -> list[Row]:
    """Rows of a ``results.csv`` written by :func:`write_outputs` (to re-summarize)."""
    with open(path, newline="") as f:
        return [
            Row(
                r["dataset"],
                int(r["fold"]),
                r["setting"],
                r["arm"],
                float(r["score"]),
                float(r["seconds"]),
            )
            for r in csv.DictReader(f)
        ]


@dataclass
class Report:
    """What :func:`run_evaluation` produced."""

    rows: list[Row] = field(default_factory=list)
    summary_markdown: str = ""
    claims_markdown: str = ""
    wall_s: float = 0.0


def write_outputs(out: Path, rows: list[Row], summary: str, claims: str, wall: float) -> None:
    """results.csv, summary.md, claims.md and box plots (when matplotlib is there)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "fold", "setting", "arm", "score", "seconds"])
        for r in rows:
            w.writerow([r.dataset, r.fold, r.setting, r.arm, f"{r.score:.8g}", f"{r.seconds:.4f}"])
    (out / "summary.md").write_text(f"{summary}\n\nWall time of the evaluation: {wall:.1f} s\n")
    (out / "claims.md").write_text(claims + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional
        return
    rat = ratios(rows)
    settings = sorted({s for s, _ in rat})
    fig, axes = plt.subplots(len(settings), 1, figsize=(9, 2.8 * len(settings)), squeeze=False)
    for ax, setting in zip(axes[:, 0], settings, strict=True):
        arms = sorted(a for s, a in rat if s == setting)
        ax.boxplot(
            [np.log10([v for v in rat[(setting, a)] if math.isfinite(v)] or [1.0]) for a in arms],
            tick_labels=arms,
            orientation="horizontal",
        )
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_title(setting, fontsize=9)
        ax.set_xlabel("log10(DNMF score / arm score)  (< 0: DNMF better)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "ratios_boxplot.png", dpi=110)
    plt.close(fig)


def _one_thread() -> None:
    # evaluation worker processes share the cores: one torch thread each
    torch.set_num_threads(1)


def _run_job(job: tuple[Any, ...], cfg: EvalConfig) -> list[Row]:
    if job[0] == "layers":
        return layers_fold(job[1], job[2], job[3], job[4], cfg)
    if job[0] == "sup":
        return supervised_fold(job[1], job[2], job[3], job[4], cfg)
    return unsupervised_fold(job[1], job[2], job[3], job[4], job[5], job[6], cfg)


def run_evaluation(
    data_dir: Path,
    out: Path | None,
    cfg: EvalConfig,
    sets: list[str] | None = None,
    progress: bool = False,
) -> Report:
    """Run every arm on every fold of every chosen set (plus BRCA-560) and summarize.

    Parameters
    ----------
    data_dir : Path
        Folder with ``synsig/`` and ``icgc_brca560_sbs96_counts.npy``.
    out : Path, optional
        Where to write results.csv, summary.md, claims.md, ratios_boxplot.png.
    cfg : EvalConfig
    sets : list of str, optional
        Synsig set names (default: all 12).
    progress : bool

    Returns
    -------
    Report
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    data = _load_sets(data_dir, cfg, sets)
    jobs: list[tuple[Any, ...]] = []
    for d in data:
        for fold, (tr, te_fair) in enumerate(kfold_indices(d.V.shape[1], cfg.folds, cfg.seed)):
            # --paper-split reproduces the original leak (test columns mostly seen in training)
            te = paper_leaky_test_index(te_fair, d.V.shape[1]) if cfg.paper_split else te_fair
            if d.H is not None:
                jobs.append(("sup", d, tr, te, fold))
            losses = ("frobenius", "kl") if d.name == "brca560" else ("frobenius",)
            for loss in losses:
                for lam in cfg.lambdas:
                    jobs.append(("unsup", d, tr, te, fold, lam, loss))
    rows = _run_jobs(jobs, cfg, progress, tqdm)
    wall = time.perf_counter() - t_start
    summary = summary_table(rows, cfg.n_layers)
    claims = claims_text(rows, cfg.n_layers)
    if out is not None:
        write_outputs(out, rows, summary, claims, wall)
    return Report(rows, summary, claims, wall)


def _load_sets(data_dir: Path, cfg: EvalConfig, sets: list[str] | None) -> list[SigData]:
    """The chosen synsig sets (default all 12) and BRCA-560, cut to ``cfg.max_samples``."""
    names = list(sets) if sets else list(SYNSIG_SETS)
    unknown = [s for s in names if not (data_dir / "synsig" / s).is_dir()]
    if unknown:
        raise ValueError(f"unknown synsig set(s): {unknown}")
    data = [load_synsig(data_dir / "synsig" / s) for s in names]
    if cfg.brca:
        data.append(load_brca(data_dir / "icgc_brca560_sbs96_counts.npy"))
    if cfg.max_samples:
        for d in data:
            d.V = d.V[:, : cfg.max_samples]
            d.H = None if d.H is None else d.H[:, : cfg.max_samples]
    return data


def _run_jobs(jobs: list[tuple[Any, ...]], cfg: EvalConfig, progress: bool, tqdm: Any) -> list[Row]:
    """Run the jobs here or in ``cfg.jobs`` spawned processes (one torch thread each)."""
    rows: list[Row] = []
    bar = tqdm(total=len(jobs), disable=not progress, desc="dnmf evaluate")
    if cfg.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(cfg.jobs, mp_context=ctx, initializer=_one_thread) as pool:
            for part in pool.map(_run_job, jobs, [cfg] * len(jobs)):
                rows += part
                bar.update(1)
    else:
        for job in jobs:
            rows += _run_job(job, cfg)
            bar.update(1)
    bar.close()
    return rows


# ----------------------------------------------------------------------------- layer types
#
# Inference with a fixed basis: how close does an unrolled network of each layer type get
# to exact inference (NNLS) with the same W, and at what cost? Per data set and fold (the
# same disjoint folds as above):
#
# * synthetic sets: W = the least-squares basis of the training columns (NNLS from V_train,
#   H_train); the networks are trained supervised on the true H_train; score = held-out
#   ``‖ĥ − h‖²`` per column;
# * BRCA-560 (no known exposures): W from alternating NNLS on the training columns (from
#   NNDSVD-A); the networks are trained supervised on the exact NNLS coefficients of the
#   training columns (they learn to imitate exact inference); score = held-out
#   reconstruction error ``‖v − Wĥ‖²`` per column, the quantity NNLS minimizes.
#
# Arms: ``{layer}_{L}`` (trained networks), ``{layer}_{L}_iter`` (the same network before
# training: exactly L steps of the iteration it unrolls), ``nnls`` (block principal
# pivoting), ``mu_conv`` (MU from ones to convergence), ``hals_conv`` (HALS from zeros until
# the KKT conditions hold to 1e-6, capped at ``mu_max_iter`` sweeps). ``seconds`` is the
# inference time per 1,000 samples (best of 3, one thread; networks in their dtype).

#: Setting name of the layer-type rows.
LAYER_SETTING = "inference"


def _best_time(fn: Any, n_cols: int, repeats: int = 3) -> tuple[Any, float]:
    """``fn()``'s result and its best wall time of ``repeats`` per 1,000 columns."""
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best * 1000.0 / max(n_cols, 1)


def anls_basis(V: np.ndarray, k: int, n_iter: int = 60) -> np.ndarray:
    """Basis of ``V ≈ WH`` by alternating exact NNLS from NNDSVD-A (BRCA-560's fixed W).

    Returns
    -------
    ndarray, shape (m, k)
    """
    W0, _ = nndsvda(V, k)
    W, Vt = _t(W0), _t(V)
    for _ in range(n_iter):
        H = nnls_h(Vt, W)
        W = nnls_w_from_gram(H @ H.T, Vt @ H.T, W)
    return W.numpy()


def layers_fold(
    d: SigData, tr: np.ndarray, te: np.ndarray, fold: int, cfg: EvalConfig
) -> list[Row]:
    """Every layer type and depth of ``cfg`` against exact and iterative inference with the
    same basis, on one fold (see the comment above for the protocol)."""
    from scalenmf.kernels import nnls_bpp, nnls_cd

    Vtr, Vte = d.V[:, tr], d.V[:, te]
    if d.H is not None:
        Htr, Hte = d.H[:, tr], d.H[:, te]
        W = nnls_w_from_gram(_t(Htr @ Htr.T), _t(Vtr @ Htr.T)).numpy()

        def score(H: Any) -> float:
            return h_mse(H, Hte)
    else:
        W = anls_basis(Vtr, d.k)
        Htr = nnls_h(_t(Vtr), _t(W)).numpy()

        def score(H: Any) -> float:
            return recon_score(Vte, W, H, "frobenius")

    rows: list[Row] = []
    # timed on 1,000 columns (the test columns repeated or cut): the time per 1,000 samples
    # at a batch of that size, whatever the fold's size
    n_te = 1000
    Vtime = np.ascontiguousarray(Vte[:, np.resize(np.arange(Vte.shape[1]), n_te)])

    def add(arm: str, value: float, seconds: float) -> None:
        rows.append(Row(d.name, fold, LAYER_SETTING, arm, value, seconds))

    G, Wt, Vtest = W.T @ W, _t(W), _t(Vte)
    _, sec = _best_time(lambda: nnls_bpp(G, W.T @ Vtime), n_te)
    add("nnls", score(nnls_bpp(G, W.T @ Vte)[0]), sec)
    t0 = time.perf_counter()
    H = nnls_cd(G, W.T @ Vte, max_sweeps=cfg.mu_max_iter, tol=cfg.mu_tol)[0]
    add("hals_conv", score(H), (time.perf_counter() - t0) * n_te / Vte.shape[1])
    t0 = time.perf_counter()
    Hmu = mu_h(Vtest, Wt, cfg.mu_max_iter, (0.0, 0.0), "frobenius", cfg.mu_tol)
    add("mu_conv", score(Hmu), (time.perf_counter() - t0) * n_te / Vte.shape[1])
    epochs = cfg.epochs if cfg.layer_epochs is None else cfg.layer_epochs
    for layer in cfg.layer_types:
        for L in cfg.layer_depths:
            for trained in (False, True):
                model = DNMF(
                    d.k,
                    n_layers=L,
                    mode="supervised",
                    epochs=epochs if trained else 0,
                    dtype=cfg.dtype,
                    seed=cfg.seed + fold,
                    layer=layer,
                    n_threads=1,
                )
                model.fit(Vtr, Htr)
                net = model.model_
                assert net is not None
                np_dtype = np.dtype(cfg.dtype)
                Vn = torch.from_numpy(np.ascontiguousarray(Vtime, dtype=np_dtype))

                def forward(net: Any = net, Vn: torch.Tensor = Vn) -> np.ndarray:
                    with torch.inference_mode():
                        return net(Vn).numpy()

                _, sec = _best_time(forward, n_te)
                with torch.inference_mode():
                    H = net(torch.from_numpy(np.ascontiguousarray(Vte, dtype=np_dtype))).numpy()
                add(f"{layer}_{L}" if trained else f"{layer}_{L}_iter", score(H), sec)
    return rows


#: Reference arms of the layer table: (arm, column title); ``{it}`` is the network's own
#: untrained iteration, ``mu_{L}_iter`` / ``hals_{L}_iter`` the same number of MU / HALS
#: iterations.
LAYER_REFS = (
    ("nnls", "exact NNLS"),
    ("mu_conv", "MU converged"),
    ("hals_conv", "HALS converged"),
    ("mu_{L}_iter", "{L} MU iterations"),
    ("hals_{L}_iter", "{L} HALS sweeps"),
    ("{it}", "its own iteration untrained"),
)


def _per_set(rows: list[Row], stat: str) -> dict[tuple[str, str], float]:
    """Mean over folds of the score (``stat="score"``) or seconds, per (data set, arm)."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.setting == LAYER_SETTING:
            acc[(r.dataset, r.arm)].append(r.score if stat == "score" else r.seconds)
    return {key: float(np.mean(v)) for key, v in acc.items()}


def layer_table(rows: list[Row]) -> str:
    """Markdown: per trained network, the geometric mean over data sets of its held-out
    error divided by each reference's (``< 1``: the network is better), with the count of
    sets where it is better, and its inference time per 1,000 samples beside exact NNLS's."""
    score, secs = _per_set(rows, "score"), _per_set(rows, "seconds")
    sets = sorted({ds for ds, _ in score})
    nets = sorted(
        {a for _, a in score if a.rsplit("_", 1)[-1].isdigit() and not a.startswith("mu_conv")},
        key=lambda a: (a.split("_")[0] != "mu", a.split("_")[0], int(a.rsplit("_", 1)[1])),
    )
    head = [title for _, title in LAYER_REFS]
    lines = [
        "| network | "
        + " | ".join(f"÷ {h.replace('{L}', 'L')}" for h in head)
        + " | ms / 1,000 samples | time ÷ exact NNLS |",
        "|---|" + "---|" * (len(head) + 2),
    ]
    for net in nets:
        layer, L = net.rsplit("_", 1)
        cells = []
        for ref, _ in LAYER_REFS:
            ref = ref.replace("{L}", L).replace("{it}", f"{net}_iter")
            vals = [
                score[(ds, net)] / score[(ds, ref)]
                for ds in sets
                if (ds, net) in score and (ds, ref) in score and score[(ds, ref)] > 0
            ]
            if not vals:
                cells.append("—")
                continue
            better = sum(v < 1 for v in vals)
            cells.append(f"{geo_mean(vals):.3g} ({better}/{len(vals)})")
        t_net = [secs[(ds, net)] for ds in sets if (ds, net) in secs]
        t_rat = [
            secs[(ds, net)] / secs[(ds, "nnls")]
            for ds in sets
            if (ds, net) in secs and secs.get((ds, "nnls"), 0) > 0
        ]
        lines.append(
            f"| {layer} × {L} | "
            + " | ".join(cells)
            + f" | {1000 * geo_mean(t_net):.3g} | {geo_mean(t_rat):.3g} |"
        )
    t_nnls = [secs[(ds, "nnls")] for ds in sets if (ds, "nnls") in secs]
    lines.append(
        f"| exact NNLS (reference) | 1 | — | — | — | — | — | {1000 * geo_mean(t_nnls):.3g} | 1 |"
    )
    return "\n".join(lines)


def layer_goals(rows: list[Row], depths: tuple[int, int] = (10, 20)) -> str:
    """The issue's goals, checked: best trained network at the shallow depth within 10× of
    exact NNLS (geometric mean) and at most 0.3× its time; at the deep depth within 1.5×."""
    score, secs = _per_set(rows, "score"), _per_set(rows, "seconds")
    sets = sorted({ds for ds, _ in score})
    out = ["| goal | best network | measured | met? |", "|---|---|---|---|"]

    def ratio(net: str, ref: str, table: dict[tuple[str, str], float]) -> float:
        vals = [
            table[(ds, net)] / table[(ds, ref)]
            for ds in sets
            if (ds, net) in table and table.get((ds, ref), 0) > 0
        ]
        return geo_mean(vals) if len(vals) == len(sets) else math.nan

    nets = sorted({a for _, a in score if a.rsplit("_", 1)[-1].isdigit()})
    for L, limit in ((depths[0], 10.0), (depths[1], 1.5)):
        cands = [(ratio(n, "nnls", score), n) for n in nets if n.endswith(f"_{L}")]
        cands = [c for c in cands if math.isfinite(c[0])]
        if not cands:
            continue
        g, n = min(cands)
        met = "yes" if g <= limit else "no"
        out.append(f"| {L} layers: error ≤ {limit:g}× exact NNLS | {n} | {g:.3g}× | {met} |")
    L = depths[0]
    cands = [
        (ratio(n, "nnls", secs), n)
        for n in nets
        if n.endswith(f"_{L}") and ratio(n, "nnls", score) <= 10.0
    ]
    cands = [c for c in cands if math.isfinite(c[0])]
    if cands:
        g, n = min(cands)
        met = "yes" if g <= 0.3 else "no"
        out.append(
            f"| {L} layers: inference ≤ 0.3× exact NNLS's time (of those within 10×) "
            f"| {n} | {g:.3g}× | {met} |"
        )
    return "\n".join(out)


#: Header of ``layers.md``: what the table measures.
LAYER_PROTOCOL = """# DNMF layer types at a fixed basis

Each cell: geometric mean over the data sets of (network's held-out error) ÷ (the
reference's), with the number of sets where the network is better. Synthetic sets: W is
the least-squares basis of the training columns, networks trained supervised on the true
H, error = held-out ‖ĥ − h‖² per sample. BRCA-560: W from alternating NNLS on the training
columns, networks trained on the exact NNLS coefficients of the training columns, error =
held-out ‖v − Wĥ‖² per sample. "its own iteration untrained" is the same network before
training (exactly L steps of the iteration it unrolls: MU from ones, FISTA or HALS from the
clipped least-squares start). Times: per 1,000 samples at a batch of 1,000, one thread,
best of 3; networks in float32 torch, NNLS (block principal pivoting) in float64 numpy.
"""


def run_layer_evaluation(
    data_dir: Path,
    out: Path | None,
    cfg: EvalConfig,
    sets: list[str] | None = None,
    progress: bool = False,
) -> Report:
    """Run :func:`layers_fold` on every chosen set (and BRCA-560), the first
    ``cfg.fold_limit`` folds of the same split; write ``layers.csv`` and ``layers.md``.

    Returns
    -------
    Report
        ``summary_markdown``: the layer table; ``claims_markdown``: the goals.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    data = _load_sets(data_dir, cfg, sets)
    jobs: list[tuple[Any, ...]] = []
    for d in data:
        folds = kfold_indices(d.V.shape[1], cfg.folds, cfg.seed)
        for fold, (tr, te) in enumerate(folds[: cfg.fold_limit or len(folds)]):
            jobs.append(("layers", d, tr, te, fold))
    rows = _run_jobs(jobs, cfg, progress, tqdm)
    wall = time.perf_counter() - t_start
    depths = tuple(sorted(cfg.layer_depths))
    table = layer_table(rows)
    goals = layer_goals(rows, (depths[0], depths[-1])) if depths else ""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "layers.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["dataset", "fold", "setting", "arm", "score", "seconds_per_1000"])
            for r in rows:
                w.writerow(
                    [r.dataset, r.fold, r.setting, r.arm, f"{r.score:.8g}", f"{r.seconds:.6f}"]
                )
        (out / "layers.md").write_text(
            f"{LAYER_PROTOCOL}\n{table}\n\n{goals}\n\nEpochs per network: "
            f"{cfg.epochs if cfg.layer_epochs is None else cfg.layer_epochs}; folds: "
            f"{cfg.fold_limit or cfg.folds} of {cfg.folds}; data sets: {len(data)}; "
            f"wall time: {wall:.1f} s\n"
        )
    return Report(rows, table, goals, wall)
