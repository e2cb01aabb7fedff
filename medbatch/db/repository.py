"""Repository functions: every read and state change of jobs, batches, items, results and models.

Functions take an open :class:`~sqlalchemy.orm.Session` and leave committing to the caller's
``session_scope``, so a caller can make several changes in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import JSON, Table, func, insert, or_, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from medbatch.db.rawjson import RawJson
from medbatch.db.tables import (
    FINISHED_BATCH,
    FINISHED_JOB,
    AuditEvent,
    Batch,
    BatchStatus,
    Instance,
    Item,
    ItemError,
    ItemStatus,
    Job,
    JobStatus,
    Model,
    Report,
    Result,
    utcnow,
)
from medbatch.errors import NotFound, WrongDatabase

#: Rows per INSERT statement when COPY is not available.
INSERT_CHUNK = 5_000


# --------------------------------------------------------------------------- bulk writes


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _json_columns(table: Table) -> set[str]:
    return {c.name for c in table.columns if isinstance(c.type, JSON)}


def _copy_rows(
    session: Session, table_name: str, columns: list[str], rows: Sequence[dict[str, Any]], json_cols: set[str]
) -> None:
    raw = session.connection().connection.dbapi_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table_name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(
                [
                    json.dumps(row[c])
                    if c in json_cols and row[c] is not None and not isinstance(row[c], RawJson)
                    else row[c]
                    for c in columns
                ]
            )


def bulk_insert(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert many plain rows fast: COPY on PostgreSQL, multi-row INSERT elsewhere.

    Rows must carry every column that has no server default; JSON columns take Python objects.
    """
    if not rows:
        return
    if _dialect(session) == "postgresql":
        _copy_rows(session, table.name, list(rows[0].keys()), rows, _json_columns(table))
        return
    decoded = [{k: v.value() if isinstance(v, RawJson) else v for k, v in row.items()} for row in rows]
    for start in range(0, len(decoded), INSERT_CHUNK):
        session.execute(insert(table), decoded[start : start + INSERT_CHUNK])


def insert_ignore_conflicts(session: Session, table: Table, rows: Sequence[dict[str, Any]], key: list[str]) -> None:
    """INSERT rows, silently skipping those whose unique ``key`` already exists (idempotent writes).

    On PostgreSQL the rows are COPYed into a transaction-scoped temporary table first and moved over
    with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: one round trip instead of one per row.
    """
    if not rows:
        return
    dialect = _dialect(session)
    if dialect == "postgresql":
        columns = list(rows[0].keys())
        staging = f"_stage_{table.name}"
        cols = ", ".join(columns)
        # Column types only (no constraints, defaults or sequence links), gone at the end of the transaction.
        session.execute(
            text(
                f"CREATE TEMP TABLE IF NOT EXISTS {staging} ON COMMIT DROP AS "
                f"SELECT {cols} FROM {table.name} WITH NO DATA"
            )
        )
        _copy_rows(session, staging, columns, rows, _json_columns(table))
        session.execute(
            text(
                f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {staging} "
                f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
            )
        )
        session.execute(text(f"TRUNCATE {staging}"))
        return
    if dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=key)
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise NotImplementedError(f"idempotent insert not implemented for {dialect}")
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(stmt, list(rows[start : start + INSERT_CHUNK]))


# --------------------------------------------------------------------------- jobs and staging


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


def get_job(session: Session, job_id: int) -> Job:
    """The job, or :class:`NotFound`."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


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
            "error_key": f"validation:{e['source_uri']}:{e.get('source_row')}",
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


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class ClaimedBatch:
    batch_id: int
    job_id: int
    workload: str
    model_name: str | None
    model_version: str | None
    attempt: int
    options: dict[str, Any]


def claim_batch(session: Session, batch_id: int, *, max_attempts: int) -> ClaimedBatch | None:
    """Mark a batch running and count the attempt; None when there is nothing to do.

    A batch already ``done`` or ``dead`` returns None: a re-delivered message writes nothing. A batch
    that has already been attempted ``max_attempts`` times is dead-lettered here, so a message that
    kills its worker every time stops being retried.
    """
    batch = session.get(Batch, batch_id, with_for_update=_dialect(session) == "postgresql")
    if batch is None:
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


def load_job_pending_items(session: Session, job_id: int) -> list[Any]:
    """Every item of a job still waiting for a result (plain rows, as :func:`load_pending_items`)."""
    return list(session.execute(_pending_items().where(Item.job_id == job_id)))


def update_job_options(session: Session, job_id: int, **values: Any) -> None:
    """Merge ``values`` into the job's ``options`` JSON (e.g. the provider batch it is waiting on)."""
    job = get_job(session, job_id)
    job.options = {**(job.options or {}), **values}


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


