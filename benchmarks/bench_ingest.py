"""Ingest benchmark: ``scalenmf.convert`` against the libraries that read each format.

Each measurement runs in a fresh child process, so its peak RSS is its own (reported as the
peak and as the rise above the process's RSS after imports):

- Matrix Market 20,000 × 5,000 with 5·10⁶ non-zeros (sorted by column as 10x writes),
  plain and gzipped: ``scalenmf.convert`` (to a Zarr store) against ``scipy.io.mmread``
  (fast_matrix_market inside; loads everything in memory). Goal: ≤ 1.5× mmread's time at a
  peak memory bounded by ``--memory-limit``, not by the file.
- the 10x-scale file (20,000 × 500,000, 5·10⁸ non-zeros, gzipped) under
  ``--memory-limit 1GB``, in-process and on a LocalCluster of 2 workers (the input is
  deleted afterwards unless ``--keep``); ``--tenx-scale`` shrinks the number of columns
  (and non-zeros) by that factor (``--tenx-scale 0.05`` is 20,000 × 25,000 with 2.5·10⁷).
- TSV 2,000 × 10,000 against pandas' chunked reader (goal ≤ 1×).
- h5ad of the first matrix against ``anndata.read_h5ad`` (goal ≤ 2×).
- ``--only mtx,mtxdask`` adds the Matrix Market cases converted on a LocalCluster of 2
  worker processes (started before the clock; the workers parse, this process writes).
- start-up (``--only startup``): wall and CPU time of ``scalenmf --help``, ``info --help``,
  ``plan --help`` and ``info STORE`` on a small dense store, best of ``--repeat`` (goal
  < 0.5 s); ``info STORE`` needs numpy and zarr to read the store, nothing else.

Usage::

    python -m benchmarks.bench_ingest --workdir /tmp/ingest            # everything
    python -m benchmarks.bench_ingest --only mtx,tsv --repeat 3
    python -m benchmarks.bench_ingest --only tenx --tenx-scale 0.05    # 1/20 of the 10x file
    python -m benchmarks.bench_ingest --only startup --repeat 5

Inputs are generated once per size (seeded) in ``--workdir`` and reused.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# -- inputs --------------------------------------------------------------------------------------


def make_mtx(path: Path, m: int, n: int, nnz: int, seed: int = 0) -> Path:
    """A 10x-style integer coordinate file (sorted by column, then row), and side files."""
    if path.exists():
        return path
    plain = path.with_name(path.name.removesuffix(".gz"))
    if path != plain and plain.exists():
        with open(plain, "rb") as src, gzip.open(path, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        return path
    import scipy.io
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    per_col = rng.multinomial(nnz, np.full(n, 1.0 / n))
    per_col = np.minimum(per_col, m)
    cols = np.repeat(np.arange(n, dtype=np.int64), per_col)
    rows = np.concatenate([np.sort(rng.choice(m, size=k, replace=False)) for k in per_col])
    vals = rng.integers(1, 20, size=rows.size).astype(np.float64)
    X = sp.coo_matrix((vals, (rows, cols)), shape=(m, n))
    scipy.io.mmwrite(plain, X, field="integer")
    if path.name.endswith(".gz"):
        with open(plain, "rb") as src, gzip.open(path, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    prefix = plain.name.removesuffix("matrix.mtx")
    (path.parent / f"{prefix}features.tsv").write_text(
        "".join(f"ENSG{i:08d}\tG{i}\tGene Expression\n" for i in range(m))
    )
    (path.parent / f"{prefix}barcodes.tsv").write_text("".join(f"C{j:07d}-1\n" for j in range(n)))
    return path


def make_mtx_large(path: Path, m: int, n: int, nnz: int, seed: int = 2) -> Path:
    """A 10x-style gzipped integer coordinate file too large to build in memory: written
    column block by column block (each column's rows distinct and sorted, values 1..19,
    exactly ``nnz`` entries), text by fast_matrix_market, gzip by ISA-L; and side files."""
    if path.exists():
        return path
    import io

    import fast_matrix_market as fmm
    from isal import igzip

    rng = np.random.default_rng(seed)
    per_col = np.minimum(rng.multinomial(nnz, np.full(n, 1.0 / n)), m)
    tmp = path.with_name(path.name + ".part")
    with igzip.open(tmp, "wb", compresslevel=1) as out:
        out.write(
            f"%%MatrixMarket matrix coordinate integer general\n{m} {n} {per_col.sum()}\n".encode()
        )
        step = max(1, (1 << 23) // max(1, nnz // max(n, 1)))  # about 8·10⁶ entries a block
        for a in range(0, n, step):
            b = min(n, a + step)
            counts = per_col[a:b]
            rows = np.concatenate(
                [np.sort(rng.choice(m, size=int(k), replace=False)) for k in counts]
            ).astype(np.int32)
            cols = np.repeat(np.arange(a, b, dtype=np.int32), counts)
            vals = rng.integers(1, 20, size=rows.size, dtype=np.int64)
            buf = io.BytesIO()
            fmm.write_coo(buf, (vals, (rows, cols)), shape=(m, n))
            text = buf.getvalue()
            # Drop fast_matrix_market's banner, comment and size lines: one header per file.
            pos = 0
            while text[pos : pos + 1] == b"%":
                pos = text.index(b"\n", pos) + 1
            out.write(memoryview(text)[text.index(b"\n", pos) + 1 :])
    tmp.rename(path)
    prefix = path.name.removesuffix(".gz").removesuffix("matrix.mtx")
    (path.parent / f"{prefix}features.tsv").write_text(
        "".join(f"ENSG{i:08d}\tG{i}\tGene Expression\n" for i in range(m))
    )
    (path.parent / f"{prefix}barcodes.tsv").write_text("".join(f"C{j:07d}-1\n" for j in range(n)))
    return path


def make_tsv(path: Path, m: int, n: int, seed: int = 1) -> Path:
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        fh.write("gene\t" + "\t".join(f"S{j}" for j in range(n)) + "\n")
        for i in range(m):
            row = rng.poisson(2.0, size=n)
            fh.write(f"g{i}\t" + "\t".join(map(str, row.tolist())) + "\n")
    return path


def make_h5ad(path: Path, mtx: Path) -> Path:
    if path.exists():
        return path
    import warnings

    import anndata as ad
    import scipy.io
    import scipy.sparse as sp

    X = sp.csr_matrix(scipy.io.mmread(mtx).T.tocsr(), dtype=np.float32)  # cells × genes
    a = ad.AnnData(X=X)
    a.obs_names = [f"C{j}" for j in range(X.shape[0])]
    a.var_names = [f"G{i}" for i in range(X.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(path)
    return path


# -- one measurement, in a child process -----------------------------------------------------------
CHILD = r"""
import json, os, resource, shutil, sys, time
import psutil
kind, src, out, limit = sys.argv[1:5]
client = None
if kind == "convert-dask":
    # The cluster's start-up is not the conversion's: started before the clock.
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=limit,
                           dashboard_address=None)
    client = Client(cluster)
    # Each worker imports the parser once, on its first task: a start-up cost too.
    client.run(lambda: __import__("scalenmf.io.formats.mtx") and None)
    kind = "convert"
