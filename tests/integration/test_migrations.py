"""Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from medbatch.db import repository as repo
from medbatch.db.migrate import alembic_config, current_revision, upgrade
from medbatch.db.session import get_engine, session_scope
from medbatch.db.tables import Base, include_object_for
from tests.helpers import job_with_results

pytestmark = pytest.mark.integration


def _diff(url: str) -> list:
    with get_engine(url).connect() as conn:
        opts = {"include_object": include_object_for(conn.dialect.name)}
        return compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)


def _downgrade(url: str, revision: str) -> None:
    with get_engine(url).begin() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _detail_type(url: str) -> str | None:
    with get_engine(url).connect() as conn:
        if conn.dialect.name != "postgresql":
            return None
        columns = "SELECT data_type FROM information_schema.columns WHERE table_name = 'results' AND column_name = :c"
        return conn.scalar(text(columns), {"c": "detail"})


def test_migrated_schema_matches_models(db_url):
    upgrade(db_url)  # a second upgrade is a no-op
    assert current_revision(db_url) is not None
    assert _diff(db_url) == []


def test_detail_survives_0009_down_and_up_and_answers_containment(db_url):
    # Given results written at head, one flagged for review and one not
    job = job_with_results(
        db_url,
        "xray",
        [
            {"requires_review": True, "attention": "right lower zone", "probability": 0.91, "flags": ["inverted"]},
            {"requires_review": False, "probability": 0.12, "flags": []},
        ],
    )
    pg = db_url.startswith("postgresql")
    assert _detail_type(db_url) == ("jsonb" if pg else None)
    # When the schema goes back to 0008 and up again
    _downgrade(db_url, "0008")
    assert current_revision(db_url) == "0008"
    assert _detail_type(db_url) == ("json" if pg else None)
    with session_scope(db_url) as s:
        assert [r.detail["probability"] for r in repo.job_result_rows(s, job)] == [0.91, 0.12]
    upgrade(db_url)
    # Then the schema is the declared one again, the details are intact, and SQL users can query them
    assert current_revision(db_url) == "0009" and _diff(db_url) == []
    with get_engine(db_url).connect() as conn:
        if pg:
            assert conn.scalar(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_results_detail'")).endswith(
                "USING gin (detail jsonb_path_ops)"
            )
            query = "SELECT detail ->> 'attention' FROM results WHERE job_id = :j AND detail @> :flagged"
            flagged = '{"requires_review": true}'
            assert conn.execute(text(query), {"j": job, "flagged": flagged}).scalars().all() == ["right lower zone"]
            across_jobs = 'SELECT count(*) FROM results WHERE detail @> \'{"flags": ["inverted"]}\''
            assert conn.scalar(text(across_jobs)) == 1
            # the GIN index answers it (the planner is told a scan costs too much on a table this small)
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            assert "ix_results_detail" in "\n".join(conn.execute(text("EXPLAIN " + across_jobs)).scalars())
        else:
            query = "SELECT json_extract(detail, '$.attention') FROM results WHERE detail ->> '$.requires_review'"
            assert conn.execute(text(query)).scalars().all() == ["right lower zone"]
