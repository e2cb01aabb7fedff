"""What every benchmark does the same way: a database of its own, dropped at the end; a timed ``submit --wait``;
CPU seconds of the processes it measures."""

from __future__ import annotations

import json
import resource
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@dataclass
class BenchDatabase:
    """A fresh database for one run, dropped at the end: on PostgreSQL created beside ``admin_url``'s; on SQLite a
    new file beside the one the URL names (``b.db`` -> ``b-bench-1a2b3c.db``), so a second run never counts the
    first one's rows."""

    url: str
    backend: str
    _admin_url: str
    _name: str | None

    @classmethod
    def create(cls, admin_url: str) -> BenchDatabase:
        admin = make_url(admin_url)
        backend = admin.get_backend_name()
        if backend == "sqlite":
            named = Path(admin.database or "medbatch-bench.db")
            fresh = named.with_name(f"{named.stem}-bench-{uuid.uuid4().hex[:6]}{named.suffix or '.db'}")
            url = admin.set(database=str(fresh)).render_as_string()
            return cls(url=url, backend=backend, _admin_url="", _name=None)
        if backend != "postgresql":
            return cls(url=admin_url, backend=backend, _admin_url=admin_url, _name=None)
        name = f"medbatch_bench_{uuid.uuid4().hex[:6]}"
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        url = admin.set(database=name).render_as_string(hide_password=False)
        return cls(url=url, backend=backend, _admin_url=admin_url, _name=name)

    def drop(self) -> None:
        """Drop the benchmark's database (on SQLite, delete its file and the journal files beside it)."""
        if self.backend == "sqlite":
            database = make_url(self.url).database
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
            return
        if self._name is None:
            return
        engine = create_engine(make_url(self._admin_url), isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)'))
        engine.dispose()


def timed_submit(argv: list[str], env: dict) -> tuple[float, dict]:
    """Run a ``medbatch submit ... --json --wait`` command line as a person does; (wall seconds, its JSON summary).

    Raises:
        SystemExit: the command did not exit 0 (its stderr).
    """
    start = time.perf_counter()
    run = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"submit failed: {run.stderr}")
    return wall, json.loads(run.stdout)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process and its live children so far: less changed by other load
    than wall time, not unchanged (scoring took 1.58 ms of CPU a molecule alone, 2.16 ms beside two busy processes)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def reaped_cpu() -> float:
    """CPU seconds of this process's children that have exited and been waited for (a finished submit command)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def postgres_cpu() -> float | None:
    """CPU seconds of the local PostgreSQL server so far: live processes plus the exited backends the
    postmaster has reaped (None when no postgres process is visible, e.g. a remote server)."""
    total, seen = 0.0, False
    for p in psutil.process_iter(["name", "ppid"]):
        try:
            if not (p.info["name"] or "").startswith("postgres"):
                continue
            seen = True
            t = p.cpu_times()
            total += t.user + t.system
            if not psutil.Process(p.info["ppid"]).name().startswith("postgres"):  # the postmaster
                total += t.children_user + t.children_system
        except psutil.Error:
            pass
    return total if seen else None
