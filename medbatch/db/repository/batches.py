"""The worker's side of a batch: claim it, load its pending items, write its outcome idempotently,
hand it back or dead-letter it, and finish the job when the last batch ends. Also the job-level
state a pipeline sets (options, metrics, result details) and the batches a reconciler finds stuck.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from medbatch.db.repository.bulk import _dialect, insert_ignore_conflicts
from medbatch.db.repository.queries import get_job
from medbatch.db.tables import (
    FINISHED_BATCH,
    FINISHED_JOB,
    Batch,
    BatchStatus,
    Item,
    ItemError,
    ItemStatus,
    Job,
    JobStatus,
    Report,
    Result,
    utcnow,
)
from medbatch.errors import InvalidInput, NotFound, WrongWorkload


@dataclass(frozen=True)
class ClaimedBatch:
    batch_id: int
    job_id: int
    workload: str
    model_name: str | None
    model_version: str | None
    attempt: int
    options: dict[str, Any]


def check_row_id(value: object, what: str) -> int:
    """``value`` if it is a row id (a positive BIGINT); ``1.5``, ``"1"``, ``True`` and ``2**70`` are not."""
    if type(value) is not int or not 0 < value < 2**63:
        raise InvalidInput(f"{what} must be a positive 64-bit integer (got a {type(value).__name__})")
    return value


def claim_batch(
    session: Session, batch_id: int, *, max_attempts: int, workloads: Collection[str] | None = None
) -> ClaimedBatch | None:
    """Mark a batch running and count the attempt; None when there is nothing to do.

    A batch already ``done`` or ``dead`` returns None: a re-delivered message writes nothing. A batch
    that has already been attempted ``max_attempts`` times is dead-lettered here, so a message that
    kills its worker every time stops being retried.

    ``workloads``: those the calling task serves. The batch is found (and locked) only if its job is
    of one of them, in the same statement; a batch of another workload raises :class:`WrongWorkload`
    and is left exactly as it was (a message for one queue can never fail another workload's items).

    Raises:
        InvalidInput: ``batch_id`` is not a row id (checked before any SQL: ``1.5`` never matches batch 1).
        WrongWorkload: the batch belongs to a job of another workload.
        NotFound: there is no such batch.
    """
    check_row_id(batch_id, "batch id")
    stmt = select(Batch).where(Batch.id == batch_id)
    if workloads is not None:
        stmt = stmt.join(Job, Job.id == Batch.job_id).where(Job.workload.in_(sorted(workloads)))
    if _dialect(session) == "postgresql":
        stmt = stmt.with_for_update(of=Batch)
    batch = session.scalars(stmt).one_or_none()
    if batch is None:
        other = session.scalar(select(Job.workload).join(Batch, Batch.job_id == Job.id).where(Batch.id == batch_id))
        if other is not None:
            raise WrongWorkload(
                f"batch {batch_id} belongs to a {other} job, not to {' or '.join(sorted(workloads or ()))}: "
                "refused, nothing changed (a message sent to the wrong task?)"
            )
        raise NotFound(f"no batch {batch_id}")
    if batch.status in FINISHED_BATCH:
        return None
    if batch.attempts >= max_attempts:
        dead_letter_batch(
            session, batch_id, reason=f"gave up after {batch.attempts} attempts (worker lost or failed each time)"
        )
        return None
    batch.attempts += 1
    batch.status = BatchStatus.RUNNING.value
    batch.started_at = utcnow()
    if batch.queued_at is None:  # claimed before the producer recorded the send: it was sent by now
        batch.queued_at = batch.started_at
    job = session.get(Job, batch.job_id)
    if job.status in (JobStatus.QUEUED.value,):
        job.status = JobStatus.RUNNING.value
    return ClaimedBatch(
        batch_id=batch.id,
        job_id=batch.job_id,
        workload=job.workload,
        model_name=job.model_name,
        model_version=job.model_version,
        attempt=batch.attempts,
        options=dict(job.options or {}),
    )


def load_pending_items(session: Session, batch_id: int) -> list[Any]:
    """The batch's items still waiting for a result, in staging order.

    Returns plain rows (attributes id, payload, source_uri, source_row, patient_ref, item_key): loading
    thousands of ORM objects per batch costs more than the model does.
    """
    return list(session.execute(_pending_items().where(Item.batch_id == batch_id)))


def _pending_items():
    return (
        select(Item.id, Item.payload, Item.source_uri, Item.source_row, Item.patient_ref, Item.item_key)
        .where(Item.status == ItemStatus.PENDING.value)
        .order_by(Item.id)
    )


def load_job_pending_items(session: Session, job_id: int) -> list[Any]:
    """Every item of a job still waiting for a result (plain rows, as :func:`load_pending_items`)."""
    return list(session.execute(_pending_items().where(Item.job_id == job_id)))


def write_outcomes(
    session: Session,
    *,
    job_id: int,
    results: Sequence[dict[str, Any]] = (),
    failures: Sequence[dict[str, Any]] = (),
    reports: Sequence[dict[str, Any]] = (),
    mark_done_by_id: bool = True,
) -> None:
    """Write results, reports and failures idempotently (unique keys: item id, error key), and set item states.

    Args:
        results: dicts with item_id, model_name, model_version, label, score, detail.
        failures: dicts with item_id, source_uri, source_row, patient_ref, reason, optional stage.
        reports: dicts with the :class:`~medbatch.db.tables.Report` columns (item_id, provider, ...).
        mark_done_by_id: set the results' items done by id; the batch-wide caller does it more cheaply.
    """
    now = utcnow()
    insert_ignore_conflicts(
        session, Result.__table__, [{**r, "job_id": job_id, "created_at": now} for r in results], ["item_id"]
    )
    insert_ignore_conflicts(
        session, Report.__table__, [{**r, "job_id": job_id, "created_at": now} for r in reports], ["item_id"]
    )
    error_rows = [
        {
            "job_id": job_id,
            "item_id": f["item_id"],
            "error_key": f"{f.get('stage', 'inference')}:item:{f['item_id']}",
            "stage": f.get("stage", "inference"),
            "source_uri": f["source_uri"],
            "source_row": f.get("source_row"),
            "patient_ref": f.get("patient_ref"),
            "reason": f["reason"],
            "created_at": now,
        }
        for f in failures
    ]
    insert_ignore_conflicts(session, ItemError.__table__, error_rows, ["job_id", "error_key"])
    if failures:
        session.execute(
            update(Item).where(Item.id.in_([f["item_id"] for f in failures])).values(status=ItemStatus.FAILED.value)
        )
    if results and mark_done_by_id:
        session.execute(
            update(Item).where(Item.id.in_([r["item_id"] for r in results])).values(status=ItemStatus.DONE.value)
        )


def complete_batch(
    session: Session,
    *,
    batch_id: int,
    job_id: int,
    results: Sequence[dict[str, Any]] = (),
    failures: Sequence[dict[str, Any]] = (),
) -> bool:
    """Write a batch's outcome in the caller's transaction, idempotently, and finish the job if it was the last.

    Returns:
        Whether this batch finished its job.
    """
    write_outcomes(session, job_id=job_id, results=results, failures=failures, mark_done_by_id=False)
    if results:
        # Every item of the batch that did not fail now has a result (written above or by an earlier attempt).
        session.execute(
            update(Item)
            .where(Item.batch_id == batch_id, Item.status == ItemStatus.PENDING.value)
            .values(status=ItemStatus.DONE.value)
        )
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(status=BatchStatus.DONE.value, finished_at=utcnow(), error=None)
    )
    return finish_job_if_done(session, job_id)


def release_batch(session: Session, batch_id: int, reason: str) -> None:
    """Hand a claimed batch back after a transient failure: the attempt is not counted, the reason is kept.

    Only attempts that end without a word (a killed worker) count towards dead-lettering.
    """
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.RUNNING.value)
        .values(status=BatchStatus.QUEUED.value, attempts=Batch.attempts - 1, error=reason[:2000])
    )


def dead_letter_batch(session: Session, batch_id: int, *, reason: str) -> None:
    """Give up on a batch: every pending item gets an explained error; the rest of the job goes on."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.status in FINISHED_BATCH:
        return
    pending = load_pending_items(session, batch_id)
    complete_batch(
        session,
        batch_id=batch_id,
        job_id=batch.job_id,
        results=[],
        failures=[
            {
                "item_id": it.id,
                "stage": "dead_letter",
                "source_uri": it.source_uri,
                "source_row": it.source_row,
                "patient_ref": it.patient_ref,
                "reason": f"batch {batch_id} dead-lettered: {reason}",
            }
            for it in pending
        ],
    )
    session.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.DEAD.value, error=reason))


