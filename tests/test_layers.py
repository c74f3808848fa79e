"""The package's layering, kept by tests: no import cycle, no layer importing upward, a lazy
package ``__init__``, and one set of cluster options on every public function.

How imports are found: every ``scalenmf/**/*.py`` is parsed with ``ast`` and every
``import`` / ``from … import`` statement is collected, **including those inside functions**
(a deferred import is still a dependency; a cycle through one only waits for the first call
to bite). Imports under ``if TYPE_CHECKING:`` are left out: they never run. ``from a.b
import c`` counts as an import of ``a.b.c`` when that is a module, else of ``a.b``. Importing
a module runs its parent packages' ``__init__``; that implicit edge is not counted (Python
initialises a package before its modules, so it never forms a cycle of its own).
The run-time side (what ``import scalenmf.kernels`` really loads) is checked in a fresh
subprocess through ``sys.modules``.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import scalenmf

ROOT = Path(scalenmf.__file__).parent
REPO = ROOT.parent

#: Layer -> the scalenmf packages / modules it must never import.
FORBIDDEN = {
    "scalenmf.engine": (
        "scalenmf.models",
        "scalenmf.api",
        "scalenmf.results",
        "scalenmf.cli",
        "scalenmf.estimators",
        "scalenmf.experiments",
        "scalenmf.planner",
        "scalenmf.interpret",
        "scalenmf.plot",
        "scalenmf.reporting",
        "scalenmf.kernels",
    ),
    "scalenmf.io": (
        "scalenmf.kernels",
        "scalenmf.models",
        "scalenmf.engine",
        "scalenmf.api",
        "scalenmf.results",
        "scalenmf.cli",
        "scalenmf.estimators",
        "scalenmf.experiments",
        "scalenmf.planner",
        "scalenmf.plot",
        "scalenmf.reporting",
    ),
    "scalenmf.plot": (
        "scalenmf.engine",
        "scalenmf.models",
        "scalenmf.api",
        "scalenmf.cli",
        "scalenmf.estimators",
        "scalenmf.kernels",
        "scalenmf.experiments",
        "scalenmf.planner",
    ),
    "scalenmf.reporting": (
        "scalenmf.engine",
        "scalenmf.models",
        "scalenmf.api",
        "scalenmf.cli",
        "scalenmf.estimators",
        "scalenmf.kernels",
        "scalenmf.experiments",
        "scalenmf.planner",
    ),
    "scalenmf.results": (
        "scalenmf.engine",
        "scalenmf.models",
        "scalenmf.api",
        "scalenmf.cli",
        "scalenmf.estimators",
        "scalenmf.experiments",
    ),
    "scalenmf.models": (
        "scalenmf.api",
        "scalenmf.results",
        "scalenmf.cli",
        "scalenmf.estimators",
        "scalenmf.experiments",
        "scalenmf.plot",
        "scalenmf.reporting",
    ),
    "scalenmf.api": ("scalenmf.cli", "scalenmf.experiments", "scalenmf.plot"),
}

#: The cluster options every public function takes, with the same meaning (api._common).
CLUSTER_OPTIONS = tuple(
    "scheduler workers memory_limit threads scheduler_file security connect_timeout scratch".split()
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@cache
def imports() -> dict[str, dict[str, list[tuple[str, int]]]]:
    """module -> {imported scalenmf module -> [(name imported or "", line)]}."""
    mods = modules()
    out: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and _is_type_checking(node)
            for inner in ast.walk(node)
        }
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: dict[str, list[tuple[str, int]]] = {}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "scalenmf":
                        found.setdefault(alias.name, []).append(("", node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                if base.split(".")[0] != "scalenmf":
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    target = sub if sub in mods else base
                    found.setdefault(target, []).append((alias.name, node.lineno))
        out[name] = found
    return out


def _graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for t in imp if t in mods and t != m} for m, imp in imports().items()}


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_parser_sees_function_level_and_relative_imports(tmp_path):
    """The checks below are only as good as the parser: a cycle through a function-level
    import is found, a TYPE_CHECKING import is not an edge."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [frozenset({"a", "b", "c"})]
    fit = imports()["scalenmf.api.fit"]
    assert "scalenmf.io.masked" in fit  # imported inside nmf(), for masked fits
    common = imports()["scalenmf.api._common"]
    assert "scalenmf.engine.executor" not in common  # only under TYPE_CHECKING
    assert "scalenmf.engine" in common  # inside ClusterOptions.open


def test_no_import_cycle_inside_scalenmf():
    graph = _graph()
    cycles = [set(c) for c in _cycles(graph)]
    detail = {m: sorted(graph[m] & c) for c in cycles for m in sorted(c)}
    assert cycles == [], f"import cycles: {json.dumps(detail, indent=1)}"


