"""One CLI: every command's ``--help`` works, and a shared option means the same thing in
every command that has it (walked over click's command tree, so a new command is checked
too); errors name flags; a missing input exits 1 everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from scalenmf.cli.main import main


def _walk(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append(((*prefix, name), cmd))
        if isinstance(cmd, click.Group):
            out.extend(_walk(cmd, (*prefix, name)))
    return out


COMMANDS = {" ".join(path): cmd for path, cmd in _walk(main)}
LEAVES = {name: cmd for name, cmd in COMMANDS.items() if not isinstance(cmd, click.Group)}


def _option(cmd: click.Command, flag: str) -> click.Option | None:
    for p in cmd.params:
        if isinstance(p, click.Option) and flag in (*p.opts, *p.secondary_opts):
            return p
    return None


def _visible_flags(cmd: click.Command) -> set[str]:
    return {
        o
        for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden
        for o in (*p.opts, *p.secondary_opts)
    }


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_the_tree_is_the_one_we_check():
    # a renamed or new command must be placed in the sets below
    assert set(LEAVES) == {
        "consensus", "convert", "demo", "fit", "info", "inmf", "interpret", "lnmf",
        "lnmf-ranks", "match", "plan", "plot", "prepare", "project", "rank", "report",
        "update", "dnmf train", "dnmf transform", "dnmf evaluate",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_help_works(name):
    res = run(*name.split(), "--help")
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output and "Traceback" not in res.output


#: Commands that fit at one rank (-k/--rank), that write an output (-o/--output), that
#: run long enough for a progress bar, that run on Dask, that run on local threads.
AT_ONE_RANK = {"fit", "consensus", "inmf", "plan", "demo", "update", "dnmf train"}
WRITE_OUTPUT = {
    "fit", "rank", "consensus", "lnmf", "inmf", "project", "match", "interpret", "plot",
    "report", "demo", "update", "dnmf train", "dnmf transform", "dnmf evaluate",
}  # fmt: skip
PROGRESS = {
    "fit", "rank", "consensus", "lnmf", "inmf", "lnmf-ranks", "project", "convert",
    "report", "update", "dnmf train", "dnmf transform", "dnmf evaluate",
}  # fmt: skip
ON_DASK = {
    "fit", "rank", "consensus", "lnmf", "inmf", "lnmf-ranks", "project", "update",
    "dnmf transform",
}  # fmt: skip
THREADS = {"fit", "rank", "consensus", "lnmf", "inmf", "lnmf-ranks", "project", "update"}
CLUSTER = ("--scheduler", "--scheduler-file", "--workers", "--tls-ca-file", "--tls-cert",
           "--tls-key", "--connect-timeout")  # fmt: skip


@pytest.mark.parametrize(
    "commands,flags",
    [
        (AT_ONE_RANK, ("-k", "--rank")),
        (WRITE_OUTPUT, ("-o", "--output")),
        (PROGRESS, ("--progress", "--no-progress")),
        (ON_DASK, CLUSTER),
        (THREADS, ("--threads",)),
        ({"fit", "rank", "consensus", "project", "convert", "update"}, ("--transpose",)),
        ({"fit", "rank", "consensus", "lnmf"}, ("--init",)),
        ({"plan", "lnmf-ranks", "update"}, ("--json",)),
    ],
)
def test_the_shared_options_are_present(commands, flags):
    missing = {c: [f for f in flags if f not in _visible_flags(LEAVES[c])] for c in commands}
    assert not {c: m for c, m in missing.items() if m}


#: What a shared flag means: the kind of option, and words its help must use.
MEANING = {
    "--workers": (int, ("Dask",)),
    "--scheduler": (str, ("Dask scheduler",)),
    "--threads": (int, ("Threads",)),
    "--progress": (bool, ("Progress bar",)),
    "--json": (str, ("JSON", "FILE")),
    "--transpose": (bool, ("samples × features",)),
    "--overwrite": (bool, ()),
    "-o": (str, ()),
    "-k": (int, ()),
    "--rank": (int, ()),
    "--max-iter": (int, ()),
    "--seed": (int, ()),
    "--tol": (float, ()),
    "--memory-limit": (str, ()),
    "--block-cols": (int, ()),
}
_KIND = {
    click.INT: int,
    click.FLOAT: float,
    click.STRING: str,
    click.BOOL: bool,
}


def _kind(opt: click.Option) -> type:
    if opt.is_flag or opt.is_bool_flag:
        return bool
    t = opt.type
    if isinstance(t, click.IntRange):
        return int
    if isinstance(t, click.FloatRange):
        return float
    if isinstance(t, click.Path | click.Choice):
        return str
    return _KIND.get(t, type(t))


@pytest.mark.parametrize("flag", sorted(MEANING))
def test_a_flag_means_the_same_everywhere(flag):
    kind, words = MEANING[flag]
    seen = []
    for name, cmd in LEAVES.items():
        opt = _option(cmd, flag)
        if opt is None or opt.hidden:
            continue
        seen.append(name)
        assert _kind(opt) is kind, (name, flag, opt.type)
        help_text = opt.help or ""
        for word in words:
            assert word in help_text, (name, flag, help_text)
        if flag == "-o":
            assert "--output" in opt.opts, name
        if flag == "-k":
            assert "--rank" in opt.opts, name
        if flag == "--progress":
            assert opt.secondary_opts == ["--no-progress"], name
        if flag == "--json":
            # the same kind in every command: an optional FILE ("-" or none: print it)
            assert not opt.is_flag and opt.flag_value == "-", name
    assert seen, flag


def test_the_old_dnmf_spellings_still_work(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", rng.poisson(rng.gamma(1, 3, (12, 3)) @ rng.gamma(1, 3, (3, 20))))
    res = run("dnmf", "train", tmp_path / "v.npy", "--n-components", 2, "--out", tmp_path / "m",
              "--epochs", 2, "--quiet", "--layers", 2)  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run("dnmf", "transform", tmp_path / "m", tmp_path / "v.npy", "--out",
              tmp_path / "h.zarr", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "h.zarr").exists()


@pytest.mark.timeout(180)
def test_dnmf_transform_takes_the_cluster_options_of_fit(tmp_path):
    pytest.importorskip("torch")
    import zarr

    rng = np.random.default_rng(0)
    V = rng.poisson(rng.gamma(1, 3, (12, 3)) @ rng.gamma(1, 3, (3, 30))).astype(float)
    from scalenmf.io import write_matrix

    write_matrix(tmp_path / "v.zarr", V, block_cols=10)
    res = run("dnmf", "train", tmp_path / "v.zarr", "-k", 2, "-o", tmp_path / "m", "--epochs", 2,
              "--layers", 2, "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    here = run("dnmf", "transform", tmp_path / "m", tmp_path / "v.zarr", "-o", tmp_path / "a.zarr",
               "--no-progress")  # fmt: skip
    assert here.exit_code == 0, here.output
    on_dask = run("dnmf", "transform", tmp_path / "m", tmp_path / "v.zarr", "-o",
                  tmp_path / "b.zarr", "--no-progress", "--workers", 1)  # fmt: skip
    assert on_dask.exit_code == 0, on_dask.output
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["H"][:]
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["H"][:]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    both = run("dnmf", "transform", tmp_path / "m", tmp_path / "v.zarr", "-o", tmp_path / "c.zarr",
               "--workers", 1, "--scheduler", "tcp://127.0.0.1:1")  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.output


def test_dnmf_train_refuses_workers_naming_the_new_flag(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((4, 6)))
    res = run("dnmf", "train", tmp_path / "v.npy", "-k", 2, "-o", tmp_path / "m", "--workers", 2)
    assert res.exit_code == 2
    assert "--loader-workers" in res.output and "Dask" in res.output
    assert not (tmp_path / "m").exists()


def test_plan_workers_is_plan_workers_and_the_old_spelling_warns(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((20, 30)))
    new = run("plan", tmp_path / "x.npy", "-k", 2, "--plan-workers", 3, "--json")
    assert new.exit_code == 0, new.output
    assert json.loads(new.stdout)["workers"] == 3
    old = CliRunner().invoke(main, ["plan", str(tmp_path / "x.npy"), "-k", "2", "--workers", "3"])
    assert old.exit_code == 0 and "workers: 3" in old.stdout
    assert "--plan-workers" in old.stderr


def test_json_is_the_same_kind_of_option_in_plan_and_lnmf_ranks(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        np.save(
            tmp_path / f"{name}.npy",
            rng.poisson(rng.gamma(1, 3, (15, 2)) @ rng.gamma(1, 3, (2, 25))),
        )
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    # --json last: print the JSON instead of the table
    printed = run("lnmf-ranks", a, b, "--ks", 2, "--max-iter", 20, "--no-progress", "--json")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["k_shared"] >= 1
    plan_printed = run("plan", a, "-k", 2, "--json")
    assert json.loads(plan_printed.stdout)["k"] == 2
    # --json FILE: the table is printed and the JSON written
    for cmd in (
        ["lnmf-ranks", a, b, "--ks", 2, "--max-iter", 20, "--no-progress"],
        ["plan", a, "-k", 2],
    ):
        target = tmp_path / f"{cmd[0]}.json"
        res = run(*cmd, "--json", target)
        assert res.exit_code == 0, res.output
        assert json.loads(target.read_text()) and not res.stdout.lstrip().startswith("{")
        res = run(*cmd, "--json", tmp_path / "no" / "such" / "x.json")
        assert res.exit_code == 1 and "does not exist" in res.output


def test_fit_threads_and_rank_consensus_transpose_init(tmp_path):
    import scalenmf

    rng = np.random.default_rng(2)
    X = rng.poisson(rng.gamma(1, 3, (20, 3)) @ rng.gamma(1, 3, (3, 40))).astype(float)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "xt.npy", X.T)
    res = run("fit", tmp_path / "x.npy", "-k", 3, "-o", tmp_path / "t.zarr", "--threads", 1,
              "--no-progress", "--max-iter", 30)  # fmt: skip
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(
        scalenmf.load(tmp_path / "t.zarr").W, scalenmf.nmf(X, 3, max_iter=30).W, rtol=1e-9
    )
    common = ["--n-runs", 3, "--max-iter", 30, "--no-progress"]
    res = run("consensus", tmp_path / "xt.npy", "--transpose", "-k", 2, "-o", tmp_path / "ct",
              *common)  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run("consensus", tmp_path / "x.npy", "-k", 2, "-o", tmp_path / "c", *common)
    assert res.exit_code == 0, res.output
    flipped = scalenmf.load(tmp_path / "ct" / "result.zarr")
    plain = scalenmf.load(tmp_path / "c" / "result.zarr")
    assert flipped.H.shape == (2, 40)
    np.testing.assert_allclose(flipped.W, plain.W, rtol=1e-9)
    res = run("rank", tmp_path / "xt.npy", "--transpose", "--ks", "2-3", "-o", tmp_path / "r",
              "--no-null", "--cv-reps", 0, "--init", "random", *common)  # fmt: skip
    assert res.exit_code == 0, res.output
    for cmd in (["rank", "--ks", 2], ["consensus", "-k", 2]):
        res = run(*cmd, tmp_path / "x.npy", "--init", "nndsvda", "-o", tmp_path / "n")
        assert res.exit_code == 2 and "--init random" in res.output
        assert not (tmp_path / "n").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["fit", "{x}", "-k", 2, "-o", "{o}", "--max-iter", 0], "--max-iter must be ≥ 1; got 0"),
        (["fit", "{x}", "-k", 2, "-o", "{o}", "--tol", -1], "--tol must be ≥ 0; got -1.0"),
        (["fit", "{x}", "-k", 2, "-o", "{o}", "--n-runs", 0], "--n-runs must be ≥ 1; got 0"),
        (["fit", "{x}", "-k", 0, "-o", "{o}"], "-k must be ≥ 1; got 0"),
        (["fit", "{x}", "-k", 2, "-o", "{o}", "--l1-w", -1], "--l1-w must be ≥ 0"),
        (["fit", "{x}", "-k", 2, "-o", "{o}", "--memory-limit", "lots"], "--memory-limit"),
        (["consensus", "{x}", "-k", 2, "-o", "{o}", "--max-iter", 0], "--max-iter must be ≥ 1"),
        (["rank", "{x}", "--ks", "2", "-o", "{o}", "--tol", -1], "--tol must be ≥ 0"),
    ],
)
def test_errors_name_the_flag_not_the_parameter(tmp_path, args, message):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((10, 12)))
    filled = [str(a).format(x=tmp_path / "x.npy", o=tmp_path / "o") for a in args]
    res = CliRunner().invoke(main, filled)
    assert res.exit_code == 1, res.output
    assert message in res.output
    python_names = ("max_iter", "n_runs", "l1_w", "memory_limit", "k must be in")
    assert not any(p in res.output for p in python_names), res.output
    assert not (tmp_path / "o").exists()


MISSING_INPUT = [
    ["fit", "{m}", "-k", 2, "-o", "{o}"],
    ["convert", "{m}", "{o}"],
    ["info", "{m}"],
    ["plan", "{m}", "-k", 2],
    ["rank", "{m}", "-o", "{o}"],
    ["consensus", "{m}", "-k", 2, "-o", "{o}"],
    ["match", "{m}"],
    ["interpret", "{m}", "-o", "{o}"],
    ["plot", "{m}", "--kind", "basis", "-o", "{o}.png"],
    ["report", "{m}", "-o", "{o}.html"],
    ["lnmf", "{m}", "{m}", "--k-shared", 1, "--k-unique", 1, "-o", "{o}"],
    ["inmf", "{m}", "{m}", "-k", 2, "-o", "{o}"],
    ["lnmf-ranks", "{m}", "{m}", "--ks", 2],
    ["project", "{m}", "{m}", "-o", "{o}"],
    ["prepare", "{m}", "-o", "{o}"],
    ["update", "{m}", "{m}", "-o", "{o}"],
    ["dnmf", "train", "{m}", "-k", 2, "-o", "{o}"],
    ["dnmf", "transform", "{m}", "{m}", "-o", "{o}"],
]


def test_missing_input_list_covers_every_command_that_reads():
    reads = {" ".join(a[:2]) if a[0] == "dnmf" else a[0] for a in MISSING_INPUT}
    assert reads == set(LEAVES) - {"demo", "dnmf evaluate"}


@pytest.mark.parametrize("args", MISSING_INPUT, ids=lambda a: " ".join(map(str, a[:2])))
def test_a_missing_input_exits_1_in_every_command(tmp_path, args):
    filled = [str(a).format(m=tmp_path / "missing.zarr", o=tmp_path / "out") for a in args]
    res = CliRunner().invoke(main, filled)
    assert res.exit_code == 1, res.output
    assert "does not exist" in res.output or "no such" in res.output, res.output
    assert "Traceback" not in res.output
    assert not list(Path(tmp_path).iterdir())


def test_factors_are_f1_to_fk_in_every_table(tmp_path):
    """match, interpret's tables, consensus's clusters.csv and factors.csv, lnmf-ranks: the
    factors are F1…Fk, as in the plots and the report."""
    import csv

    import scalenmf

    def column(path, name):
        with open(path, newline="") as fh:
            return {row[name] for row in csv.DictReader(fh)}

    rng = np.random.default_rng(5)
    X = rng.poisson(rng.gamma(1, 3, (96, 3)) @ rng.gamma(1, 3, (3, 30))).astype(float)
    np.save(tmp_path / "x.npy", X)
    scalenmf.nmf(X, 3, max_iter=20).save(tmp_path / "r.zarr")
    res = run("match", tmp_path / "r.zarr", "-o", tmp_path / "m.csv")
    assert res.exit_code == 0, res.output
    assert column(tmp_path / "m.csv", "factor") == {"F1", "F2", "F3"}
    assert [line.split()[0] for line in res.stdout.splitlines()[1:4]] == ["F1", "F2", "F3"]
    res = run("interpret", tmp_path / "r.zarr", "-o", tmp_path / "i")
    assert res.exit_code == 0, res.output
    assert column(tmp_path / "i" / "clusters.csv", "factor") <= {"F1", "F2", "F3"}
    assert column(tmp_path / "i" / "top_features.csv", "factor") == {"F1", "F2", "F3"}
    assert column(tmp_path / "i" / "feature_scores.csv", "factor") <= {"F1", "F2", "F3"}
    with open(tmp_path / "i" / "sparseness.csv", newline="") as fh:
        labels = [r["label"] for r in csv.DictReader(fh) if r["what"] != "sample"]
    assert labels == ["F1", "F2", "F3"] * 2
    res = run("consensus", tmp_path / "x.npy", "-k", 3, "--n-runs", 3, "--max-iter", 20,
              "-o", tmp_path / "c", "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert column(tmp_path / "c" / "clusters.csv", "factor") <= {"F1", "F2", "F3"}
    assert column(tmp_path / "c" / "factors.csv", "factor") == {"F1", "F2", "F3"}


def _summary_error(stdout: str) -> str:
    return stdout.split("relative error=")[1].split()[0]


def test_progress_in_a_log_is_a_line_every_few_percent_ending_on_the_summary(tmp_path):
    """stderr of the runner is not a terminal: lines, not frames; the last line is the
    full count and the relative error the summary prints (the kept run's)."""
    rng = np.random.default_rng(4)
    np.save(tmp_path / "x.npy", rng.random((20, 30)))
    res = run("fit", tmp_path / "x.npy", "-k", 3, "-o", tmp_path / "a.zarr", "--max-iter", 200,
              "--tol", 0, "--n-runs", 3, "--loss", "kl")  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("nmf k=3")]
    assert "\r" not in res.stderr
    assert 15 <= len(lines) <= 21, lines  # every 5 %, and the last line
    assert lines[-1].startswith("nmf k=3: 200/200 it (100%)")
    assert f"rel.err {_summary_error(res.stdout)}," in lines[-1]