def finish_job_if_done(session: Session, job_id: int) -> bool:
    """Mark the job finished when staging is over and every batch is done or dead.

    Locks the job row first (PostgreSQL), so two batches finishing at once cannot both miss the end.
    """
    locked = select(Job).where(Job.id == job_id)
    if _dialect(session) == "postgresql":
        # FOR NO KEY UPDATE: serialises finishers without conflicting with the KEY SHARE locks that
        # foreign-key checks of concurrent inserts (staging, results) take on the same job row.
        locked = locked.with_for_update(key_share=True)
    job = session.scalars(locked).one()
    if job.status in FINISHED_JOB or job.status == JobStatus.STAGING.value:
        return False
    unfinished = session.scalar(
        select(func.count()).select_from(Batch).where(Batch.job_id == job_id, Batch.status.not_in(FINISHED_BATCH))
    )
    if unfinished:
        return False
    errors = session.scalar(select(func.count()).select_from(ItemError).where(ItemError.job_id == job_id))
    job.status = (JobStatus.COMPLETED_WITH_ERRORS if errors else JobStatus.COMPLETED).value
    job.finished_at = utcnow()
    return True


def mark_job_batches(session: Session, job_id: int, status: str) -> None:
    """Move every unfinished batch of a job to ``status`` (a job-level flow such as the Batch API)."""
    values: dict[str, Any] = {"status": BatchStatus(status).value}
    if status == BatchStatus.DONE.value:
        values["finished_at"] = utcnow()
    elif status == BatchStatus.RUNNING.value:
        values["started_at"] = utcnow()
    session.execute(update(Batch).where(Batch.job_id == job_id, Batch.status.not_in(FINISHED_BATCH)).values(**values))
    if status == BatchStatus.RUNNING.value:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.RUNNING.value)
        )


