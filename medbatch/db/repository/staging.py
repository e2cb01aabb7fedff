"""The producer's side of a job: create it, stage its batches and rejected rows, record what was sent,
end the staging phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from medbatch.db.repository.auditing import audit
from medbatch.db.repository.batches import finish_job_if_done
from medbatch.db.repository.bulk import bulk_insert, insert_ignore_conflicts
from medbatch.db.tables import (
    FINISHED_BATCH,
    Batch,
    BatchStatus,
    Item,
    ItemError,
    ItemStatus,
    Job,
    JobStatus,
    utcnow,
)


def create_job(
    session: Session,
    *,
    workload: str,
    source_uri: str,
    model_name: str | None,
    model_version: str | None,
    options: dict[str, Any] | None = None,
    submitted_by: str = "",
) -> int:
    """Create a job in ``staging`` state and return its id."""
    job = Job(
        workload=workload,
        source_uri=source_uri,
        model_name=model_name,
        model_version=model_version,
        options=options or {},
        submitted_by=submitted_by,
        status=JobStatus.STAGING.value,
    )
    session.add(job)
    session.flush()
    audit(session, actor=submitted_by, action="submit", job_id=job.id, detail={"workload": workload, **(options or {})})
    return job.id


def stage_batch(session: Session, *, job_id: int, seq: int, queue: str, items: Sequence[dict[str, Any]]) -> int:
    """Stage one batch of validated items (dicts with item_key, source_uri, source_row, patient_ref, payload).

    Returns:
        The new batch id; its status is ``pending`` until :func:`mark_batches_queued`.
    """
    batch_id = session.execute(
        insert(Batch).returning(Batch.id),
        {"job_id": job_id, "seq": seq, "queue": queue, "item_count": len(items), "status": BatchStatus.PENDING.value},
    ).scalar_one()
    rows = [
        {
            "job_id": job_id,
            "batch_id": batch_id,
            "item_key": it["item_key"],
            "source_uri": it["source_uri"],
            "source_row": it.get("source_row"),
            "patient_ref": it.get("patient_ref"),
            "payload": it["payload"],
            "status": ItemStatus.PENDING.value,
        }
        for it in items
    ]
    bulk_insert(session, Item.__table__, rows)
    return batch_id


def add_staged_counts(session: Session, job_id: int, *, items: int, batches: int, rejected: int) -> None:
    """Add to the job's running totals; called once at the end of each staging transaction, so the job row
    is locked for the shortest time while workers finish batches of the same job."""
    if items or batches or rejected:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                items_total=Job.items_total + items,
                batches_total=Job.batches_total + batches,
                rows_rejected=Job.rows_rejected + rejected,
                updated_at=utcnow(),
            )
        )


def _error_key(key: str) -> str:
    """``key``, or its hash when longer than the column (a long path, a PACS instance URI)."""
    if len(key) <= 160:
        return key
    import hashlib

    return "validation:sha256:" + hashlib.sha256(key.encode()).hexdigest()


def record_rejections(session: Session, *, job_id: int, errors: Sequence[dict[str, Any]]) -> None:
    """Record input rows that failed validation (dicts with source_uri, source_row, patient_ref, reason).

    The job's ``rows_rejected`` total is the caller's to add (:func:`add_staged_counts`).
    """
    if not errors:
        return
    rows = [
        {
            "job_id": job_id,
            "item_id": None,
            "error_key": _error_key(f"validation:{e['source_uri']}:{e.get('source_row')}"),
            "stage": "validation",
            "source_uri": e["source_uri"],
            "source_row": e.get("source_row"),
            "patient_ref": e.get("patient_ref"),
            "reason": e["reason"],
            "created_at": utcnow(),
        }
        for e in errors
    ]
    insert_ignore_conflicts(session, ItemError.__table__, rows, ["job_id", "error_key"])


def mark_batches_queued(session: Session, batch_ids: Sequence[int]) -> None:
    """Record that messages for these batches were sent (only those not already further along)."""
    if not batch_ids:
        return
    session.execute(
        update(Batch)
        .where(Batch.id.in_(batch_ids), Batch.status == BatchStatus.PENDING.value)
        .values(status=BatchStatus.QUEUED.value, queued_at=utcnow())
    )


def mark_batches_resent(session: Session, batch_ids: Sequence[int]) -> None:
    """Record a re-send (resume, reconcile): unfinished batches go back to ``queued`` with a fresh time."""
    if batch_ids:
        session.execute(
            update(Batch)
            .where(Batch.id.in_(batch_ids), Batch.status.not_in(FINISHED_BATCH))
            .values(status=BatchStatus.QUEUED.value, queued_at=utcnow())
        )


def finish_staging(session: Session, job_id: int, *, error: str | None = None) -> None:
    """End the staging phase: the job is queued (or failed with ``error``), then finished if already done."""
    values: dict[str, Any] = {"updated_at": utcnow()}
    if error is not None:
        values.update(status=JobStatus.FAILED.value, error=error, finished_at=utcnow())
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        return
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.STAGING.value)
        .values(status=JobStatus.QUEUED.value, **values)
    )
    finish_job_if_done(session, job_id)
