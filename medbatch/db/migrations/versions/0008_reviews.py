"""Reviewers' verdicts on results and report drafts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 11:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("result_id", BigId, nullable=True),
        sa.Column("report_id", BigId, nullable=True),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("predicted_label", sa.String(length=128), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("corrected_label", sa.String(length=128), nullable=True),
        sa.Column("reviewer", sa.String(length=128), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "result_id", "report_id", "reviewer", name="uq_reviews_target_reviewer"),
    )
    op.create_index("ix_reviews_model", "reviews", ["model_name", "model_version"])


def downgrade() -> None:
    op.drop_index("ix_reviews_model", table_name="reviews")
    op.drop_table("reviews")
