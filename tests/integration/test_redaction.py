"""A database password with ``#``, ``?`` or ``/`` is never printed by ``medbatch db upgrade``."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from tests.helpers import run_cli

pytestmark = pytest.mark.integration


def test_db_upgrade_does_not_print_a_password_with_url_characters(postgres_url):
    # Given a database URL whose password holds '#', '?' and '/' (the server trusts local connections,
    # so any password gets in)
    url = make_url(postgres_url)
    password = "s3cr#et?x/y"
    raw = f"postgresql+psycopg://{url.username}:{password}@{url.host}:{url.port}/{url.database}"
    # When the schema is upgraded
    out = run_cli({"MEDBATCH_DATABASE_URL": raw}, "db", "upgrade")
    # Then it worked, and the output names the database with the password redacted
    assert out.returncode == 0, out.stderr[-2000:]
    printed = out.stdout + out.stderr
    assert f"{url.username}:***@{url.host}:{url.port}/{url.database}" in printed
    assert "s3cr" not in printed and "et?x" not in printed
