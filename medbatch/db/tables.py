"""SQLAlchemy 2 tables: the source of truth for jobs, batches, items, results and models.

Every lifecycle is a ``str`` enum stored as text, so the database reads plainly in SQL. State
changes happen in the :mod:`medbatch.db.repository` package only.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")
#: A result's ``detail``: ``jsonb`` on PostgreSQL (containment ``@>``; migration 0009), JSON text on SQLite.
DetailJson = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator):
    """``TIMESTAMP WITH TIME ZONE`` on PostgreSQL, text on SQLite; in and out of Python always aware, in UTC.

    SQLite keeps no offset: SQLAlchemy writes an aware datetime's wall-clock time and reads back a naive one.
    So a time is converted to UTC before it is written (a Europe/Berlin night window compares correctly) and
    a naive time read back is UTC, as every stored time is. PostgreSQL's values come back in UTC too, whatever
    the session's ``TimeZone``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001, ANN201 - SQLAlchemy's signature
        if isinstance(value, datetime):
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            if dialect.name == "sqlite":  # UTC wall-clock time, as every stored time is, with no offset
                return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):  # noqa: ANN001, ANN201
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


class JobStatus(enum.StrEnum):
    STAGING = "staging"  # producer is still reading and staging inputs
    QUEUED = "queued"  # every batch is staged and sent
    RUNNING = "running"  # at least one batch started
    COMPLETED = "completed"  # every batch finished and every item has a result
    COMPLETED_WITH_ERRORS = "completed_with_errors"  # finished; some items or rows failed
    FAILED = "failed"  # nothing could be processed (e.g. the input file itself was unreadable)


class BatchStatus(enum.StrEnum):
    PENDING = "pending"  # staged, message not yet sent
    QUEUED = "queued"  # message sent to the broker
    RUNNING = "running"  # a worker picked it up
    DONE = "done"  # results written
    DEAD = "dead"  # gave up after max attempts; reason in `error`


class ItemStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class InboxStatus(enum.StrEnum):
    CLAIMED = "claimed"  # the nightly run is about to submit it
    TAKEN = "taken"  # a job holds it
    REJECTED = "rejected"  # unusable; the entry's reason says why and a human must look


FINISHED_BATCH = (BatchStatus.DONE.value, BatchStatus.DEAD.value)
FINISHED_JOB = (JobStatus.COMPLETED.value, JobStatus.COMPLETED_WITH_ERRORS.value, JobStatus.FAILED.value)


class Base(DeclarativeBase):
    pass


#: Schema objects only PostgreSQL has (declared with ``ddl_if``); autogenerate must not miss them elsewhere.
#: Empty since 0010 dropped ``ix_results_detail``; kept so that the next one has its place.
POSTGRESQL_ONLY: frozenset[str] = frozenset()

#: Foreign keys that PostgreSQL checks with statement-level triggers instead (migration 0011: one check per
#: COPY instead of one query per row), as (table, column). Declared here for SQLite and for readers.
CHECKED_BY_TRIGGER_ON_POSTGRESQL: frozenset[tuple[str, str]] = frozenset(
    {("items", "batch_id"), ("results", "item_id")}
)


def include_object_for(dialect: str):  # noqa: ANN201 - returns Alembic's include_object hook
    """Alembic's ``include_object`` hook for a database of ``dialect``: the PostgreSQL-only objects are left
    out of the comparison anywhere else, and the foreign keys PostgreSQL checks by trigger out of PostgreSQL's
    (autogenerate, tests/integration/test_migrations.py)."""

    def include_object(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
        if dialect != "postgresql":
            return name not in POSTGRESQL_ONLY
        if type_ == "foreign_key_constraint" and not reflected:
            return (obj.parent.name, obj.column_keys[0]) not in CHECKED_BY_TRIGGER_ON_POSTGRESQL
        return True

    return include_object


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    workload: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.STAGING.value, index=True)
    source_uri: Mapped[str] = mapped_column(Text, default="")
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    items_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_rejected: Mapped[int] = mapped_column(Integer, default=0)
    batches_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Job-level metrics computed when the job finishes (molecule jobs: MOSES metrics); null otherwise.
    metrics: Mapped[dict | None] = mapped_column(JSON)
    submitted_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_batches_job_seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), default=BatchStatus.PENDING.value, index=True)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Item(Base):
    """One staged input: a CSV row, an image, a generation request."""

    __tablename__ = "items"
    # Per staged row PostgreSQL maintains the primary key, uq_items_job_key and ix_items_batch; batch_id's foreign key
    # is checked there once per statement by a trigger (0011), and job_id follows from the batch (no constraint since
    # 0010). ``status`` is in no index and pages are half filled, so the done-marking update is HOT, in place.
    __table_args__ = (
        UniqueConstraint("job_id", "item_key", name="uq_items_job_key"),
        Index("ix_items_batch", "batch_id"),
        {"postgresql_with": {"fillfactor": 50}},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No index of its own: uq_items_job_key leads with job_id. No foreign key: implied by batch_id -> batches.job_id.
    job_id: Mapped[int] = mapped_column(BigId)
    # On PostgreSQL a statement-level trigger, not a constraint (CHECKED_BY_TRIGGER_ON_POSTGRESQL; migration 0011).
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    item_key: Mapped[str] = mapped_column(String(128))  # natural key within the job, e.g. "row:17"
    source_uri: Mapped[str] = mapped_column(Text)
    source_row: Mapped[int | None] = mapped_column(Integer)  # 1-based line number in the source file
    patient_ref: Mapped[str | None] = mapped_column(String(128))  # the input's own patient identifier
    payload: Mapped[dict] = mapped_column(JSON)  # validated, normalised model inputs
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.PENDING.value)