def test_kernels_import_nothing_of_ours():
    for name, found in imports().items():
        if not name.startswith("scalenmf.kernels"):
            continue
        bad = [m for m in found if not m.startswith(("scalenmf.kernels", "scalenmf._typing"))]
        assert bad == [], f"{name} imports {bad}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_upward(layer):
    banned = FORBIDDEN[layer]
    bad = {
        name: sorted(m for m in found if m == b or m.startswith(b + "."))
        for name, found in imports().items()
        if name == layer or name.startswith(layer + ".")
        for b in banned
    }
    bad = {name: mods for name, mods in bad.items() if mods}
    assert bad == {}, f"{layer} imports upward: {bad}"


def test_only_the_cli_imports_the_experiments():
    users = {
        name
        for name, found in imports().items()
        if any(m.startswith("scalenmf.experiments") for m in found)
        and not name.startswith("scalenmf.experiments")
    }
    assert users <= {"scalenmf.cli.dnmf"}, users


@pytest.mark.parametrize(
    "layer",
    ["scalenmf.api", "scalenmf.cli", "scalenmf.results", "scalenmf.plot", "scalenmf.reporting"],
)
def test_no_private_name_is_imported_from_another_module(layer):
    """``from x import _helper`` across modules means the helper belongs in a shared,
    public place (``api._common``, ``cli._common``) instead."""
    bad = [
        f"{name}:{line} imports {alias} from {target}"
        for name, found in imports().items()
        if name == layer or name.startswith(layer + ".")
        for target, names in found.items()
        for alias, line in names
        if alias.startswith("_") and not alias.startswith("__")
    ]
    assert bad == []


def test_no_cli_module_imports_the_group():
    users = [n for n, found in imports().items() if "scalenmf.cli.main" in found]
    assert users == []


def _fresh(code: str) -> dict[str, bool]:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_scalenmf_kernels_loads_no_zarr_and_no_dask():
    loaded = _fresh(
        "import sys, json; import scalenmf.kernels; "
        "print(json.dumps({m: m in sys.modules for m in "
        "('zarr', 'dask', 'distributed', 'torch', 'scalenmf.io', 'scalenmf.engine')}))"
    )
    assert not any(loaded.values()), loaded


def test_import_scalenmf_is_lazy_and_its_names_resolve():
    loaded = _fresh(
        "import sys, json; import scalenmf; "
        "print(json.dumps({m: m in sys.modules "
        "for m in ('numpy', 'zarr', 'dask', 'scalenmf.api')}))"
    )
    assert not any(loaded.values()), loaded
    listed = dir(scalenmf)
    for name in scalenmf.__all__:
        assert name in listed
        assert getattr(scalenmf, name) is not None
    assert scalenmf.nmf is scalenmf.api.nmf
    assert scalenmf.NMFResult is scalenmf.results.NMFResult
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        scalenmf.nope  # noqa: B018


@pytest.mark.parametrize(
    ("argv", "unwanted"),
    [
        (["--help"], ("dask", "zarr", "numpy", "scipy", "scalenmf.api")),
        (["info", "--help"], ("dask", "zarr", "numpy", "scipy")),
        (["plan", "--help"], ("dask", "zarr", "numpy", "scipy")),
        (["rank", "--help"], ("dask", "zarr", "numpy", "scipy")),
    ],
)
def test_cli_start_up_imports_only_what_the_command_needs(argv, unwanted):
    """Start-up time is import time: ``scalenmf --help`` loads click and the command
    modules, never numpy, zarr or dask (each command imports those when it runs)."""
    code = (
        "import sys, json\n"
        "from scalenmf.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps({{m: m in sys.modules for m in {unwanted!r}}}))\n"
    )
    loaded = _fresh(code)
    assert not any(loaded.values()), loaded


def test_info_does_not_start_dask(tmp_path):
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, np.ones((4, 6)))
    code = (
        "import sys, json\n"
        "from scalenmf.cli.main import main\n"
        "try:\n"
        f"    main(['info', {str(store)!r}])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(json.dumps({m: m in sys.modules for m in ('dask', 'distributed')}))\n"
    )
    loaded = _fresh(code)
    assert not any(loaded.values()), loaded


