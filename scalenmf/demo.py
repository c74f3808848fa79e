"""``scalenmf demo``: simulate a COSMIC catalogue, factorize it, name the factors."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scalenmf.api import nmf
from scalenmf.signatures import (
    cosine_matrix,
    cosmic_reference,
    match_signatures,
    simulate_catalogue,
)

#: Signatures common in many cancers: clock-like, APOBEC, HR deficiency, smoking, UV.
DEMO_SIGNATURES = ("SBS1", "SBS2", "SBS3", "SBS4", "SBS5", "SBS7a", "SBS13", "SBS40a")


def command_hint() -> str:
    """How to call ``scalenmf`` from the user's shell: its name when it is on PATH, else the
    script's path in the environment that runs this (``bash run.sh demo`` does not put
    ``.venv/bin`` on PATH), and how to put it there."""
    import shutil
    import sys

    if shutil.which("scalenmf") is not None:
        return "scalenmf"
    script = Path(sys.executable).parent / "scalenmf"
    if not script.exists():
        return "scalenmf"
    return f"{script} (or `source {script.parent}/activate`, then scalenmf)"


def run_demo(
    output: str,
    *,
    k: int = 6,
    n_samples: int = 500,
    seed: int = 0,
    overwrite: bool = True,
    echo: Callable[[str], object] = print,
    report: str | None = "auto",
) -> dict[str, object]:
    """Simulate, fit with KL multiplicative updates, match to COSMIC, write the result store.

    ``report``: the HTML report to write ("auto": beside the store, ``<name>.html``; None:
    none). Returns a dict with the result, the matches and the planted signatures.
    """
    ref = cosmic_reference()
    planted = (
        [s for s in DEMO_SIGNATURES][:k] if k <= len(DEMO_SIGNATURES) else list(DEMO_SIGNATURES)
    )
    cols = [int(np.flatnonzero(ref.names == name)[0]) for name in planted]
    counts, _ = simulate_catalogue(ref.matrix[:, cols], n_samples, seed=seed)
    echo(
        f"Simulated a mutation catalogue: {counts.shape[0]} channels × {counts.shape[1]} samples "
        f"from {len(planted)} COSMIC v3.4 signatures ({', '.join(planted)}), Poisson noise."
    )
    t0 = time.perf_counter()
    labels = [f"sample_{j:04d}" for j in range(n_samples)]
    from scalenmf.io.source import DenseArraySource

    source = DenseArraySource(counts).set_labels(ref.channels, labels)
    result = nmf(
        source,
        k,
        loss="kl",
        solver="mu",
        init="nndsvda",
        max_iter=2000,
        # 1e-4 stops at about half the iterations of 1e-5 with the same matches (cosines
        # within 0.01): the demo is meant to finish in seconds.
        tol=1e-4,
        seed=seed,
        n_runs=4,
        progress=False,
    )
    wall = time.perf_counter() - t0
    echo(
        f"Fitted k={k} (KL loss, multiplicative updates, 4 restarts sharing each pass): "
        f"{result.n_iter} iterations, relative error {result.relative_error:.4f}, {wall:.2f}s."
    )
    matches = match_signatures(result.W, ref, ref.channels)
    truth = cosine_matrix(result.W, ref.matrix[:, cols])
    echo("")
    echo(f"{'factor':>6}  {'best COSMIC match':<18} {'cosine':>7}   planted?")
    for m in matches:
        mark = "yes" if m.match in planted else "no"
        echo(f"{'F' + str(m.factor + 1):>6}  {m.match:<18} {m.cosine:>7.3f}   {mark}")
    recovered = sum(m.match in planted and m.cosine >= 0.9 for m in matches)
    echo("")
    best = np.round(truth.max(axis=1), 3).tolist()
    echo(
        f"{recovered} of {k} factors match a planted signature with cosine ≥ 0.90 "
        f"(best cosine to a planted signature per factor: {best})."
    )
    result.info["demo"] = {"planted": planted, "matches": [m.__dict__ for m in matches]}
    result.save(output, overwrite=overwrite)
    echo(f"Result store written to {output} (inspect it with: {command_hint()} info {output}).")
    report_path = str(Path(output).with_suffix(".html")) if report == "auto" else report
    if report_path:
        _write_report(output, report_path, echo)
    return {"result": result, "matches": matches, "planted": planted, "report": report_path}


def _write_report(store: str, path: str, echo: Callable[[str], object]) -> None:
    try:
        from scalenmf.reporting import report
    except ImportError:
        echo("No HTML report: it needs the plot extra (pip install 'scalenmf[plot]').")
        return
    report(store, path, progress=False)
    echo(f"Report written to {path} (open it in a browser).")