class Result(Base):
    """A model output for one item. ``item_id`` is the natural key: a re-delivered batch writes nothing twice."""

    __tablename__ = "results"
    # No GIN index on ``detail`` since 0010: it cost a third of the results write (docs/schema.md, "Indexes").

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # On PostgreSQL a statement-level trigger, not a constraint (CHECKED_BY_TRIGGER_ON_POSTGRESQL; migration 0011).
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), unique=True)
    # No foreign key since 0010: implied by item_id -> items (-> batches -> jobs), which a deleted job cascades along.
    job_id: Mapped[int] = mapped_column(BigId, index=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(128))
    score: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[dict] = mapped_column(DetailJson, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ItemError(Base):
    """A recorded, explained failure: a rejected input row, or an item the model could not process."""

    __tablename__ = "item_errors"
    __table_args__ = (UniqueConstraint("job_id", "error_key", name="uq_item_errors_job_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    error_key: Mapped[str] = mapped_column(String(160))  # natural key, e.g. "validation:row:17"
    stage: Mapped[str] = mapped_column(String(32))  # validation | inference
    source_uri: Mapped[str] = mapped_column(Text)
    source_row: Mapped[int | None] = mapped_column(Integer)
    patient_ref: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Model(Base):
    """The model registry: one row per (name, version); version is the hash of the artifact."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    training_source: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Report(Base):
    """A drafted medical report, with everything needed to account for it. Always requires review."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), unique=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))  # openai | offline
    model: Mapped[str] = mapped_column(String(128))
    prompt_version: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16), default="online")  # online | batch
    text: Mapped[str] = mapped_column(Text)
    sections: Mapped[dict] = mapped_column(JSON, default=dict)  # condition, recommended_treatment, follow_up
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    finish_reason: Mapped[str] = mapped_column(String(32))
    requires_review: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AuditEvent(Base):
    """Who did what, and when: submissions, resumes, re-sends, exports, training. No patient data."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32), index=True)  # submit | resume | reconcile | export | train
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class Instance(Base):
    """This database's identity, written once by the migrations. Messages carry it, so a worker pointed
    at another database refuses them instead of mistaking their batch IDs for its own."""

    __tablename__ = "medbatch_instance"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class InboxEntry(Base):
    """The nightly run's ledger: one row per inbox file (path + content hash) it has taken.

    A second run the same night finds the file here and submits nothing twice; a file whose content
    changed is a new entry. ``status``: ``claimed`` (about to be submitted), ``taken`` (a job holds it),
    ``rejected`` (unusable; ``reason`` says why and a human must look).
    """

    __tablename__ = "inbox_entries"
    __table_args__ = (UniqueConstraint("path", "sha256", name="uq_inbox_entries_path_sha256"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    workload: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    claim: Mapped[str] = mapped_column(String(36), index=True)  # the nightly run that took it
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    taken_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # built, not yet confirmed by the destination
    SENT = "sent"  # the destination confirmed it
    FAILED = "failed"  # the last try failed; ``reason`` says why (the next export tries again)


class DicomDelivery(Base):
    """One DICOM object (an SR, or the SC of a positive) made for an item, per destination PACS.

    Its SOP Instance UID is derived from the source instance, the model version and the kind, so a
    re-export sends the same object and the destination keeps one copy; a row ``sent`` is never re-sent.
    """

    __tablename__ = "dicom_deliveries"
    __table_args__ = (
        UniqueConstraint("item_id", "destination", "kind", name="uq_dicom_deliveries_item_dest_kind"),
        Index("ix_dicom_deliveries_job_status", "job_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(512))  # a DICOMweb root or AET@host:port (no credentials)
    kind: Mapped[str] = mapped_column(String(8))  # sr | sc
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class ReceivedStatus(enum.StrEnum):
    RECEIVED = "received"  # written to disk and acknowledged to the sender
    CLAIMED = "claimed"  # the listener is staging its study
    STAGED = "staged"  # a job holds it


class DicomReceived(Base):
    """The DICOM listener's ledger: one row per instance received by C-STORE (one per SOP Instance UID).

    A row is committed before the sender is told the instance is stored, so a restart loses none; a
    study is staged once (``claimed`` then ``staged`` with its job), so a restart stages none twice.
    """

    __tablename__ = "dicom_received"
    __table_args__ = (Index("ix_dicom_received_study_status", "study_instance_uid", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    calling_aet: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)  # a name medbatch chose under the listener's inbox
    status: Mapped[str] = mapped_column(String(16), default=ReceivedStatus.RECEIVED.value)
    claim: Mapped[str | None] = mapped_column(String(36), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


class Review(Base):
    """A reviewer's verdict on one result (agree/disagree, optional corrected label) or one report draft
    (approved/edited/rejected), imported by ``medbatch review import``. No patient data beyond the ids."""

    __tablename__ = "reviews"
    __table_args__ = (
        UniqueConstraint("kind", "result_id", "report_id", "reviewer", name="uq_reviews_target_reviewer"),
        Index("ix_reviews_model", "model_name", "model_version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # result | report
    result_id: Mapped[int | None] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"))
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    predicted_label: Mapped[str | None] = mapped_column(String(128))
    verdict: Mapped[str] = mapped_column(String(16))
    corrected_label: Mapped[str | None] = mapped_column(String(128))
    reviewer: Mapped[str] = mapped_column(String(128))
    reviewed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    imported_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
