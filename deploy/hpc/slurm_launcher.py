"""Run ``scalenmf fit`` on SLURM: dask-jobqueue submits the workers as batch jobs.

    python deploy/hpc/slurm_launcher.py counts.zarr -k 20 -o result.zarr \\
        --jobs 4 --cores 16 --memory 64GB --walltime 04:00:00 --queue normal \\
        -- --checkpoint-every 10

Everything after ``--`` goes to ``scalenmf fit``. The scheduler runs here (a login node or a
small batch job); its dashboard stays on 127.0.0.1 (``ssh -L 8787:127.0.0.1:8787``).
``--dry-run`` prints the worker job script and exits (the smoke command). Needs the ``hpc``
extra (dask-jobqueue). Rerun the same command with ``-- --resume`` after an interruption.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("input", nargs="?", default=None, help="INPUT of scalenmf fit")
    ap.add_argument("-k", type=int, default=None)
    ap.add_argument("-o", "--output", default=None)
    ap.add_argument("--jobs", type=int, default=2, help="SLURM jobs (each one worker)")
    ap.add_argument("--cores", type=int, default=8, help="cores per job")
    ap.add_argument("--processes", type=int, default=None, help="worker processes per job")
    ap.add_argument("--memory", default="32GB", help="memory per job")
    ap.add_argument("--walltime", default="04:00:00")
    ap.add_argument("--queue", default=None, help="SLURM partition")
    ap.add_argument("--account", default=None)
    ap.add_argument("--interface", default=None, help="network interface (e.g. ib0)")
    ap.add_argument("--local-directory", default=None, help="node-local scratch for spilling")
    ap.add_argument("--dry-run", action="store_true", help="print the job script and exit")
    return ap.parse_args(argv), extra


def make_cluster(args: argparse.Namespace) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` for ``args`` (no job is submitted yet)."""
    from dask_jobqueue import SLURMCluster

    # One single-threaded worker process per core: scalenmf runs blocks in parallel, each
    # with single-threaded BLAS.
    processes = args.processes or args.cores
    return SLURMCluster(
        cores=args.cores,
        processes=processes,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.queue,
        account=args.account,
        interface=args.interface,
        local_directory=args.local_directory,
        job_script_prologue=[
            "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1",
        ],
        scheduler_options={"dashboard_address": "127.0.0.1:8787"},
        job_name="scalenmf-worker",
    )


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(argv)
    cluster = make_cluster(args)
    try:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        if not (args.input and args.k and args.output):
            print("INPUT, -k and -o are needed (or --dry-run)", file=sys.stderr)
            return 2
        cluster.scale(jobs=args.jobs)
        cmd = ["scalenmf", "fit", args.input, "-k", str(args.k), "-o", args.output]
        cmd += ["--scheduler", cluster.scheduler_address, *extra]
        return subprocess.call(cmd)
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
