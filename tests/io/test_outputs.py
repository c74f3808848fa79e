"""Nothing lost: one writer per output, overwrite that always leaves a result, stale
temporaries cleaned, full or unwritable disks reported in one line before any work."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main
from scalenmf.io import atomic, lock

BIN = Path(sys.executable).parent


def X() -> np.ndarray:
    return np.random.default_rng(0).poisson(2.0, (10, 40)).astype(float) + 1


def one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def fit(inp: Path, out: Path, *extra: str):
    args = ["fit", str(inp), "-k", "2", "-o", str(out), "--no-progress", "--max-iter", "5"]
    return CliRunner().invoke(main, [*args, *extra])


@pytest.fixture
def inp(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", X())
    return tmp_path / "x.npy"


# -- item 8: a lock on an output -----------------------------------------------------------


def test_second_fit_to_the_same_output_is_refused_in_one_line(tmp_path: Path, inp: Path) -> None:
    out = tmp_path / "o.zarr"
    # A live writer: a real process holding the lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom scalenmf.io.lock import acquire\n"
            f"acquire({str(out)!r})\nprint('held', flush=True)\ntime.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        line = one_line_error(fit(inp, out))
        assert f"process {holder.pid} on {socket.gethostname()}" in line, line
        assert not out.exists() and not Path(f"{out}.checkpoint").exists()
    finally:
        holder.kill()
        holder.wait()
    # Its owner is dead now: the lock is stale and the next fit takes it over.
    assert Path(f"{out}.lock").exists()
    res = fit(inp, out)
    assert res.exit_code == 0, res.output
    assert not Path(f"{out}.lock").exists()


def test_lock_with_a_reused_pid_is_stale(tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "start": "0"}
    Path(f"{out}.lock").write_text(json.dumps(owner))
    with lock.output_lock(out):
        assert json.loads(Path(f"{out}.lock").read_text())["start"] != "0"
    assert not Path(f"{out}.lock").exists()


def test_lock_of_another_host_is_respected(tmp_path: Path, inp: Path) -> None:
    out = tmp_path / "o.zarr"
    Path(f"{out}.lock").write_text(json.dumps({"host": "elsewhere-7", "pid": 1}))
    line = one_line_error(fit(inp, out))
    assert "process 1 on elsewhere-7" in line and "o.zarr.lock" in line


# -- item 9: --overwrite leaves the old or the new result at every instant -----------------


class Killed(BaseException):
    """Stands for a SIGKILL: no cleanup code runs past it (it is not an Exception)."""


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_overwrite_killed_at_any_step_leaves_a_complete_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int
) -> None:
    out = tmp_path / "r.zarr"
    old = scalenmf.nmf(X(), 2, max_iter=3)
    old.save(out)
    new = scalenmf.nmf(X(), 3, max_iter=3)
    calls = [0]

    def dying(real):
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                raise Killed
            return real(*args, **kwargs)

        return step

    monkeypatch.setattr(os, "replace", dying(os.replace))
    monkeypatch.setattr(shutil, "rmtree", dying(shutil.rmtree))
    monkeypatch.setattr(atomic, "_exchange", dying(atomic._exchange), raising=False)
    try:
        new.save(out, overwrite=True)
    except Killed:
        pass
    monkeypatch.undo()
    lock._HELD.clear()  # the "killed" process's lock dies with it
    k = scalenmf.load(out).k
    assert k in (2, 3)


def test_overwrite_replaces_the_result(tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    scalenmf.nmf(X(), 2, max_iter=3).save(out)
    scalenmf.nmf(X(), 3, max_iter=3).save(out, overwrite=True)
    assert scalenmf.load(out).k == 3
    assert [p.name for p in tmp_path.iterdir()] == ["r.zarr"]


# -- item 10: stale temporaries are cleaned; a full disk is one line -------------------------


def test_stale_temporaries_are_removed_by_the_next_run(tmp_path: Path, inp: Path) -> None:
    out = tmp_path / "o.zarr"
    stale = tmp_path / ".o.zarr.tmp-0123456789ab"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    other = tmp_path / ".p.zarr.tmp-0123456789ab"  # another output's: left alone
    other.mkdir()
    res = fit(inp, out)
    assert res.exit_code == 0, res.output
    assert not stale.exists() and other.exists()


def test_old_store_renamed_aside_before_a_kill_is_restored(tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    scalenmf.nmf(X(), 2, max_iter=3).save(out)
    aside = tmp_path / ".r.zarr.old-0123456789ab"
    os.replace(out, aside)  # what a kill between the two renames of a fallback leaves
    with lock.output_lock(out):
        atomic.clean_stale(out)
    assert scalenmf.load(out).k == 2 and not aside.exists()


def test_full_disk_is_one_line_naming_the_output(
    tmp_path: Path, inp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zarr.storage import LocalStore

    real = LocalStore.set

    async def full(self, key, value):
        if key.endswith("zarr.json"):
            return await real(self, key, value)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)

    monkeypatch.setattr(LocalStore, "set", full)
    out = tmp_path / "o.zarr"
    line = one_line_error(fit(inp, out, "--no-checkpoint"))
    assert "no space left on device writing" in line and "o.zarr" in line, line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.zarr")]


# -- item 11: an unwritable output is found before any work ----------------------------------


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        return Path("/sys")  # refuses file creation even to root
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def test_unwritable_output_is_refused_before_the_fit(
    inp: Path, unwritable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scalenmf.engine

    def no_fit(*args, **kwargs):
        raise AssertionError("the fit ran")

    monkeypatch.setattr(scalenmf.engine, "make_executor", no_fit)
    res = fit(inp, unwritable / "o.zarr")
    line = one_line_error(res)
    assert "o.zarr" in line and "cannot" in line, line


# -- item 12: --resume on a finished job -----------------------------------------------------


def test_resume_of_a_finished_fit_exits_0_saying_so(tmp_path: Path, inp: Path) -> None:
    out = tmp_path / "o.zarr"
    assert fit(inp, out).exit_code == 0
    res = fit(inp, out, "--resume")
    assert res.exit_code == 0, res.output
    assert "nothing to resume" in res.output


@pytest.mark.parametrize("command", ["convert", "report", "plot", "interpret", "match"])
def test_every_writer_checks_its_output_before_work(
    tmp_path: Path, inp: Path, unwritable: Path, command: str
) -> None:
    result = tmp_path / "r.zarr"
    scalenmf.nmf(X(), 2, max_iter=3).save(result)
    args = {
        "convert": ["convert", str(inp), str(unwritable / "c.zarr")],
        "report": ["report", str(result), "-o", str(unwritable / "r.html")],
        "plot": ["plot", str(result), "--kind", "basis", "-o", str(unwritable / "p.png")],
        "interpret": ["interpret", str(result), "-o", str(unwritable / "dir")],
        "match": ["match", str(result), "-o", str(unwritable / "m.csv")],
    }[command]
    line = one_line_error(CliRunner().invoke(main, args))
    assert "cannot write" in line and str(unwritable) in line, line


@pytest.mark.parametrize("command", ["report", "plot", "match"])
def test_report_plot_and_match_follow_the_overwrite_rule(tmp_path: Path, command: str) -> None:
    result = tmp_path / "r.zarr"
    scalenmf.nmf(X(), 2, max_iter=3).save(result)
    target = tmp_path / {"report": "r.html", "plot": "p.png", "match": "m.csv"}[command]
    target.write_text("precious")
    ref = tmp_path / "ref.csv"
    ref.write_text("channel,S1\n" + "".join(f"{i},{i + 1}\n" for i in range(10)))
    args = {
        "report": ["report", str(result), "-o", str(target), "--reference", "none"],
        "plot": ["plot", str(result), "--kind", "basis", "-o", str(target)],
        "match": ["match", str(result), "--reference", str(ref), "-o", str(target)],
    }[command]
    line = one_line_error(CliRunner().invoke(main, args))
    assert "already exists" in line and "--overwrite" in line
    assert target.read_text() == "precious"
    res = CliRunner().invoke(main, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert target.read_bytes() != b"precious"


def test_report_refuses_a_consensus_of_another_rank(tmp_path: Path) -> None:
    from scalenmf.plot._data import Consensus
    from scalenmf.reporting import build_report

    res = scalenmf.nmf(X(), 2, max_iter=3)
    cons = Consensus(
        str(tmp_path),
        np.eye(40),
        np.arange(40),
        None,
        np.array([str(j) for j in range(40)]),
        {"k": 3},
        {},
    )
    with pytest.raises(ValueError, match="k=3, but the result has k=2"):
        build_report(res, consensus=cons, reference="none")