def complete_batch(
    session: Session,
    *,
    batch_id: int,
    job_id: int,
    results: Sequence[dict[str, Any]] = (),
    failures: Sequence[dict[str, Any]] = (),
) -> None:
    """Write a batch's outcome in the caller's transaction, idempotently, and finish the job if it was the last."""
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
    finish_job_if_done(session, job_id)


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


# --------------------------------------------------------------------------- reading


def job_counts(session: Session, job_id: int) -> dict[str, Any]:
    """Counts a person needs to judge a job: items by state, batches by state, rejected rows."""
    job = get_job(session, job_id)
    items = dict(
        session.execute(select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)).all()
    )
    batches = dict(
        session.execute(select(Batch.status, func.count()).where(Batch.job_id == job_id).group_by(Batch.status)).all()
    )
    errors_by_stage = dict(
        session.execute(
            select(ItemError.stage, func.count()).where(ItemError.job_id == job_id).group_by(ItemError.stage)
        ).all()
    )
    done = items.get(ItemStatus.DONE.value, 0)
    failed = items.get(ItemStatus.FAILED.value, 0)
    total = job.items_total
    return {
        "job_id": job.id,
        "workload": job.workload,
        "status": job.status,
        "source": job.source_uri,
        "model": {"name": job.model_name, "version": job.model_version},
        "items_total": total,
        "items_done": done,
        "items_failed": failed,
        "items_pending": total - done - failed,
        "rows_rejected": job.rows_rejected,
        "errors_by_stage": errors_by_stage,
        "batches": batches,
        "batches_total": job.batches_total,
        "progress": 1.0 if total == 0 else round((done + failed) / total, 4),
        "error": job.error,
        "provider_batch": (job.options or {}).get("provider_batch"),
        "metrics": job.metrics,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def label_counts(session: Session, job_id: int) -> dict[str, int]:
    """How many results of the job carry each label."""
    return dict(
        session.execute(select(Result.label, func.count()).where(Result.job_id == job_id).group_by(Result.label)).all()
    )


def job_result_rows(session: Session, job_id: int) -> list[Any]:
    """Every result of a job as plain rows (result id, item id, label, score, detail), in item order."""
    return list(
        session.execute(
            select(Result.id, Result.item_id, Result.label, Result.score, Result.detail)
            .where(Result.job_id == job_id)
            .order_by(Result.item_id)
        )
    )


def update_result_details(session: Session, details: dict[int, dict[str, Any]]) -> None:
    """Replace the ``detail`` of the given results (result id -> new detail), as one executemany."""
    if details:
        session.execute(update(Result), [{"id": rid, "detail": detail} for rid, detail in details.items()])


def set_job_metrics(session: Session, job_id: int, metrics: dict[str, Any]) -> None:
    """Store the job-level metrics computed when the job finished."""
    session.execute(update(Job).where(Job.id == job_id).values(metrics=metrics, updated_at=utcnow()))


def job_of_batch(session: Session, batch_id: int) -> int:
    """The id of the job a batch belongs to, or :class:`NotFound`."""
    job_id = session.scalar(select(Batch.job_id).where(Batch.id == batch_id))
    if job_id is None:
        raise NotFound(f"no batch {batch_id}")
    return job_id


def iter_results(session: Session, job_id: int, *, chunk: int = 10_000) -> Iterator[dict[str, Any]]:
    """Every result of a job with its source file, row and patient identifier, in input order.

    Report jobs also carry the report itself (text, review flag, provider accounting).
    """
    stmt = (
        select(
            Item.source_uri,
            Item.source_row,
            Item.patient_ref,
            Item.item_key,
            Result.label,
            Result.score,
            Result.model_name,
            Result.model_version,
            Result.detail,
            Result.created_at,
            Report.text,
            Report.requires_review,
            Report.tokens_in,
            Report.tokens_out,
            Report.cost_usd,
            Report.finish_reason,
        )
        .join(Result, Result.item_id == Item.id)
        .outerjoin(Report, Report.item_id == Item.id)
        .where(Item.job_id == job_id)
        .order_by(Item.id)
        .execution_options(yield_per=chunk)
    )
    for row in session.execute(stmt):
        out = {
            "source_file": row.source_uri,
            "source_row": row.source_row,
            "patient_id": row.patient_ref,
            "item_key": row.item_key,
            "label": row.label,
            "score": row.score,
            "model_name": row.model_name,
            "model_version": row.model_version,
            "detail": row.detail,
            "created_at": row.created_at.isoformat() if row.created_at else None,
        }
        if row.text is not None:
            out.update(
                requires_review=row.requires_review,
                report_text=row.text,
                tokens_in=row.tokens_in,
                tokens_out=row.tokens_out,
                cost_usd=row.cost_usd,
                finish_reason=row.finish_reason,
            )
        yield out


def tokens_spent(session: Session, job_id: int) -> int:
    """LLM tokens (in + out) spent on a job's reports so far."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(Report.tokens_in + Report.tokens_out), 0)).where(Report.job_id == job_id)
        )
    )


def iter_item_findings(session: Session, job_id: int) -> Iterator[dict[str, Any]]:
    """Each scored item of a job with its inputs and its result (for reports drawn from that job)."""
    stmt = (
        select(Item.id, Item.payload, Item.patient_ref, Item.source_row, Result.label, Result.score)
        .join(Result, Result.item_id == Item.id)
        .where(Item.job_id == job_id)
        .order_by(Item.id)
    )
    for row in session.execute(stmt):
        yield {
            "item_id": row.id,
            "payload": row.payload,
            "patient_ref": row.patient_ref,
            "source_row": row.source_row,
            "label": row.label,
            "score": row.score,
        }


def latest_findings(session: Session, patient_refs: Sequence[str]) -> dict[str, dict[str, tuple[Any, Any]]]:
    """For each patient identifier, the latest (label, score) per workload across all jobs."""
    out: dict[str, dict[str, tuple[Any, Any]]] = {}
    for start in range(0, len(patient_refs), 1000):
        part = list(patient_refs[start : start + 1000])
        stmt = (
            select(Item.patient_ref, Job.workload, Result.label, Result.score)
            .join(Result, Result.item_id == Item.id)
            .join(Job, Job.id == Item.job_id)
            .where(Item.patient_ref.in_(part))
            .order_by(Result.id)
        )
        for row in session.execute(stmt):
            out.setdefault(row.patient_ref, {})[row.workload] = (row.label, row.score)
    return out


def iter_errors(session: Session, job_id: int) -> Iterator[dict[str, Any]]:
    """Every recorded error of a job, rejected rows and failed items, in source order."""
    stmt = (
        select(ItemError)
        .where(ItemError.job_id == job_id)
        .order_by(ItemError.source_uri, ItemError.source_row, ItemError.id)
    )
    for err in session.scalars(stmt):
        yield {
            "source_file": err.source_uri,
            "source_row": err.source_row,
            "patient_id": err.patient_ref,
            "stage": err.stage,
            "reason": err.reason,
            "created_at": err.created_at.isoformat() if err.created_at else None,
        }


def count_batches(session: Session, job_id: int, *, exclude_status: str | None = None) -> int:
    """How many batches the job has (optionally not counting those in one state)."""
    stmt = select(func.count()).select_from(Batch).where(Batch.job_id == job_id)
    if exclude_status:
        stmt = stmt.where(Batch.status != exclude_status)
    return int(session.scalar(stmt))


def unfinished_batches(session: Session, job_id: int) -> list[tuple[int, str]]:
    """(batch id, queue) of every batch of the job that is not done or dead."""
    return [
        (row.id, row.queue)
        for row in session.execute(
            select(Batch.id, Batch.queue)
            .where(Batch.job_id == job_id, Batch.status.not_in(FINISHED_BATCH))
            .order_by(Batch.seq)
        )
    ]


def list_jobs(session: Session, limit: int = 20) -> list[Job]:
    """The most recent jobs first."""
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


# --------------------------------------------------------------------------- identity

_instance_ids: dict[str, str] = {}


def instance_id(session: Session, *, fresh: bool = False) -> str:
    """This database's identity (cached per database URL and process unless ``fresh``)."""
    url = str(session.get_bind().url)
    if fresh or url not in _instance_ids:
        _instance_ids[url] = session.scalar(select(Instance.id))
    return _instance_ids[url]


def check_instance(session: Session, expected: str | None) -> None:
    """Refuse work staged in another database. ``expected`` is None for messages that carry no identity.

    A mismatch is confirmed against a fresh read first (the database may have been re-created).
    """
    if expected is not None and expected != instance_id(session) and expected != instance_id(session, fresh=True):
        raise WrongDatabase(
            f"message is for database {expected}, this worker uses {instance_id(session)}: "
            "check MEDBATCH_DATABASE_URL of the workers sharing this broker"
        )


# --------------------------------------------------------------------------- audit


def audit(session: Session, *, actor: str, action: str, job_id: int | None = None, detail: dict | None = None) -> None:
    """Record who did what to which job. ``detail`` holds counts and options, never patient data."""
    session.add(AuditEvent(actor=actor or "unknown", action=action, job_id=job_id, detail=detail or {}))


def audit_events(session: Session, job_id: int | None = None, limit: int = 100) -> list[AuditEvent]:
    """The latest audit events, newest first (of one job when given)."""
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if job_id is not None:
        stmt = stmt.where(AuditEvent.job_id == job_id)
    return list(session.scalars(stmt))


# --------------------------------------------------------------------------- model registry


def register_model(
    session: Session,
    *,
    name: str,
    version: str,
    uri: str,
    metrics: dict[str, Any],
    training_source: str,
    activate: bool = True,
) -> Model:
    """Add (or find) a model version; when ``activate``, it becomes the one new jobs use."""
    model = session.scalars(select(Model).where(Model.name == name, Model.version == version)).one_or_none()
    if model is None:
        model = Model(
            name=name, version=version, uri=uri, metrics=metrics, training_source=training_source, active=activate
        )
        session.add(model)
    else:
        model.uri = uri
    if activate:
        session.execute(update(Model).where(Model.name == name, Model.version != version).values(active=False))
        model.active = True
    session.flush()
    return model


def active_model(session: Session, name: str) -> Model | None:
    """The active version of model ``name``, if any is registered."""
    return session.scalars(
        select(Model).where(Model.name == name, Model.active.is_(True)).order_by(Model.id.desc())
    ).first()


def find_model(session: Session, name: str, version: str) -> Model:
    """A registered model version, or :class:`NotFound`."""
    model = session.scalars(select(Model).where(Model.name == name, Model.version == version)).one_or_none()
    if model is None:
        raise NotFound(f"model {name} version {version} is not registered")
    return model


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.name, Model.id.desc())))


