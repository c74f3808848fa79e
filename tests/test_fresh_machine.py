"""A fresh machine: the set-up scripts say what they do, the package lock is waited for,
and the README's examples can be run as written, in order."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

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


def _bash_block(section_title: str) -> list[str]:
    """The command lines of the first bash block of a README section, comments dropped."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"## {section_title}")[1].split("\n## ")[0]
    block = section.split("```bash\n")[1].split("```")[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _quick_start_lines() -> list[str]:
    return _bash_block("Quick start")


def test_the_quick_start_commands_do_not_overwrite_each_other():
    outputs = [
        shlex.split(line)[shlex.split(line).index("-o") + 1]
        for line in _quick_start_lines()
        if " -o " in line
    ]
    assert len(outputs) == len(set(outputs)), outputs


@pytest.mark.timeout(600)
def test_the_quick_start_then_the_plots_run_in_order(tmp_path, monkeypatch):
    """Every line of the README's Quick start, in order, on a small SBS96 catalogue.tsv in
    a fresh directory, then the plots-and-report block on what they wrote; only the line
    that needs the reader's own cluster is left out."""
    pytest.importorskip("matplotlib")
    from plot_fixtures import catalogue

    from scalenmf.cli.main import main

    counts, channels, samples = catalogue(40)
    rows = ["channel\t" + "\t".join(samples)]
    rows += [f"{c}\t" + "\t".join(str(int(v)) for v in counts[i]) for i, c in enumerate(channels)]
    (tmp_path / "catalogue.tsv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    quick = _quick_start_lines()
    assert quick[0] == "source .venv/bin/activate"
    plots = _bash_block("Plots and the HTML report")
    ran = []
    for line in quick[1:] + plots:
        args = shlex.split(line)
        assert args[0] == "scalenmf", line
        if "--scheduler" in args:  # the reader's cluster, not ours
            continue
        # the same commands, smaller here: 2 local Dask workers, at most 4 restarts
        if "--workers" in args:
            args[args.index("--workers") + 1] = "2"
        if "--n-runs" in args:
            at = args.index("--n-runs") + 1
            args[at] = str(min(int(args[at]), 4))
        quiet = ["--no-progress"] if args[1] in ("fit", "rank", "consensus") else []
        res = CliRunner().invoke(main, [*args[1:], *quiet])
        assert res.exit_code == 0, (line, res.output)
        ran.append(args[1])
    assert len(ran) == len(quick) - 2 + len(plots)
    assert (tmp_path / "report.html").stat().st_size > 10_000


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