if kind == "convert":
    import scalenmf
    from scalenmf.io.convert import convert
    import scalenmf.io.formats, fast_matrix_market, pandas, h5py, tqdm.auto  # noqa
    import numpy as np
    # Imports and zarr's codec registry are start-up costs, not the conversion's.
    convert(np.ones((2, 2)), out + ".warm", overwrite=True)
    shutil.rmtree(out + ".warm")
elif kind == "mmread":
    import scipy.io
elif kind == "pandas":
    import numpy as np, pandas as pd
elif kind == "anndata":
    import anndata
base = psutil.Process().memory_info().rss
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c = cpu()
t = time.perf_counter()
if kind == "convert":
    shutil.rmtree(out, ignore_errors=True)
    convert(src, out, memory_limit=None if limit == "-" else limit, scheduler=client)
elif kind == "mmread":
    X = scipy.io.mmread(src)
elif kind == "pandas":
    parts = []
    for chunk in pd.read_csv(src, sep="\t", index_col=0, chunksize=200):
        parts.append(chunk.to_numpy(dtype=np.float64))
elif kind == "anndata":
    a = anndata.read_h5ad(src)
wall = time.perf_counter() - t
cpu_s = cpu() - c  # all threads: on a loaded machine less noisy than the wall time
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rise = max(0, peak - base)
rec = {"wall_s": wall, "cpu_s": cpu_s, "peak_rss": peak, "rise_rss": rise}
if client is not None:
    def usage():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_maxrss * 1024, r.ru_utime + r.ru_stime
    per = list(client.run(usage).values())
    rec["worker_peak_rss"] = max(p for p, _ in per)
    rec["worker_cpu_s"] = sum(c for _, c in per)
    client.close()
    cluster.close()