def test_progress_total_is_honest_when_the_fit_stops_early(tmp_path):
    rng = np.random.default_rng(4)
    np.save(tmp_path / "x.npy", rng.random((20, 30)))
    res = run("fit", tmp_path / "x.npy", "-k", 3, "-o", tmp_path / "a.zarr", "--tol", 1e-2,
              "--n-runs", 2)  # fmt: skip
    assert res.exit_code == 0, res.output
    last = [ln for ln in res.stderr.splitlines() if ln.startswith("nmf k=3")][-1]
    done = last.split(": ")[1].split(" it")[0]
    n, total = map(int, done.split("/"))
    assert n == total < 200 and "(100%) (stopped early: converged)" in last
    assert f"rel.err {_summary_error(res.stdout)}," in last


def test_a_terminal_bar_ends_at_the_iterations_that_ran():
    import io

    from scalenmf.engine.progress import LineProgress, finish, progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress_bar(200, "nmf k=2", Terminal())
    assert not isinstance(bar, LineProgress)
    bar.update(37)
    finish(bar, 37, "rel.err 0.25")
    assert bar.total == 37 and bar.n == 37 and "rel.err 0.25" in str(bar)
    bar.close()
    assert isinstance(progress_bar(10, "x", io.StringIO()), LineProgress)
