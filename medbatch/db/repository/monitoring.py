"""Queries of the Prometheus exporter (medbatch/monitoring.py), run on every scrape.

Each stays cheap on a database holding months of history: item, batch and report counts are
limited to the "recent" jobs (unfinished, or finished within the window), reached through indexed
columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from medbatch.db.repository.bulk import _dialect
from medbatch.db.tables import (
    FINISHED_JOB,
    Batch,
    BatchStatus,
    Item,
    Job,
    Report,
    utcnow,
)


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

    Goes through the recent jobs' batches and ``ix_items_batch``, so only tonight's items are read (about
    0.9 s per million on PostgreSQL; docs/deploy.md).
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
