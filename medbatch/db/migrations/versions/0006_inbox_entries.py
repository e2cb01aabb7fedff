"""inbox ledger for the nightly run

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 10:05:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbox_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("workload", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("claim", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("path", "sha256", name="uq_inbox_entries_path_sha256"),
    )
    op.create_index("ix_inbox_entries_claim", "inbox_entries", ["claim"])
    op.create_index("ix_inbox_entries_taken_at", "inbox_entries", ["taken_at"])


def downgrade() -> None:
    op.drop_index("ix_inbox_entries_taken_at", table_name="inbox_entries")
    op.drop_index("ix_inbox_entries_claim", table_name="inbox_entries")
    op.drop_table("inbox_entries")