# --------------------------------------------------------------------------- monitoring
#
# Read by the Prometheus exporter (medbatch/monitoring.py) on every scrape, so each query stays
# cheap on a database holding months of history: item, batch and report counts are limited to the
# "recent" jobs (unfinished, or finished within the window), reached through indexed columns.


def limit_statement_time(session: Session, seconds: float) -> None:
    """Cut off any statement of the caller's transaction after ``seconds`` (PostgreSQL; a no-op on SQLite)."""
    if _dialect(session) == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {int(seconds * 1000)}"))


def _recent_jobs(window_s: float):
    """Jobs still open, or finished less than ``window_s`` seconds ago (tonight's work), as a subquery."""
    since = utcnow() - timedelta(seconds=window_s)
    return (
        select(Job.id, Job.workload)
        .where(or_(Job.status.not_in(FINISHED_JOB), Job.finished_at >= since))
        .subquery("recent_jobs")
    )


def monitoring_item_counts(session: Session, *, window_s: float) -> dict[tuple[str, str], int]:
    """Items of the recent jobs by (workload, item status).

    Goes through the job's batches so that PostgreSQL can count from ``ix_items_batch_status``
    (batch_id, status) alone, without reading the items' payloads.
    """
    recent = _recent_jobs(window_s)
    rows = session.execute(
        select(recent.c.workload, Item.status, func.count())
        .select_from(recent)
        .join(Batch, Batch.job_id == recent.c.id)
        .join(Item, Item.batch_id == Batch.id)
        .group_by(recent.c.workload, Item.status)
    )
    return {(workload, status): int(n) for workload, status, n in rows}


