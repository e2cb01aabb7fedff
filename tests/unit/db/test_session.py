"""``db/session.py``: which driver errors mean "the database is away" (retry) and which are a bug (do not)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from medbatch.db.session import is_transient, session_scope
from medbatch.errors import DatabaseUnavailable


def _error(engine, sql: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught, engine.connect() as c:
        c.execute(text(sql))
    return caught.value


def test_sqlite_errors_that_a_retry_repeats_are_not_transient(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    assert not is_transient(_error(engine, "SELECT json_extract('{not json', '$.a')"))  # malformed JSON
    assert not is_transient(_error(engine, "SELECT * FROM no_such_table"))
    assert not is_transient(_error(engine, "SELEC 1"))  # a syntax error
    engine.dispose()


def test_sqlite_busy_or_unreachable_is_transient(tmp_path):
    # A database another connection holds the write lock of
    path = tmp_path / "b.db"
    holder = create_engine(f"sqlite:///{path}")
    other = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with holder.connect() as c:
        c.execute(text("CREATE TABLE t (x INTEGER)"))
        c.commit()
        c.exec_driver_sql("BEGIN IMMEDIATE")
        locked = _error(other, "INSERT INTO t VALUES (1)")
        c.rollback()
    assert "locked" in str(locked) and is_transient(locked)
    # A file that cannot be opened (its folder is missing: an unmounted volume)
    missing = create_engine(f"sqlite:///{tmp_path / 'gone' / 'c.db'}")
    assert is_transient(_error(missing, "SELECT 1"))
    for e in (holder, other, missing):
        e.dispose()


def test_postgresql_unreachable_is_transient_and_session_scope_says_so():
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    assert is_transient(_error(create_engine(url), "SELECT 1"))
    with pytest.raises(DatabaseUnavailable, match="database unavailable"), session_scope(url) as s:
        s.execute(text("SELECT 1"))


def test_session_scope_lets_a_sqlite_bug_through_as_itself(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    with pytest.raises(DBAPIError, match="malformed JSON"), session_scope(url) as s:
        s.execute(text("SELECT json_extract('{not json', '$.a')"))


def test_a_driver_error_from_a_raw_connection_is_classified_as_its_wrapper_would_be(tmp_path):
    # The COPYs use the driver's connection directly, so its errors arrive unwrapped
    import sqlite3

    import psycopg

    with pytest.raises(psycopg.OperationalError) as lost:
        psycopg.connect("host=127.0.0.1 port=1 dbname=none connect_timeout=2")
    assert is_transient(lost.value)
    con = sqlite3.connect(tmp_path / "e.db")
    with pytest.raises(sqlite3.OperationalError) as bug:
        con.execute("SELECT json_extract('{not json', '$.a')")
    con.close()
    assert not is_transient(bug.value)
    assert not is_transient(ValueError("not a database error"))


def test_a_connection_killed_under_a_raw_statement_is_database_unavailable(postgres_url):
    # Given a transaction whose connection the server ends while a raw driver statement runs on it (as the COPYs
    # run): the driver's error arrives unwrapped, and rolling back on the dead connection fails as well
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with pytest.raises(DatabaseUnavailable, match="database unavailable"), session_scope(postgres_url) as s:
        raw = s.connection().connection.driver_connection
        pid = raw.execute("SELECT pg_backend_pid()").fetchone()[0]
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        raw.execute("SELECT 1")
    admin.dispose()
    # and the next transaction gets a live connection
    with session_scope(postgres_url) as s:
        assert s.execute(text("SELECT 1")).scalar_one() == 1
