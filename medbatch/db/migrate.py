"""Alembic migrations run programmatically: ``medbatch db upgrade`` and the auto-upgrade of the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import exc, text

from medbatch.db.session import get_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _newest_script() -> str:
    """The newest migration's revision, from the script names (``0010_lean_row_writes.py`` is revision ``0010``;
    tests/integration/test_migrations.py checks that this is Alembic's head). A directory listing, so a
    database already there is left alone without loading Alembic or its scripts: 0.1-0.2 s less a command."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


HEAD = _newest_script()
#: Arbitrary constant key for PostgreSQL's advisory lock, so concurrent upgrades run one at a time.
_PG_LOCK_KEY = 774_210_001


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision``; safe to run from several processes at once."""
    if revision == "head" and _at_head(url):
        return
    from alembic import command

    _run(url, command.upgrade, revision)


def _at_head(url: str) -> bool:
    """Whether the database is already at :data:`HEAD` (one small query; False if it cannot tell)."""
    try:
        with get_engine(url).connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    except exc.DBAPIError:  # no alembic_version yet, or unreachable: the full upgrade creates it, or says why
        return False


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` back to ``revision`` (tests of the migrations; no command offers it)."""
    from alembic import command

    _run(url, command.downgrade, revision)


def _run(url: str, step, revision: str) -> None:  # noqa: ANN001 - alembic.command.upgrade or .downgrade
    engine = get_engine(url)
    cfg = alembic_config(url)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                cfg.attributes["connection"] = conn
                step(cfg, revision)
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
        return
    with engine.connect() as conn:
        # SQLite alters a table by copying it and dropping the old one (Alembic's batch mode), and with foreign
        # keys on, that DROP would cascade: every result of the copied items would go. So they are off while
        # the migration runs (the pragma works only outside a transaction) and checked before it commits.
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        try:
            cfg.attributes["connection"] = conn
            step(cfg, revision)
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                conn.rollback()
                raise RuntimeError(f"migration to {revision} would break {len(broken)} foreign keys: {broken[:5]}")
            conn.commit()
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