@dataclass(frozen=True)
class QueueBacklog:
    """The unfinished batches of one queue: how many in each status, and since when the oldest waits."""

    batches: dict[str, int]
    oldest_waiting_since: Any  # datetime (UTC) the oldest unfinished batch was queued, or its job created


def monitoring_unfinished_batches(session: Session) -> dict[str, QueueBacklog]:
    """Unfinished (pending, queued, running) batches per queue, from the index on ``batches.status``."""
    waiting_since = func.min(func.coalesce(Batch.queued_at, Job.created_at))
    rows = session.execute(
        select(Batch.queue, Batch.status, func.count(), waiting_since)
        .join(Job, Job.id == Batch.job_id)
        .where(Batch.status.in_([BatchStatus.PENDING.value, BatchStatus.QUEUED.value, BatchStatus.RUNNING.value]))
        .group_by(Batch.queue, Batch.status)
    )
    out: dict[str, QueueBacklog] = {}
    for queue, status, n, since in rows:
        since = _aware(since)
        prev = out.get(queue)
        batches = {**(prev.batches if prev else {}), status: int(n)}
        oldest = since if prev is None or prev.oldest_waiting_since is None else min(prev.oldest_waiting_since, since)
        out[queue] = QueueBacklog(batches=batches, oldest_waiting_since=oldest)
    return out


