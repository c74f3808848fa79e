"""``scratch=`` / ``--scratch DIR``: where the stores kept out of memory go, and that they go.

Past ``STATE_SHARE`` of ``memory_limit`` the block states (and H, and project's per-sample
outputs) live in scratch Zarr stores. Every public function and every fitting command
takes the directory for them; the CLI's default is beside the output; whatever a run made
there is removed when it ends, whether it succeeded or failed.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.cluster import scratch_for
from scalenmf.cli.main import main
from scalenmf.engine import dask_exec, local
from scalenmf.io import state_store
from scalenmf.io.state_store import SCRATCH_PREFIX
from tests.conftest import make_counts


def stores_in(where: Path) -> list[Path]:
    return [p for p in where.iterdir() if p.name.startswith(SCRATCH_PREFIX)]


def counts(n: int = 300, sparse: bool = False):
    X = make_counts(20, n, k=3, seed=5, zeros=0.3)
    return sp.csc_matrix(X) if sparse else X


@pytest.fixture
def spill_everything(monkeypatch):
    """Any state and any per-sample output is over its share: all of it goes to scratch."""
    monkeypatch.setattr(local, "STATE_SHARE", 0.0)


@pytest.fixture
def made(monkeypatch) -> list[str]:
    """The scratch stores created, by path (every road to one goes through
    ``scratch_location``)."""
    paths: list[str] = []
    original = state_store.scratch_location

    def recording(where=None):
        path = original(where)
        paths.append(path)
        return path

    for module in (state_store, local, dask_exec):
        monkeypatch.setattr(module, "scratch_location", recording)
    return paths


def quiet_fit(X, **kw):
    kw = {"max_iter": 5, "tol": 0.0, "block_cols": 50, "progress": False, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return scalenmf.nmf(X, 3, **kw)


# -- the Python API -----------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_nmf_keeps_its_scratch_stores_where_told_and_removes_them(
    scratch: Path, tmp_path: Path, spill_everything, sparse: bool
) -> None:
    X = counts(sparse=sparse)
    held = quiet_fit(X)
    mine = tmp_path / "my-scratch"  # does not exist yet: created
    seen: list[int] = []
    out = quiet_fit(
        X, memory_limit="4GB", scratch=mine, callback=lambda _: seen.append(len(stores_in(mine)))
    )
    assert out.info["states_in_store"] is True
    assert seen and min(seen) >= 1, "no scratch store in the directory given"
    assert stores_in(scratch) == [], "the environment's default was used instead"
    assert out.loss_history == held.loss_history
    assert np.array_equal(np.asarray(out.H[...]), held.H)
    del out
    gc.collect()
    assert stores_in(mine) == []


def test_the_scratch_stores_are_removed_when_the_fit_fails(
    tmp_path: Path, spill_everything
) -> None:
    mine = tmp_path / "s"

    def fail(info) -> None:
        assert stores_in(mine), "the states are not in the scratch directory"
        if info.iteration == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        quiet_fit(counts(), memory_limit="4GB", scratch=mine, callback=fail)
    gc.collect()
    assert stores_in(mine) == []


PUBLIC = {
    "nmf": lambda X, **kw: quiet_fit(X, **kw),
    "rank_survey": lambda X, **kw: scalenmf.rank_survey(
        X, "2-3", n_runs=2, cv_reps=0, max_iter=4, **kw
    ),
    "consensus": lambda X, **kw: scalenmf.consensus(X, 2, n_runs=3, max_iter=4, **kw),
    "project": lambda X, **kw: scalenmf.project(quiet_fit(X), X, **kw),
    "update": lambda X, **kw: scalenmf.update(quiet_fit(X[:, :150]), X[:, 150:], max_iter=3, **kw),
    "lnmf": lambda X, **kw: scalenmf.lnmf([X[:, :150], X[:, 150:]], 1, 1, max_iter=4, **kw),
    "inmf": lambda X, **kw: scalenmf.inmf([X[:, :150], X[:, 150:]], 2, max_iter=4, **kw),
}


@pytest.mark.parametrize("name", list(PUBLIC))
def test_every_public_function_puts_its_scratch_stores_where_told(
    name: str, scratch: Path, tmp_path: Path, spill_everything, made: list[str]
) -> None:
    mine = tmp_path / "mine"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = PUBLIC[name](counts(), memory_limit="4GB", scratch=str(mine), progress=False)
    assert made, f"{name} kept nothing out of memory"
    mine_now = [p for p in made if Path(p).parent == mine]
    assert mine_now, f"{name}: no scratch store in the directory given ({made})"
    del result
    gc.collect()
    assert stores_in(mine) == [] and stores_in(scratch) == []


def test_without_scratch_the_environment_names_the_directory(
    scratch: Path, spill_everything, made: list[str]
) -> None:
    quiet_fit(counts(), memory_limit="4GB")
    assert made and all(Path(p).parent == scratch for p in made)


@pytest.mark.parametrize(
    "bad, message",
    [("a-file", "is a file, not a directory"), ("a-file/below", "cannot be created")],
)
@pytest.mark.parametrize("name", ["nmf", "rank_survey", "project"])
def test_a_scratch_that_is_no_directory_is_refused_naming_it(
    tmp_path: Path, name: str, bad: str, message: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    where = tmp_path / bad
    with pytest.raises(ValueError, match=message) as err:
        PUBLIC[name](counts(), scratch=where, progress=False)
    assert str(where) in str(err.value) and "scratch" in str(err.value)


def test_a_scratch_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ValueError, match="scratch must be a directory path or URL, not int"):
        quiet_fit(counts(), scratch=3)


# -- the CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["fit", "transform"])
def test_the_estimator_puts_its_scratch_stores_where_told(
    how: str, scratch: Path, tmp_path: Path, spill_everything, made: list[str]
) -> None:
    """``scalenmf.NMF(scratch=...)``: fit and transform spill there (``partial_fit``
    holds its one batch in memory: it has nothing to spill)."""
    mine = tmp_path / "estimator-scratch"
    X = counts().T  # samples × features
    est = scalenmf.NMF(3, max_iter=5, tol=0.0, memory_limit="4GB", scratch=str(mine))
    assert est.get_params()["scratch"] == str(mine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
        made.clear()
        if how == "transform":
            est.transform(X)
        elif how == "fit":
            est.fit(X)
    assert made and all(Path(p).parent == mine for p in made), made
    del est  # its result_ may hold H in scratch: the store goes with the estimator
    gc.collect()
    assert stores_in(mine) == [] and stores_in(scratch) == []


def test_the_estimator_refuses_a_scratch_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    est = scalenmf.NMF(3, scratch=tmp_path / "a-file")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        est.fit(counts().T)


@pytest.fixture
def cli_input(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, counts())
    return path


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_the_cli_keeps_scratch_beside_the_output_by_default(
    tmp_path: Path, cli_input: Path, monkeypatch, spill_everything, made: list[str]
) -> None:
    monkeypatch.delenv("SCALENMF_SCRATCH", raising=False)
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    res = invoke(
        [
            "fit",
            cli_input,
            "-k",
            3,
            "-o",
            out_dir / "r.zarr",
            "--memory-limit",
            "4GB",
            "--no-progress",
            "--max-iter",
            4,
            "--block-cols",
            50,
        ]
    )
    assert res.exit_code == 0, res.output
    assert made and all(Path(p).parent == out_dir for p in made), made
    gc.collect()
    assert stores_in(out_dir) == []
    assert scalenmf.load(out_dir / "r.zarr").H.shape == (3, 300)


@pytest.mark.parametrize(
    "command",
    [
        ["fit", "{x}", "-k", "3", "--max-iter", "4"],
        [
            "rank",
            "{x}",
            "--ks",
            "2-3",
            "--n-runs",
            "2",
            "--cv-reps",
            "0",
            "--no-null",
            "--max-iter",
            "4",
        ],
        ["consensus", "{x}", "-k", "2", "--n-runs", "3", "--max-iter", "4"],
        ["project", "{fit}", "{x}"],
        ["update", "{fit}", "{x}", "--max-iter", "3"],
        ["lnmf", "{x}", "{x}", "--k-shared", "1", "--k-unique", "1", "--max-iter", "4"],
    ],
    ids=lambda c: c[0],
)
def test_every_fitting_command_takes_scratch(
    tmp_path: Path,
    cli_input: Path,
    scratch: Path,
    spill_everything,
    made: list[str],
    command: list[str],
) -> None:
    fitted = tmp_path / "fit.zarr"
    quiet_fit(counts()).save(fitted)
    made.clear()
    mine = tmp_path / "mine"
    args = [a.format(x=cli_input, fit=fitted) for a in command]
    res = invoke(
        [*args, "-o", tmp_path / "out", "--memory-limit", "4GB", "--scratch", mine, "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert made and all(Path(p).parent == mine for p in made), made
    gc.collect()
    assert stores_in(mine) == [] and stores_in(scratch) == []


def test_the_cli_refuses_a_scratch_that_is_a_file(tmp_path: Path, cli_input: Path) -> None:
    (tmp_path / "f").write_text("x")
    res = CliRunner().invoke(
        main,
        [
            "fit",
            str(cli_input),
            "-k",
            "2",
            "-o",
            str(tmp_path / "r.zarr"),
            "--scratch",
            str(tmp_path / "f"),
            "--no-progress",
        ],
    )
    assert res.exit_code != 0
    assert "is a file, not a directory" in res.output and str(tmp_path / "f") in res.output
    assert not (tmp_path / "r.zarr").exists()


def test_scratch_for_a_cluster_elsewhere_is_not_beside_the_output(monkeypatch) -> None:
    monkeypatch.delenv("SCALENMF_SCRATCH", raising=False)
    assert scratch_for(None, "/data/out/r.zarr", {"scheduler": None}) == "/data/out"
    assert scratch_for(None, "/data/out/r.zarr", {"scheduler": "tcp://10.0.0.5:8786"}) is None
    assert scratch_for(None, "/data/out/r.zarr", {"scheduler_file": "s.json"}) is None
    assert scratch_for(None, "s3://bucket/r.zarr", {}) is None
    assert scratch_for("/fast", "/data/out/r.zarr", {"scheduler": "tcp://h:1"}) == "/fast"
    monkeypatch.setenv("SCALENMF_SCRATCH", "/env")
    assert scratch_for(None, "/data/out/r.zarr", {}) is None  # the executor reads it


# -- a Dask cluster (scheduler and workers as separate processes on 127.0.0.1) ----------


@pytest.mark.cluster
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_on_a_cluster_the_anchor_goes_to_the_scratch_given(
    tmp_path: Path, scratch: Path, sparse: bool
) -> None:
    from tests.procs import ProcCluster

    store = scalenmf.write_matrix(tmp_path / "x.zarr", counts(sparse=sparse), block_cols=50)
    laptop = quiet_fit(store)
    mine = tmp_path / "anchor-here"
    seen: list[int] = []
    procs = ProcCluster(tmp_path / "procs")
    try:
        procs.start(2)
        with procs.client() as client:
            res = quiet_fit(
                store,
                scheduler=client,
                scratch=mine,
                callback=lambda _: seen.append(len(stores_in(mine))),
            )
    finally:
        procs.stop()
    assert res.info["anchor"] == "storage"
    assert seen and max(seen) >= 1, "the anchor was not written where told"
    assert stores_in(scratch) == [] and stores_in(mine) == []
    assert res.loss_history == laptop.loss_history
    assert np.array_equal(res.W, laptop.W) and np.array_equal(res.H, laptop.H)
