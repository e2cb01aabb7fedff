"""Bulk writes: COPY on PostgreSQL, multi-row INSERT elsewhere, and idempotent inserts that skip rows
whose unique key already exists. Every other repository module writes many rows through these.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Table, insert, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from medbatch.db.rawjson import RawJson

INSERT_CHUNK = 5_000


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _json_columns(table: Table) -> set[str]:
    return {c.name for c in table.columns if isinstance(c.type, JSON)}


_COPY_SPECIAL = ("\\", "\t", "\n", "\r")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(values: Sequence[str | None]) -> list[str]:
    """``values`` as fields of PostgreSQL's text COPY format: ``None`` as ``\\N``, backslash, tab and line
    breaks escaped (checked once for the whole column; most columns need no escaping)."""
    probe = "".join(filter(None, values))
    if any(c in probe for c in _COPY_SPECIAL):
        return ["\\N" if v is None else v.translate(_COPY_ESCAPES) for v in values]
    if None not in values:  # the usual case (payloads, ids): nothing to replace
        return list(values)
    return ["\\N" if v is None else v for v in values]


def copy_buffer(session: Session, table_name: str, columns: str, buffer: str) -> None:
    """COPY a prepared text-format ``buffer`` (one line per row, fields as :func:`copy_text` makes them) into
    ``table_name`` (``columns``: comma-separated names) in one call."""
    raw = session.connection().connection.dbapi_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table_name} ({columns}) FROM STDIN") as copy:
        copy.write(buffer)


def _copy_rows(
    session: Session, table_name: str, columns: list[str], rows: Sequence[dict[str, Any]], json_cols: set[str]
) -> None:
    raw = session.connection().connection.dbapi_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table_name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(
                [
                    json.dumps(row[c])
                    if c in json_cols and row[c] is not None and not isinstance(row[c], RawJson)
                    else row[c]
                    for c in columns
                ]
            )


def _temp_copy_of(session: Session, table: Table, cols: str) -> str:
    """A transaction-scoped temporary table with ``table``'s column types (no constraints, defaults or
    sequence links), empty, gone at the end of the transaction."""
    staging = f"_stage_{table.name}"
    session.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging} ON COMMIT DROP AS SELECT {cols} FROM {table.name} WITH NO DATA"
        )
    )
    return staging


def copy_ignore_conflicts(session: Session, table: Table, columns: str, buffer: str, key: list[str]) -> None:
    """PostgreSQL: COPY a prepared text ``buffer`` (see :func:`copy_buffer`) into ``table``, skipping rows whose
    unique ``key`` already exists. A JSON column takes JSON text, whether it is ``json``, ``jsonb`` or ``text``.

    First one COPY straight into ``table`` under a savepoint: no row exists yet on a first delivery, the usual
    case. If one does (a re-delivery racing an earlier attempt), that COPY is rolled back whole and the rows go
    through a temporary table and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, which skips them.
    """
    from psycopg.errors import UniqueViolation

    try:
        with session.begin_nested():
            copy_buffer(session, table.name, columns, buffer)
        return
    except UniqueViolation:
        pass
    staging = _temp_copy_of(session, table, columns)
    copy_buffer(session, staging, columns, buffer)
    session.execute(
        text(
            f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {staging} "
            f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
        )
    )
    session.execute(text(f"TRUNCATE {staging}"))


def bulk_insert(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert many plain rows fast: COPY on PostgreSQL, multi-row INSERT elsewhere.

    Rows must carry every column that has no server default; JSON columns take Python objects.
    """
    if not rows:
        return
    if _dialect(session) == "postgresql":
        _copy_rows(session, table.name, list(rows[0].keys()), rows, _json_columns(table))
        return
    decoded = [{k: v.value() if isinstance(v, RawJson) else v for k, v in row.items()} for row in rows]
    for start in range(0, len(decoded), INSERT_CHUNK):
        session.execute(insert(table), decoded[start : start + INSERT_CHUNK])


def insert_ignore_conflicts(session: Session, table: Table, rows: Sequence[dict[str, Any]], key: list[str]) -> None:
    """INSERT rows, silently skipping those whose unique ``key`` already exists (idempotent writes).

    On PostgreSQL the rows are COPYed into a transaction-scoped temporary table first and moved over
    with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: one round trip instead of one per row.
    """
    if not rows:
        return
    dialect = _dialect(session)
    if dialect == "postgresql":
        columns = list(rows[0].keys())
        cols = ", ".join(columns)
        staging = _temp_copy_of(session, table, cols)
        _copy_rows(session, staging, columns, rows, _json_columns(table))
        session.execute(
            text(
                f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {staging} "
                f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
            )
        )
        session.execute(text(f"TRUNCATE {staging}"))
        return
    if dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=key)
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise NotImplementedError(f"idempotent insert not implemented for {dialect}")
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(stmt, list(rows[start : start + INSERT_CHUNK]))