def monitoring_last_batch_finished(session: Session, *, window_s: float) -> dict[str, Any]:
    """Per queue, when the last batch of a recent job finished (UTC datetime); queues with none are absent."""
    recent = _recent_jobs(window_s)
    rows = session.execute(
        select(Batch.queue, func.max(Batch.finished_at))
        .join(recent, recent.c.id == Batch.job_id)
        .where(Batch.finished_at.is_not(None))
        .group_by(Batch.queue)
    )
    return {queue: _aware(at) for queue, at in rows if at is not None}


def monitoring_job_counts(session: Session) -> dict[tuple[str, str], int]:
    """Every job by (workload, status). The jobs table holds one row per submitted file: small."""
    rows = session.execute(select(Job.workload, Job.status, func.count()).group_by(Job.workload, Job.status))
    return {(workload, status): int(n) for workload, status, n in rows}


def monitoring_llm_usage(session: Session, *, window_s: float) -> dict[str, float]:
    """LLM tokens in and out and cost (USD) of the recent jobs' reports (through ``reports.job_id``)."""
    recent = _recent_jobs(window_s)
    row = session.execute(
        select(
            func.coalesce(func.sum(Report.tokens_in), 0),
            func.coalesce(func.sum(Report.tokens_out), 0),
            func.coalesce(func.sum(Report.cost_usd), 0.0),
            func.count(Report.id),
        ).join(recent, recent.c.id == Report.job_id)
    ).one()
    return {"tokens_in": int(row[0]), "tokens_out": int(row[1]), "cost_usd": float(row[2]), "reports": int(row[3])}


def _aware(at: Any) -> Any:
    """SQLite returns naive datetimes for timezone-aware columns; every stored time is UTC."""
    if at is not None and getattr(at, "tzinfo", None) is None and hasattr(at, "replace"):
        return at.replace(tzinfo=UTC)
    return at
