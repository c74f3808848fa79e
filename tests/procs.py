"""Real Dask processes on 127.0.0.1 for the cluster tests: start, wait, kill by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class ProcCluster:
    """A ``dask scheduler`` and ``dask worker`` processes (no nanny: a killed worker stays dead)."""

    logs: Path
    tls: dict[str, str] | None = None
    port: int = field(default_factory=free_port)
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        return "tls" if self.tls else "tcp"

    @property
    def address(self) -> str:
        return f"{self.protocol}://127.0.0.1:{self.port}"

    @property
    def scheduler_file(self) -> Path:
        return self.logs / "scheduler.json"

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        return [
            "--tls-ca-file",
            self.tls["ca"],
            "--tls-cert",
            self.tls["cert"],
            "--tls-key",
            self.tls["key"],
        ]

    def start(self, n_workers: int) -> ProcCluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--no-dashboard", "--scheduler-file", str(self.scheduler_file)]
        if self.tls:
            cmd += ["--protocol", "tls", *self._tls_args()]
        self.scheduler = subprocess.Popen(
            cmd, stdout=open(self.logs / "scheduler.log", "w"), stderr=subprocess.STDOUT, env=ENV
        )
        wait_port(self.port)
        for _ in range(n_workers):
            self.add_worker()
        self.wait_workers(n_workers)
        return self

    def add_worker(self) -> subprocess.Popen:
        i = len(self.workers)
        cmd = [str(BIN / "dask"), "worker", self.address, "--nthreads", "1", "--no-nanny"]
        cmd += ["--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"]
        cmd += ["--memory-limit", "1GB", *self._tls_args()]
        proc = subprocess.Popen(
            cmd, stdout=open(self.logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT, env=ENV
        )
        self.workers.append(proc)
        return proc

    def security(self):
        if not self.tls:
            return None
        from distributed.security import Security

        return Security(
            tls_ca_file=self.tls["ca"],
            tls_client_cert=self.tls["cert"],
            tls_client_key=self.tls["key"],
            require_encryption=True,
        )

    def client(self):
        from distributed import Client

        return Client(self.address, timeout="30s", security=self.security())

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        with self.client() as c:
            c.wait_for_workers(n, timeout=timeout)

    def kill_worker(self, i: int = 0) -> None:
        os.kill(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait(timeout=10)

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        os.kill(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait(timeout=10)

    def stop(self) -> None:
        procs = [*self.workers, *([self.scheduler] if self.scheduler else [])]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=4)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def make_tls_files(directory: Path) -> dict[str, str]:
    """A self-signed CA and a certificate for 127.0.0.1 / localhost signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scalenmf test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
    }
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["cert"].write_bytes(cert.public_bytes(pem))
    files["key"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {name: str(path) for name, path in files.items()}
