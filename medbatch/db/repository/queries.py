"""Reading jobs: counts, results, errors and findings (read-only; nothing here changes state)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from medbatch.db.tables import (
    FINISHED_BATCH,
    Batch,
    Item,
    ItemError,
    ItemStatus,
    Job,
    Report,
    Result,
)
from medbatch.errors import NotFound


def get_job(session: Session, job_id: int) -> Job:
    """The job, or :class:`NotFound`."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


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
        # X-ray findings sent back to a PACS as DICOM: objects by delivery state (sent / failed).
        "dicom_deliveries": _delivery_counts(session, job_id) if job.workload == "xray" else {},
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def _delivery_counts(session: Session, job_id: int) -> dict[str, int]:
    from medbatch.db.repository.deliveries import delivery_counts

    return delivery_counts(session, job_id)


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


def job_of_batch(session: Session, batch_id: int) -> int:
    """The id of the job a batch belongs to, or :class:`NotFound`."""
    job_id = session.scalar(select(Batch.job_id).where(Batch.id == batch_id))
    if job_id is None:
        raise NotFound(f"no batch {batch_id}")
    return job_id


#: The columns of a result every reader of results shows.
RESULT_COLUMNS = (
    Result.label,
    Result.score,
    Result.model_name,
    Result.model_version,
    Result.detail,
    Result.created_at,
    Report.text,
    Report.requires_review,
)


def select_job_results(job_id: int, *cols: Any, chunk: int) -> Any:
    """Each result of a job with its item and (report jobs) its report, in input order, ``chunk`` rows at a time.

    ``cols`` come from ``Item``, ``Result`` and ``Report``; items without a result are left out.
    """
    return (
        select(*cols)
        .select_from(Item)
        .join(Result, Result.item_id == Item.id)
        .outerjoin(Report, Report.item_id == Item.id)
        .where(Item.job_id == job_id)
        .order_by(Item.id)
        .execution_options(yield_per=chunk)
    )


def iter_results(session: Session, job_id: int, *, chunk: int = 10_000) -> Iterator[dict[str, Any]]:
    """Every result of a job with its source (``source_uri``, ``source_row``) and patient identifier
    (``patient_ref``), in input order: the column names of the ``items`` table, as every export uses them.

    Report jobs also carry the report itself (text, review flag, provider accounting).
    """
    stmt = select_job_results(
        job_id,
        Item.source_uri,
        Item.source_row,
        Item.patient_ref,
        Item.item_key,
        *RESULT_COLUMNS,
        Report.tokens_in,
        Report.tokens_out,
        Report.cost_usd,
        Report.finish_reason,
        chunk=chunk,
    )
    for row in session.execute(stmt):
        out = {
            "source_uri": row.source_uri,
            "source_row": row.source_row,
            "patient_ref": row.patient_ref,
            "item_key": row.item_key,
            "label": row.label,
            "score": row.score,
            "model_name": row.model_name,
            "model_version": row.model_version,
            "detail": row.detail,
            "created_at": row.created_at,  # aware, UTC (tables.UtcDateTime); the export shows it in its zone
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


def result_detail_keys(session: Session, job_id: int) -> dict[str, Any]:
    """Every key the job's results carry in ``detail`` (and in ``detail.probabilities``), the JSON types each
    key's values have, and whether any result has a report: the columns of an export, and their types, read
    before the first row is written.

    Returns:
        ``{"detail": [...], "probabilities": [...], "types": {key: [json type, ...]}, "reports": bool}``, keys
        sorted; a JSON type is one of ``integer``, ``real``, ``text``, ``boolean``, ``array``, ``object``
        (``null`` is left out).
    """
    if session.get_bind().dialect.name == "postgresql":
        obj = "CASE WHEN jsonb_typeof({0}) = 'object' THEN {0} ELSE '{{}}'::jsonb END"  # detail is jsonb (0009)
        # jsonb has one number type: a number written without a fraction or exponent is an integer
        kind = (
            "CASE jsonb_typeof(e.v) WHEN 'number' THEN CASE WHEN e.v::text ~ '^-?[0-9]{1,18}$' THEN 'integer' "
            "ELSE 'real' END WHEN 'string' THEN 'text' ELSE jsonb_typeof(e.v) END"
        )
        keys = (
            f"SELECT e.k, {kind} FROM results r, jsonb_each(" + obj.format("r.detail") + ") AS e(k, v) "
            "WHERE r.job_id = :job GROUP BY 1, 2"
        )
        probs = (
            "SELECT DISTINCT k FROM results r, jsonb_object_keys("
            + obj.format("r.detail -> 'probabilities'")
            + ") AS k WHERE r.job_id = :job AND jsonb_typeof(r.detail) = 'object'"
        )
    else:
        keys = (
            "SELECT j.key, CASE WHEN j.type IN ('true', 'false') THEN 'boolean' ELSE j.type END "
            "FROM results r, json_each(r.detail) j "
            "WHERE r.job_id = :job AND json_type(r.detail) = 'object' GROUP BY 1, 2"
        )
        probs = (
            "SELECT DISTINCT j.key FROM results r, json_each(r.detail, '$.probabilities') j "
            "WHERE r.job_id = :job AND json_type(r.detail, '$.probabilities') = 'object'"
        )
    types: dict[str, set[str]] = {}
    for key, json_type in session.execute(text(keys), {"job": job_id}):
        types.setdefault(str(key), set())
        if json_type != "null":
            types[str(key)].add(str(json_type))
    reports = session.scalar(select(Report.id).where(Report.job_id == job_id).limit(1)) is not None
    return {
        "detail": sorted(types),
        "probabilities": sorted(str(k) for (k,) in session.execute(text(probs), {"job": job_id})),
        "types": {k: sorted(v) for k, v in sorted(types.items())},
        "reports": reports,
    }


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
            "source_uri": err.source_uri,
            "source_row": err.source_row,
            "patient_ref": err.patient_ref,
            "stage": err.stage,
            "reason": err.reason,
            "created_at": err.created_at,
        }


def count_batches(session: Session, job_id: int, *, exclude_status: str | None = None) -> int:
    """How many batches the job has (optionally not counting those in one state)."""
    stmt = select(func.count()).select_from(Batch).where(Batch.job_id == job_id)
    if exclude_status:
        stmt = stmt.where(Batch.status != exclude_status)
    return int(session.scalar(stmt))


def unfinished_batches(session: Session, job_id: int, *, status: str | None = None) -> list[tuple[int, str]]:
    """(batch id, queue) of every batch of the job that is not done or dead (only those in ``status`` when
    given, e.g. ``pending``: staged, never sent), in order."""
    where = Batch.status.not_in(FINISHED_BATCH) if status is None else Batch.status == status
    return [
        (row.id, row.queue)
        for row in session.execute(
            select(Batch.id, Batch.queue).where(Batch.job_id == job_id, where).order_by(Batch.seq)
        )
    ]


def list_jobs(session: Session, limit: int = 20) -> list[Job]:
    """The most recent jobs first."""
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))
