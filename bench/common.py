"""What every benchmark does the same way: a database of its own, dropped at the end; a timed ``submit --wait``."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@dataclass
class BenchDatabase:
    """On PostgreSQL, a fresh database created beside ``admin_url``'s; a SQLite URL is used as given."""

    url: str
    backend: str
    _admin_url: str
    _name: str | None

    @classmethod
    def create(cls, admin_url: str) -> BenchDatabase:
        admin = make_url(admin_url)
        backend = admin.get_backend_name()
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
        """Drop the benchmark's database (nothing to do for SQLite)."""
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
