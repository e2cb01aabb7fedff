"""results.detail as jsonb on PostgreSQL, with a GIN index for containment queries

``detail @> '{"requires_review": true}'`` and the ``jsonb_*`` functions work on it, and the
``jsonb_path_ops`` GIN index answers containment without a scan. SQLite keeps JSON text: nothing to do.

jsonb refuses the escape ``\\u0000`` inside a string, which json accepted: a row holding one stops the
upgrade (it runs in one transaction, so nothing changes) and names the problem.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 14:20:00.000000
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

INDEX = "ix_results_detail"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE results ALTER COLUMN detail TYPE jsonb USING detail::jsonb")
    op.create_index(INDEX, "results", ["detail"], postgresql_using="gin", postgresql_ops={"detail": "jsonb_path_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, table_name="results")
    op.execute("ALTER TABLE results ALTER COLUMN detail TYPE json USING detail::json")