def update_job_options(session: Session, job_id: int, **values: Any) -> None:
    """Merge ``values`` into the job's ``options`` JSON (e.g. the provider batch it is waiting on)."""
    job = get_job(session, job_id)
    job.options = {**(job.options or {}), **values}


def update_result_details(session: Session, details: dict[int, dict[str, Any]]) -> None:
    """Replace the ``detail`` of the given results (result id -> new detail), as one executemany."""
    if details:
        session.execute(update(Result), [{"id": rid, "detail": detail} for rid, detail in details.items()])


def set_job_metrics(session: Session, job_id: int, metrics: dict[str, Any]) -> None:
    """Store the job-level metrics computed when the job finished."""
    session.execute(update(Job).where(Job.id == job_id).values(metrics=metrics, updated_at=utcnow()))


def stuck_batches(session: Session, *, older_than_s: float) -> dict[int, list[tuple[int, str]]]:
    """Unfinished batches nothing has happened to for ``older_than_s`` seconds, by job.

    A batch is stuck when it is pending (its message was never sent), queued, or running, and its last
    recorded event (sent, started, or the job's creation) is older than the deadline. Jobs still being
    staged are left to their producer.
    """
    deadline = utcnow() - timedelta(seconds=older_than_s)
    last_event = func.coalesce(Batch.started_at, Batch.queued_at, Job.created_at)
    rows = session.execute(
        select(Batch.job_id, Batch.id, Batch.queue)
        .join(Job, Job.id == Batch.job_id)
        .where(
            Batch.status.not_in(FINISHED_BATCH),
            Job.status != JobStatus.STAGING.value,
            func.coalesce(Batch.queued_at, Job.created_at) < deadline,
            last_event < deadline,
        )
        .order_by(Batch.job_id, Batch.seq)
    )
    out: dict[int, list[tuple[int, str]]] = {}
    for row in rows:
        out.setdefault(row.job_id, []).append((row.id, row.queue))
    return out
