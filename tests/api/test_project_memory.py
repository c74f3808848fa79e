"""``project`` within a memory limit: flat in n, and the numbers of the unbounded path.

A projection reads X once, so it never holds X; past ``STATE_SHARE`` of the limit its
per-sample output (H, bootstrap bounds, cosine, errors, novelty flags) goes to scratch
arrays block by block, and the novelty rule's median and MAD are found a chunk at a time.
The tests shrink ``STATE_SHARE`` instead of the limit: the limit must stay above the test
process's own resident size.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from click.testing import CliRunner

import scalenmf
from scalenmf.api.project import novelty_flags
from scalenmf.cli.main import main
from scalenmf.engine import local
from scalenmf.io.state_store import SCRATCH_PREFIX, columns_array
from scalenmf.results.linked import load_projection
from tests.conftest import make_counts

NAMES = ("H", "cosine", "relative_error", "novel", "basis_cosine", "basis_relative_error")


def basis(m: int = 20) -> np.ndarray:
    return np.random.default_rng(0).gamma(1.0, 1.0, (m, 3))


def data(n: int, sparse: bool = False):
    X = make_counts(20, n, k=3, seed=3, zeros=0.4)
    return sp.csc_matrix(X) if sparse else X


def same(a, b, names=NAMES) -> None:
    for name in names:
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(np.asarray(x[...]), np.asarray(y[...]), equal_nan=True), name
    assert a.novelty == b.novelty and a.explained == b.explained
    assert a.objective == b.objective and a.summary() == b.summary()


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_bounded_project_equals_unbounded(monkeypatch, scratch, sparse, loss) -> None:
    X, W = data(1200, sparse), basis()
    kw = {"loss": loss, "block_cols": 250, "bootstrap": 3, "novelty_cosine": 0.8}
    free = scalenmf.project(W, X, **kw)
    assert free.info["states_in_store"] is False
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    bounded = scalenmf.project(W, X, memory_limit="4GB", **kw)
    assert bounded.info["states_in_store"] is True
    assert not isinstance(bounded.H, np.ndarray) and not isinstance(bounded.cosine, np.ndarray)
    same(free, bounded, (*NAMES, "H_lower", "H_upper"))
    back = load_projection(bounded.save(scratch.parent / "p.zarr"))
    same(free, back, (*NAMES, "H_lower", "H_upper"))


def test_bounded_transfer_learning_equals_unbounded(monkeypatch, scratch) -> None:
    X, W = data(600), basis()[:, :2]
    kw = {"k_new": 1, "block_cols": 200, "transfer_max_iter": 5, "transfer_tol": 0.0}
    free = scalenmf.project(W, X, **kw)
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    bounded = scalenmf.project(W, X, memory_limit="4GB", **kw)
    assert bounded.info["states_in_store"] is True
    same(free, bounded, (*NAMES, "new_share"))
    assert np.array_equal(free.U, bounded.U) and np.array_equal(free.V, np.asarray(bounded.V))


def test_novelty_flags_from_storage_equal_those_in_memory(scratch) -> None:
    rng = np.random.default_rng(4)
    n = 1001
    cos = rng.uniform(0.5, 1.0, n)
    rel = rng.gamma(2.0, 0.1, n)
    rel[::97] *= 30  # outliers for the robust z-score
    cos[::50], rel[::50] = np.nan, np.nan  # empty samples
    held, rule = novelty_flags(cos, rel, 0.6, 3.5)
    assert rule["n_outlier_error"] > 0 and rule["n_low_cosine"] > 0
    stored = []
    for name, values in (("c", cos), ("r", rel)):
        arr = columns_array(scratch, (n,), np.float64, 128, name)
        arr[:] = values
        stored.append(arr)
    flags, rule_stored = novelty_flags(*stored, 0.6, 3.5, where=scratch)
    assert isinstance(flags, zarr.Array)
    assert rule_stored == rule and np.array_equal(np.asarray(flags[...]), held)


def traced_peak(store: str, **kw) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        res = scalenmf.project(basis(), store, block_cols=2500, threads=1, **kw)
        res.summary()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del res
    gc.collect()
    return peak


def test_peak_memory_of_project_does_not_grow_with_n(monkeypatch, scratch, tmp_path) -> None:
    """Traced peak of a projection from a store, at n and 4n: flat within a limit, while
    the unbounded path (X cached, output in memory) grows with n."""
    stores = {
        n: scalenmf.write_matrix(tmp_path / f"x{n}.zarr", data(n), block_cols=2500)
        for n in (10_000, 40_000)
    }
    traced_peak(stores[10_000])  # warm-up: first-call imports and caches are not n's
    free = {n: traced_peak(s) for n, s in stores.items()}
    monkeypatch.setattr(local, "STATE_SHARE", 1e-6)
    traced_peak(stores[10_000], memory_limit="4GB")
    # The least of two runs: in a long test session a one-off allocation (a lazy import,
    # a cache filled on first use) can land in either run; growth with n shows in both.
    bounded = {
        n: min(traced_peak(s, memory_limit="4GB") for _ in range(2)) for n, s in stores.items()
    }
    assert free[40_000] > 2 * free[10_000], free
    # Usually 1.04×; some runs carry ~300 KB more at 4n (1.07 → 1.34–1.39 MB, up to
    # 1.30×), which points at garbage the collector frees only now and then. One source
    # was found and removed (zarr's create_array of every block state left reference
    # cycles: block states are now written without zarr, io/zarr_write.py); another
    # remains, seen in a full-suite run under load. The unbounded path grows by > 2×.
    assert bounded[40_000] < 1.35 * bounded[10_000], bounded
    assert bounded[40_000] < free[40_000] / 2, (bounded, free)


def test_cli_project_within_a_limit_writes_the_same_store(monkeypatch, scratch, tmp_path) -> None:
    X = data(900)
    store = scalenmf.write_matrix(tmp_path / "x.zarr", X, block_cols=300)
    fit = scalenmf.nmf(X, 3, max_iter=5, tol=0.0, block_cols=300)
    result = fit.save(tmp_path / "fit.zarr")

    def cli_project(out: Path, *extra: str):
        args = ["project", result, store, "-o", str(out), "--no-progress", "--bootstrap", "2"]
        r = CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return load_projection(out), r.output

    free, said = cli_project(tmp_path / "a.zarr")
    monkeypatch.setattr(local, "STATE_SHARE", 1e-9)
    bounded, said_bounded = cli_project(tmp_path / "b.zarr", "--memory-limit", "4GB")
    assert bounded.info["states_in_store"] is True and free.info["states_in_store"] is False
    same(free, bounded, (*NAMES, "H_lower", "H_upper"))
    assert said.split("wall time")[0] == said_bounded.split("wall time")[0]
    gc.collect()
    assert [p for p in scratch.iterdir() if p.name.startswith(SCRATCH_PREFIX)] == []


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
def test_chunked_median_is_numpys_median_bit_for_bit(n: int) -> None:
    from scalenmf.kernels.quantiles import chunked_median

    rng = np.random.default_rng(n)
    v = np.concatenate([rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, n), [-0.0, 0.0]])
    v[::5] = np.nan
    v[1::9] = np.inf
    finite = v[np.isfinite(v)]
    got = chunked_median(lambda: (v[a : a + 64] for a in range(0, v.size, 64)))
    assert got == np.median(finite)
    assert np.isnan(chunked_median(lambda: iter([np.array([np.nan, np.inf])])))


# -- the basis of `scalenmf project RESULT`: W only, H left on disk ----------------------


def _chunk_of(array_dir):
    return next(p for p in sorted(array_dir.rglob("*")) if p.is_file() and p.name != "zarr.json")


def test_project_reads_only_w_of_a_result_store(tmp_path):
    """At 10⁷ samples the fitted result's H is 400 MB (float32, k = 10): `scalenmf project`
    read it whole to take W (peak 655 MB against 166 MB at 10⁵). A lazy load leaves H on
    disk; W is still read whole and checked against its digest."""
    import zarr
    from click.testing import CliRunner

    from scalenmf.cli.main import main
    from scalenmf.results.nmf import load

    X = make_counts(30, 400, k=3, seed=2)
    fitted = scalenmf.nmf(X, 3, max_iter=20, progress=False)
    store = tmp_path / "fit.zarr"
    fitted.save(store)
    lazy = load(store, lazy=True)
    assert isinstance(lazy.H, zarr.Array) and isinstance(lazy.W, np.ndarray)
    assert np.array_equal(lazy.W, fitted.W) and np.array_equal(lazy.H[...], fitted.H)
    np.save(tmp_path / "x.npy", X)
    # Damage H: project does not need it (and does not read it) ...
    chunk = _chunk_of(store / "H")
    chunk.write_bytes(b"\0" * len(chunk.read_bytes()))
    out = CliRunner().invoke(
        main,
        [
            "project",
            str(store),
            str(tmp_path / "x.npy"),
            "-o",
            str(tmp_path / "p.zarr"),
            "--no-progress",
        ],
    )
    assert out.exit_code == 0, out.output
    # ... while a damaged W is refused, naming it.
    chunk = _chunk_of(store / "W")
    chunk.write_bytes(b"\0" * len(chunk.read_bytes()))
    out = CliRunner().invoke(
        main,
        [
            "project",
            str(store),
            str(tmp_path / "x.npy"),
            "-o",
            str(tmp_path / "q.zarr"),
            "--no-progress",
        ],
    )
    assert out.exit_code != 0 and "'W'" in out.output and not (tmp_path / "q.zarr").exists()
