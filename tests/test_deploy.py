"""deploy/: the recipes parse, say what they should, and the local one runs end to end."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.procs import BIN

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_every_recipe_has_a_readme_with_a_smoke_command() -> None:
    for recipe in ("local", "docker", "kubernetes", "hpc"):
        text = (DEPLOY / recipe / "README.md").read_text()
        assert "smoke" in text.lower(), recipe
    index = (DEPLOY / "README.md").read_text()
    for recipe in ("local/", "docker/", "kubernetes/", "hpc/"):
        assert recipe in index


def docker_compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_compose_file() -> None:
    path = DEPLOY / "docker" / "compose.yaml"
    [doc] = load_all(path)
    services = doc["services"]
    assert set(services) == {"scheduler", "worker", "job"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert isinstance(svc["command"], (list, str)), name
    sched = services["scheduler"]
    assert sched["command"][:2] == ["dask", "scheduler"] and "8786" in sched["command"]
    # The dashboard is published on the host's loopback only.
    assert sched["ports"] == ["127.0.0.1:8787:8787"]
    assert "tcp://scheduler:8786" in services["worker"]["command"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    job = " ".join(services["job"]["command"])
    assert "scalenmf fit" in job and "--scheduler tcp://scheduler:8786" in job
    for svc in ("worker", "job"):
        assert services[svc]["volumes"] == ["data:/data"]
        assert services[svc]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    if docker_compose_works():
        out = subprocess.run(
            ["docker", "compose", "-f", str(path), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr


def test_dockerfile_installs_the_package() -> None:
    lines = [
        line.split()
        for line in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    instructions = [words[0] for words in lines]
    assert instructions[0] == "FROM" and "USER" in instructions
    copies = [words[1] for words in lines if words[0] == "COPY"]
    assert "scalenmf" in copies and "pyproject.toml" in copies
    assert any(words[0] == "RUN" and "pip" in words and '".[cloud]"' in words for words in lines)


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = pod_spec["containers"]
    assert out and all("image" in c and "name" in c for c in out)
    return out


def test_kubernetes_manifests() -> None:
    [cluster] = load_all(DEPLOY / "kubernetes" / "daskcluster.yaml")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1" and cluster["kind"] == "DaskCluster"
    name = cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert isinstance(spec["worker"]["replicas"], int) and spec["worker"]["replicas"] >= 1
    [worker] = containers(spec["worker"]["spec"])
    assert worker["args"][:2] == ["dask", "worker"] and "--nthreads" in worker["args"]
    [sched] = containers(spec["scheduler"]["spec"])
    assert sched["args"][:2] == ["dask", "scheduler"]
    service = spec["scheduler"]["service"]
    assert service["type"] == "ClusterIP"  # nothing exposed outside the cluster
    assert {p["port"] for p in service["ports"]} == {8786, 8787}
    docs = load_all(DEPLOY / "kubernetes" / "job.yaml")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Job", "PersistentVolumeClaim"}
    job = kinds["Job"]
    assert job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    [fit] = containers(pod)
    cmd = fit["command"]
    assert cmd[:2] == ["scalenmf", "fit"] and "--resume" in cmd
    assert cmd[cmd.index("--scheduler") + 1] == f"tcp://{name}-scheduler:8786"
    claim = kinds["PersistentVolumeClaim"]["metadata"]["name"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    values = yaml.safe_load((DEPLOY / "kubernetes" / "helm-values.yaml").read_text())
    assert values["scheduler"]["serviceType"] == "ClusterIP"
    assert values["worker"]["threads_per_worker"] == 1


def test_gpu_worker_recipes_bind_one_gpu_per_worker_and_fit_with_device_auto() -> None:
    [group] = load_all(DEPLOY / "kubernetes" / "gpu-workers.yaml")
    assert group["kind"] == "DaskWorkerGroup" and group["spec"]["cluster"] == "scalenmf"
    [worker] = containers(group["spec"]["worker"]["spec"])
    args = worker["args"]
    assert args[:2] == ["dask", "worker"] and args[args.index("--resources") + 1] == "GPU=1"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    sbatch = (DEPLOY / "hpc" / "fit-gpu.sbatch").read_text()
    assert "#SBATCH --gpus-per-task=1" in sbatch and '--resources "GPU=1"' in sbatch
    assert "--device auto" in sbatch and "--resume" in sbatch
    assert "TORCH_EXTRA" in (DEPLOY / "docker" / "Dockerfile").read_text()


def test_shell_scripts_parse() -> None:
    scripts = [*DEPLOY.rglob("*.sh"), *DEPLOY.rglob("*.sbatch")]
    assert len(scripts) >= 4
    for script in scripts:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"
    sbatch = (DEPLOY / "hpc" / "fit.sbatch").read_text()
    assert "#SBATCH --requeue" in sbatch and "--resume" in sbatch


def load_launcher():
    path = DEPLOY / "hpc" / "slurm_launcher.py"
    spec = importlib.util.spec_from_file_location("slurm_launcher", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_slurm_launcher_builds_its_job_script(capsys: pytest.CaptureFixture[str]) -> None:
    launcher = load_launcher()
    args, extra = launcher.parse(
        [
            *("x.zarr", "-k", "5", "-o", "o.zarr", "--cores", "4", "--memory", "16GB"),
            *("--walltime", "01:30:00", "--queue", "short", "--", "--checkpoint-every", "7"),
        ]
    )
    assert extra == ["--checkpoint-every", "7"]
    cluster = launcher.make_cluster(args)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert script.startswith("#!/")
    assert "#SBATCH -p short" in script and "#SBATCH -t 01:30:00" in script
    assert "#SBATCH --mem=15G" in script or "#SBATCH --mem=16G" in script
    assert "export OMP_NUM_THREADS=1" in script
    assert "--nworkers 4" in script and "--nthreads 1" in script
    assert launcher.main(["--dry-run", "--cores", "2"]) == 0
    assert "#SBATCH" in capsys.readouterr().out


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_local_recipe_smoke_command_runs() -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run(
        ["bash", str(DEPLOY / "local" / "smoke.sh")],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "relative error" in res.stdout and "k=4" in res.stdout
