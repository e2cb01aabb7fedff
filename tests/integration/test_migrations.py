"""Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from medbatch.db.migrate import current_revision, upgrade
from medbatch.db.session import get_engine
from medbatch.db.tables import Base

pytestmark = pytest.mark.integration


def test_migrated_schema_matches_models(db_url):
    upgrade(db_url)  # a second upgrade is a no-op
    assert current_revision(db_url) is not None
    with get_engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