print(json.dumps(rec))
"""


def _child(kind: str, src: Path, out: Path, limit: str | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(src), str(out), limit or "-"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{kind} {src} failed:\n{res.stderr[-2000:]}")
    rec: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return rec


def measure(kind: str, src: Path, out: Path, limit: str | None, repeat: int) -> dict[str, Any]:
    """Best wall time of ``repeat`` child runs, with the peak RSS of that run."""
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        rec = _child(kind, src, out, limit)
        if best is None or rec["wall_s"] < best["wall_s"]:
            best = rec
    shutil.rmtree(out, ignore_errors=True)
    assert best is not None
    return best


def pair(
    ref_kind: str,
    src: Path,
    out: Path,
    limit: str | None,
    repeat: int,
    ours_kind: str = "convert",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``convert`` and the reference, alternated (so both see the same machine load):
    the best of ``repeat`` runs of each."""
    ours = ref = None
    for _ in range(repeat):
        a = _child(ours_kind, src, out, limit if limit or ours_kind == "convert" else "1GB")
        b = _child(ref_kind, src, out, None)
        ours = a if ours is None or a["wall_s"] < ours["wall_s"] else ours
        ref = b if ref is None or b["wall_s"] < ref["wall_s"] else ref
    shutil.rmtree(out, ignore_errors=True)
    assert ours is not None and ref is not None
    return ours, ref


def startup(args: list[str], repeat: int) -> tuple[float, float]:
    """Best wall and CPU (user + system) seconds of ``scalenmf ARGS`` in a fresh process."""
    import resource

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "scalenmf.cli.main", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(walls), min(cpus)


def _mb(x: float) -> str:
    return f"{x / 2**20:.0f} MiB"


