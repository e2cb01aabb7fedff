"""Start and stop worker processes from Python: used by ``medbatch demo``, the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from celery import Celery


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen
    log_path: Path | None

    def stop(self, timeout_s: float = 20.0) -> None:
        """Warm shutdown (finish the current task), then kill if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once (a crash, not a shutdown)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


def start_worker(
    queues: str = "tabular",
    *,
    env: dict[str, str] | None = None,
    concurrency: int = 1,
    pool: str = "prefork",
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
) -> WorkerProcess:
    """Start ``medbatch worker`` as its own process group; its environment carries the settings."""
    name = f"{queues.replace(',', '+')}-{uuid.uuid4().hex[:6]}@%h"
    args = [
        sys.executable,
        "-m",
        "medbatch.cli",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-n",
        name,
        *(extra_args or []),
    ]
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    return WorkerProcess(name=name.replace("%h", _hostname()), process=proc, log_path=log_path)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def wait_until_ready(app: Celery, worker: WorkerProcess, timeout_s: float = 60.0) -> None:
    """Block until ``worker`` answers a ping through the broker.

    Raises:
        RuntimeError: the worker exited or did not answer in time (its log tail is in the message).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker {worker.name} exited with {worker.process.returncode}: {_tail(worker)}")
        try:
            replies = app.control.ping(destination=[worker.name], timeout=1.0)
        except Exception:  # noqa: BLE001 - broker not ready yet
            replies = []
        if replies:
            return
        time.sleep(0.3)
    raise RuntimeError(f"worker {worker.name} did not answer within {timeout_s:.0f}s: {_tail(worker)}")


def _tail(worker: WorkerProcess, n: int = 3000) -> str:
    if worker.log_path and worker.log_path.is_file():
        return worker.log_path.read_text(errors="replace")[-n:]
    return "(no log)"