def test_info_on_a_dense_store_loads_only_what_reading_it_needs(tmp_path):
    """``scalenmf info`` on a dense store reads its metadata with json and numpy; zarr and
    numcodecs (most of start-up), scipy.sparse, the text and HDF5 parsers (and our modules
    for them), the result readers and dask stay unloaded."""
    store = tmp_path / "x.zarr"
    scalenmf.write_matrix(store, np.ones((4, 6)))
    unwanted = (
        "zarr",
        "numcodecs",
        "scipy",
        "pandas",
        "h5py",
        "fast_matrix_market",
        "dask",
        "tqdm",
        "anndata",
        "scalenmf.io.formats",
        "scalenmf.io.linked_results",
        "scalenmf.io.results",
    )
    code = (
        "import sys, json\n"
        "from scalenmf.cli.main import main\n"
        "try:\n"
        f"    main(['info', {str(store)!r}])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"print(json.dumps({{m: m in sys.modules for m in {unwanted!r}}}))\n"
    )
    loaded = _fresh(code)
    assert not any(loaded.values()), loaded


def test_info_on_local_stores_does_not_import_zarr(tmp_path):
    """A sparse store with labels and a result store are described from their metadata
    too: only their small arrays (indptr, labels) are decoded, by numcodecs."""
    sparse = scalenmf.write_matrix(
        tmp_path / "s.zarr", sp.random(8, 30, density=0.2, random_state=0), col_labels=range(30)
    )
    result = scalenmf.nmf(np.ones((6, 5)) + np.eye(6, 5), 2, max_iter=3, tol=0)
    stores = [str(sparse), result.save(tmp_path / "r.zarr")]
    code = (
        "import sys, json\n"
        "from scalenmf.cli.main import main\n"
        f"for store in {stores!r}:\n"
        "    try:\n"
        "        main(['info', store])\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "print(json.dumps({m: m in sys.modules for m in ('zarr', 'scipy', 'dask')}))\n"
    )
    loaded = _fresh(code)
    assert not any(loaded.values()), loaded


def test_lazy_scipy_sparse_is_the_real_module_once_used():
    from scalenmf.io import source

    assert source.sp.csc_matrix is sp.csc_matrix
    assert source.sp.issparse(sp.eye(2)) and not source.sp.issparse(np.eye(2))


PUBLIC = ("nmf", "rank_survey", "consensus", "project", "lnmf", "inmf", "update")


def test_the_common_setup_passes_on_the_cluster_options_in_order():
    from scalenmf.api._common import CLUSTER_ARGS, cluster_options

    assert CLUSTER_ARGS == CLUSTER_OPTIONS
    assert tuple(inspect.signature(cluster_options).parameters) == CLUSTER_OPTIONS


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_function_takes_the_cluster_options(name):
    params = inspect.signature(getattr(scalenmf, name)).parameters
    missing = [p for p in CLUSTER_OPTIONS if p not in params]
    assert missing == []
    assert all(params[p].default is None for p in CLUSTER_OPTIONS)


def _fitted(X: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scalenmf.ConvergenceWarning)
        return scalenmf.nmf(X, 2, max_iter=3, progress=False)


@pytest.mark.parametrize("name", PUBLIC)
def test_the_cluster_options_reach_the_executor(name, tmp_path):
    """A scheduler file that does not exist is refused by the executor, naming the file:
    the option travelled through the common setup of every function."""
    rng = np.random.default_rng(0)
    X = rng.random((12, 20)) + 0.1
    missing = str(tmp_path / "no-scheduler.json")
    calls = {
        "nmf": lambda **kw: scalenmf.nmf(X, 2, **kw),
        "rank_survey": lambda **kw: scalenmf.rank_survey(X, "2", n_runs=2, **kw),
        "consensus": lambda **kw: scalenmf.consensus(X, 2, n_runs=2, **kw),
        "project": lambda **kw: scalenmf.project(X[:, :2], X, **kw),
        "lnmf": lambda **kw: scalenmf.lnmf([X, X], 1, 1, **kw),
        "inmf": lambda **kw: scalenmf.inmf([X, X], 2, **kw),
        "update": lambda **kw: scalenmf.update(_fitted(X), X, **kw),
    }
    with pytest.raises(Exception, match=r"no-scheduler\.json"):
        calls[name](scheduler_file=missing, connect_timeout=1, progress=False)
    with pytest.raises(ValueError, match="workers"):
        calls[name](workers=0, progress=False)


def test_the_tests_mirror_the_package():
    """Every folder of tests/ is named after the subpackage or module its tests cover, and
    only the whole-project checks stay at the top."""
    tests = Path(__file__).parent
    for folder in sorted(p for p in tests.rglob("*") if p.is_dir()):
        rel = folder.relative_to(tests)
        if rel.parts[0] in {"data", "__pycache__"} or "__pycache__" in rel.parts:
            continue
        target = ROOT.joinpath(*rel.parts)
        assert target.is_dir() or target.with_suffix(".py").is_file(), (
            f"tests/{rel.as_posix()} mirrors nothing in scalenmf/"
        )
    top = {p.name for p in tests.glob("test_*.py")}
    assert top == {"test_deploy.py", "test_fresh_machine.py", "test_layers.py"}, top