def row(name: str, ours: dict[str, Any], ref: dict[str, Any], ref_name: str, goal: float) -> str:
    ratio = ours["wall_s"] / ref["wall_s"]
    cpu_ratio = ours["cpu_s"] / ref["cpu_s"]
    met = "yes" if ratio <= goal else "no"
    return (
        f"| {name} | {ours['wall_s']:.2f} s ({ours['cpu_s']:.2f} s) "
        f"| {_mb(ours['peak_rss'])} ({_mb(ours['rise_rss'])}) "
        f"| {ref_name} {ref['wall_s']:.2f} s ({ref['cpu_s']:.2f} s) "
        f"| {_mb(ref['peak_rss'])} ({_mb(ref['rise_rss'])}) "
        f"| {ratio:.2f}× ({cpu_ratio:.2f}×) (goal ≤ {goal:g}×: {met}) |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scalenmf-bench-ingest"))
    ap.add_argument("--only", default="mtx,tsv,h5ad,tenx")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="Fraction of columns of each case")
    ap.add_argument("--tenx-scale", type=float, default=0.05, help="Fraction of the 10x file")
    ap.add_argument("--memory-limit", default=None, help="convert's budget (default 1 GiB)")
    ap.add_argument(
        "--keep", action="store_true", help="Keep the generated 10x-scale input (it is large)"
    )
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        f"uptime: {os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} (1/5 min load), "
        f"{os.cpu_count()} CPUs; best of {args.repeat}, each case alternating with its "
        "reference; wall time (CPU time of all threads); peak RSS (rise above imports)",
        "",
        "| case | scalenmf.convert | peak RSS | reference | peak RSS | ratio |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)

    def emit(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    n = max(1, int(5000 * args.scale))
    nnz = int(5_000_000 * args.scale)
    mtx_dir = work / f"mtx-{n}"
    mtx_dir.mkdir(exist_ok=True)
    plain = make_mtx(mtx_dir / "matrix.mtx", 20_000, n, nnz)
    gz = make_mtx(mtx_dir / "matrix.mtx.gz", 20_000, n, nnz) if "mtx" in only else None
    out = work / "out.zarr"
    if "mtx" in only:
        for label, path in ((f"mtx 20000×{n}, {nnz:.1e} nnz", plain), ("same, gzipped", gz)):
            assert path is not None
            ours, ref = pair("mmread", path, out, args.memory_limit, args.repeat)
            emit(row(label, ours, ref, "mmread", 1.5))
            if "mtxdask" in only:
                ours, ref = pair(
                    "mmread", path, out, args.memory_limit, args.repeat, "convert-dask"
                )
                emit(row(f"{label}, LocalCluster of 2 workers", ours, ref, "mmread", 1.5))
    if "tsv" in only:
        tn = max(1, int(10_000 * args.scale))
        tsv = make_tsv(work / f"x-{tn}.tsv", 2000, tn)
        ours, ref = pair("pandas", tsv, out, args.memory_limit, args.repeat)
        emit(row(f"tsv 2000×{tn}", ours, ref, "pandas chunks", 1.0))
    if "h5ad" in only:
        h5 = make_h5ad(work / f"x-{n}.h5ad", plain)
        ours, ref = pair("anndata", h5, out, args.memory_limit, args.repeat)
        emit(row(f"h5ad {n} cells × 20000", ours, ref, "read_h5ad", 2.0))
    if "tenx" in only:
        tn = max(1, int(500_000 * args.tenx_scale))
        tnnz = int(5e8 * args.tenx_scale)
        d = work / f"tenx-{tn}"
        d.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        path = make_mtx_large(d / "matrix.mtx.gz", 20_000, tn, tnnz, seed=2)
        print(f"(10x input ready in {time.perf_counter() - t0:.0f} s)", flush=True)
        for kind in ("convert", "convert-dask"):
            ours = measure(kind, path, out, "1GB", 1)
            where = "in-process" if kind == "convert" else "LocalCluster of 2 workers"
            workers = (
                f"; workers: peak {_mb(ours['worker_peak_rss'])}, CPU {ours['worker_cpu_s']:.1f} s"
                if "worker_peak_rss" in ours
                else ""
            )
            emit(
                f"| 10x-scale ×{args.tenx_scale:g}: 20000×{tn}, {tnnz:.1e} nnz gz, "
                f"--memory-limit 1GB, {where} | {ours['wall_s']:.1f} s ({ours['cpu_s']:.1f} s) "
                f"| {_mb(ours['peak_rss'])} ({_mb(ours['rise_rss'])}){workers} "
                f"| – | – | load {os.getloadavg()[0]:.1f} |"
            )
        if not args.keep:
            shutil.rmtree(d)  # gigabytes at full scale
    if "startup" in only:
        store = work / "startup.zarr"
        if not store.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import numpy as np, scalenmf; "
                    f"scalenmf.write_matrix({str(store)!r}, np.ones((20, 30)))",
                ],
                env={**os.environ, "PYTHONPATH": str(REPO)},
                check=True,
            )
        emit("")
        emit("| start-up | wall | CPU |")
        emit("|---|---|---|")
        for argv in (["--help"], ["info", "--help"], ["plan", "--help"], ["info", str(store)]):
            wall, cpu = startup(argv, args.repeat)
            shown = " ".join("STORE" if a == str(store) else a for a in argv)
            emit(f"| `scalenmf {shown}` | {wall:.2f} s | {cpu:.2f} s |")
    (work / "bench_ingest.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
