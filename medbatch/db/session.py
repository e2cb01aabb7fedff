"""Engines and sessions, with connection failures translated to :class:`DatabaseUnavailable`.

One engine per database URL per process. After a fork (Celery prefork) the child must not reuse
the parent's pooled connections: :func:`dispose_engines` is called from ``worker_process_init``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from medbatch.errors import DatabaseUnavailable

#: Milliseconds a SQLite writer waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 60_000

_engines: dict[tuple[int, str], Engine] = {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def get_engine(url: str) -> Engine:
    """The engine for ``url`` in this process, created on first use."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1800)
        _engines[key] = engine
    return engine


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, made absolute (None for another database, in-memory or a ``file:`` URI)."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # not a URL at all: connecting says so
        return None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:") or parsed.query.get("uri"):
        return None
    return Path(parsed.database).expanduser().resolve()


def require_existing(url: str) -> None:
    """Refuse a SQLite database file that does not exist yet, instead of creating an empty one on connect
    (a command run in another folder would silently start a new ``./medbatch.db``). Creating one is
    ``medbatch db upgrade``'s job (and the demo's); other databases are not checked here.

    Raises:
        DatabaseUnavailable: the SQLite file does not exist (the message says how to create it or where to point).
    """
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise DatabaseUnavailable(
            f"no database at {path}: run `medbatch db upgrade` to create it there, or set "
            "MEDBATCH_DATABASE_URL to the database you mean"
        )


def dispose_engines() -> None:
    """Forget engines inherited from a parent process without closing its connections."""
    for (pid, _url), engine in list(_engines.items()):
        engine.dispose(close=pid == os.getpid())
    _engines.clear()


#: SQLite's OperationalError means "busy" or "cannot reach the file" (worth a retry) but also "cannot run this
#: SQL" (malformed JSON, no such table, a damaged file): a retry repeats those. Only these are transient.
SQLITE_TRANSIENT = (
    "database is locked",
    "database table is locked",
    "unable to open database file",
    "disk i/o error",
    "database or disk is full",
)


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean "the database is unreachable, busy or dropped us", worth a retry.

    ``exc`` is SQLAlchemy's wrapper of a driver error, or the driver's own error where medbatch used the raw
    connection (the COPYs of ``repository/bulk.py``): a server lost in the middle of a COPY is as transient as one
    lost in the middle of an INSERT.
    """
    if isinstance(exc, DisconnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        driver: BaseException = exc.orig if exc.orig is not None else exc
    else:
        driver = exc
    kinds = {c.__name__ for c in type(driver).__mro__ if not c.__module__.startswith("sqlalchemy")}
    if not kinds & {"OperationalError", "InterfaceError"}:
        return False
    if type(driver).__module__ == "sqlite3":
        return any(m in str(driver).lower() for m in SQLITE_TRANSIENT)
    return True  # PostgreSQL's OperationalError: the server is away, restarting, or chose this transaction to fail


def describe(exc: BaseException) -> str:
    """A one-line cause for logs: the driver's first line only (its DETAIL lines can quote row values)."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0][:200]
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error.

    Raises:
        DatabaseUnavailable: the connection failed or was lost; the whole transaction was rolled back.
    """
    session = sessionmaker(get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except Exception as exc:
        try:
            session.rollback()
        except Exception as lost:  # noqa: BLE001 - the connection died with the statement: nothing is left to undo
            if not is_transient(lost):
                raise
        if is_transient(exc):
            raise DatabaseUnavailable(f"database unavailable: {describe(exc)}") from exc
        raise
    finally:
        session.close()
