"""DICOM interop: per-object delivery tracking and the C-STORE listener's ledger

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dicom_deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("item_id", BigId, nullable=False),
        sa.Column("destination", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_id", "destination", "kind", name="uq_dicom_deliveries_item_dest_kind"),
    )
    op.create_index("ix_dicom_deliveries_job_status", "dicom_deliveries", ["job_id", "status"])
    op.create_table(
        "dicom_received",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_aet", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("claim", sa.String(length=36), nullable=True),
        sa.Column("job_id", BigId, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    op.create_index("ix_dicom_received_study_status", "dicom_received", ["study_instance_uid", "status"])
    op.create_index("ix_dicom_received_claim", "dicom_received", ["claim"])
    op.create_index("ix_dicom_received_received_at", "dicom_received", ["received_at"])


def downgrade() -> None:
    op.drop_table("dicom_received")
    op.drop_index("ix_dicom_deliveries_job_status", table_name="dicom_deliveries")
    op.drop_table("dicom_deliveries")
