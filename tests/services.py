"""Private services a fault test may crash and restart: a PostgreSQL cluster and a TLS Redis of its own.

The shared PostgreSQL and Redis serve other tests at the same time, so a test that stops a service
starts its own, on a free port, in a temporary directory, and removes it afterwards. Nothing here
needs Docker: the Debian ``postgresql`` and ``redis-server`` packages and the ``openssl`` CLI.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The account that runs a private cluster when the tests run as root (initdb refuses root).
POSTGRES_OS_USER = "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return found[0] if found else shutil.which(name)


def postgres_binaries_missing() -> str | None:
    """Why a private cluster cannot be started here, or None when it can."""
    for name in ("initdb", "pg_ctl"):
        if _pg_bin(name) is None:
            return f"{name} not found (install the postgresql server package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            return f"running as root and no {POSTGRES_OS_USER!r} account to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and no runuser to drop privileges"
    return None


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust auth) on 127.0.0.1:``port``.

    ``fsync`` is off (a crash of the server process loses nothing the OS already holds), but commits stay
    synchronous: with ``synchronous_commit=off`` an immediate stop loses acknowledged commits, which is a
    different fault from the one the tests mean to cause.
    """

    workdir: Path
    port: int
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = list(args)
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", POSTGRES_OS_USER, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)

    def start(self, timeout_s: float = 30) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.workdir} "
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        run = self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.workdir / "data"),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
            check=False,
        )
        if run.returncode != 0:
            log = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"private PostgreSQL on port {self.port} did not start: {run.stderr}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is a crash (no checkpoint, clients cut off)."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.workdir / "data"), "-m", mode, "-w", "stop", check=False)

    def restart(self, down_s: float, mode: str = "immediate") -> None:
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_private_postgres() -> PrivatePostgres:
    """initdb and start a cluster of this test's own; call :meth:`PrivatePostgres.remove` when done."""
    workdir = Path(tempfile.mkdtemp(prefix="medbatch-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(POSTGRES_OS_USER)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    server = PrivatePostgres(workdir=workdir, port=free_port())
    server._run(
        _pg_bin("initdb"),
        "-D",
        str(workdir / "data"),
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--no-sync",
        "--no-instructions",
    )
    server.start()
    return server


# --------------------------------------------------------------------------- TLS Redis


@dataclass
class TlsRedis:
    """A Redis answering only TLS on ``port``, with a password, and the CA that signed its certificate."""

    workdir: Path
    port: int
    password: str
    process: subprocess.Popen

    @property
    def ca(self) -> Path:
        return self.workdir / "ca.pem"

    def url(self, password: str | None = None, db: int = 0) -> str:
        pw = self.password if password is None else password
        return f"rediss://:{pw}@127.0.0.1:{self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={self.ca}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def tls_missing() -> str | None:
    """Why a TLS Redis cannot be started here, or None when it can."""
    if shutil.which("openssl") is None:
        return "no openssl CLI"
    binary = shutil.which("redis-server")
    if binary is None:
        return "no redis-server binary"
    probe = subprocess.run([binary, "--port", "0", "--tls-port", "1"], capture_output=True, text=True, timeout=10)
    if "tls-cert-file" not in probe.stdout + probe.stderr:  # a build with TLS asks for its certificate
        return "redis-server was built without TLS"
    return None


def make_certificates(workdir: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost, signed by it (openssl CLI)."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=workdir, timeout=60)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=medbatch test CA",
    )
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )


def start_tls_redis(password: str = "Tls-test-pass-8c1f", timeout_s: float = 15) -> TlsRedis:
    """A password-protected Redis that speaks only TLS (``--port 0``), on a free port."""
    workdir = Path(tempfile.mkdtemp(prefix="medbatch-tls-redis-"))
    make_certificates(workdir)
    port = free_port()
    proc = subprocess.Popen(
        [
            shutil.which("redis-server"),
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(workdir / "server.pem"),
            "--tls-key-file",
            str(workdir / "server.key"),
            "--tls-ca-cert-file",
            str(workdir / "ca.pem"),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = TlsRedis(workdir=workdir, port=port, password=password, process=proc)
    import redis

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(server.url(), socket_connect_timeout=1).ping():
                return server
        except (redis.RedisError, OSError):
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    log = (workdir / "redis.log").read_text(errors="replace")[-1000:]
    server.stop()
    raise RuntimeError(f"TLS Redis did not start: {log}")
