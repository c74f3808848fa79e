"""A fresh machine: the set-up scripts say what they do, the package lock is waited for,
and the README's examples can be run as written, in order."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def _stub(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_bootstrap_says_what_it_is_doing_then_nothing_once_installed(tmp_path):
    # a python that "creates" a venv whose python "installs" anything: the script's own
    # steps and messages, without minutes of pip
    inner = 'case "$1 $2" in "-m pip") exit 0;; esac; exit 1\n'
    outer = (
        'if [ "$1" = --version ]; then echo "Python 3.x"; exit 0; fi\n'
        'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; '
        f"printf '%s\\n' '#!/bin/sh' '{inner.strip()}' > \"$3/bin/python\"; "
        'chmod +x "$3/bin/python"; exit 0; fi\nexit 1\n'
    )
    python = _stub(tmp_path / "python3", outer)
    env = {**os.environ, "SCALENMF_VENV": str(tmp_path / "venv"), "PYTHON": str(python)}
    first = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bootstrap.sh")], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    said = first.stderr
    assert "set-up: creating the virtualenv" in said and "Python 3.x" in said
    assert "set-up: installing scalenmf and its dev extras" in said and "minutes" in said
    assert f"source {tmp_path / 'venv'}/bin/activate" in said
    again = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bootstrap.sh")], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and again.stderr == ""


def test_chromium_install_waits_for_a_busy_apt_lock_with_a_bound(tmp_path):
    """No chromium on PATH, root, an apt-get that records its arguments: the script asks
    apt to wait for the dpkg lock (bounded), and says so."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _stub(bin_dir / "apt-get", f'echo "$@" >> {calls}\nexit 0\n')
    _stub(bin_dir / "id", "echo 0\n")
    for tool in ("mktemp", "rm", "tail", "cat"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True)
        (bin_dir / tool).symlink_to(found.stdout.strip())
    env = {"PATH": str(bin_dir), "SCALENMF_APT_LOCK_WAIT": "42", "HOME": str(tmp_path)}
    res = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "ensure_chromium.sh")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "installing chromium and chromium-driver with apt-get" in res.stderr
    assert "42s if apt is busy" in res.stderr
    lines = calls.read_text().splitlines()
    assert lines == ["-o DPkg::Lock::Timeout=42 install -y -q chromium chromium-driver"]


def test_the_readme_says_what_the_test_command_installs_and_how_to_reach_scalenmf():
    readme = (ROOT / "README.md").read_text()
    head = readme.split("## Quick start")[0]
    assert "apt-get" in head and "Chromium" in head and "root" in head
    assert "source .venv/bin/activate" in head


def test_the_s3_example_names_the_extra_that_has_s3fs():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    readme = (ROOT / "README.md").read_text()
    block = readme[: readme.index("scalenmf fit s3://")].rsplit("```bash", 1)[1]
    named = re.findall(r"scalenmf\[(\w+)\]", block)
    assert named and any(e.startswith("s3fs") for name in named for e in extras[name])


def _quick_start_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start")[1].split("\n## ")[0]
    block = section.split("```bash\n")[1].split("```")[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_quick_start_commands_do_not_overwrite_each_other():
    outputs = [
        shlex.split(line)[shlex.split(line).index("-o") + 1]
        for line in _quick_start_lines()
        if " -o " in line
    ]
    assert len(outputs) == len(set(outputs)), outputs


@pytest.mark.timeout(300)
def test_the_quick_start_runs_in_order(tmp_path, monkeypatch):
    """Every line of the README's Quick start, in order, on a small catalogue.tsv, in a
    fresh directory; only the line that needs the reader's own cluster is left out."""
    from scalenmf.cli.main import main

    rng = np.random.default_rng(0)
    X = rng.poisson(rng.gamma(1, 2, (40, 10)) @ rng.gamma(1, 2, (10, 30)))
    rows = ["feature\t" + "\t".join(f"s{j}" for j in range(X.shape[1]))]
    rows += [f"g{i}\t" + "\t".join(map(str, X[i])) for i in range(X.shape[0])]
    (tmp_path / "catalogue.tsv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    lines = _quick_start_lines()
    assert lines[0] == "source .venv/bin/activate"
    ran = 0
    for line in lines[1:]:
        args = shlex.split(line)
        assert args[0] == "scalenmf", line
        if "--scheduler" in args:  # the reader's cluster, not ours
            continue
        if "--workers" in args:  # the same fit on a local Dask cluster, smaller here
            args[args.index("--workers") + 1] = "2"
        res = CliRunner().invoke(main, [*args[1:], *(["--no-progress"] if "fit" in args else [])])
        assert res.exit_code == 0, (line, res.output)
        ran += 1
    assert ran == len(lines) - 2


def test_the_demo_hint_works_in_a_fresh_shell(monkeypatch):
    """After ``bash run.sh demo`` the shell has no .venv/bin on PATH: the hint names the
    script's path and how to activate; with scalenmf on PATH, just its name."""
    import shutil

    from scalenmf.demo import command_hint

    monkeypatch.setattr(shutil, "which", lambda name: None)
    hint = command_hint()
    script = Path(sys.executable).parent / "scalenmf"
    assert hint.startswith(str(script)) and "activate" in hint
    monkeypatch.setattr(shutil, "which", lambda name: str(script))
    assert command_hint() == "scalenmf"
