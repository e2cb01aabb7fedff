"""Drift: the scored inputs a tabular job's drift check reads, the per-image input features an X-ray job's
results carry (both a bounded sample), and the latest drift per workload for the Prometheus exporter."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medbatch.db.tables import FINISHED_JOB, Batch, Job

#: Most rows read for one job's drift check (the first batches', in item order): PSI is stable long before this.
DRIFT_SAMPLE_ROWS = 100_000
#: The workloads whose finished jobs are measured for drift.
DRIFT_WORKLOADS = ("risk", "treatment", "xray")


def job_scored_inputs(
    session: Session, job_id: int, limit: int = DRIFT_SAMPLE_ROWS
) -> tuple[list[str], list[float | None]]:
    """The validated payloads (JSON text, as stored) and scores of up to ``limit`` scored items of the job, in item
    order, as two columns (:func:`_scored_texts`)."""
    return _scored_texts(session, job_id, "i.payload", limit)


def job_scored_details(
    session: Session, job_id: int, limit: int = DRIFT_SAMPLE_ROWS
) -> tuple[list[dict[str, Any]], list[float | None]]:
    """The result details and scores of up to ``limit`` scored items of the job, in item order, as two columns (an
    X-ray result's detail holds the image's ``input_features``, recorded when it was classified)."""
    texts, scores = _scored_texts(session, job_id, "r.detail", limit)
    return [(json.loads(t) if t else None) or {} for t in texts], scores


def _scored_texts(session: Session, job_id: int, column: str, limit: int) -> tuple[list[str], list[float | None]]:
    """``column`` (of ``items i`` or ``results r``) as JSON text, and the score, of up to ``limit`` scored items of
    the job, in item order.

    Read batch by batch (``ix_items_batch``), in the batches' order, until ``limit`` rows: one query over the
    whole job joined and sorted every item of it first (17 s for a 10,000,000-row job; this reads 100,000). Through
    the driver's cursor, as text: the ORM's rows and a ``json.loads`` per payload took 0.88 s of the 100,000-row
    sample, at the end of every job.
    """
    mark = "%s" if session.get_bind().dialect.name == "postgresql" else "?"
    query = (
        f"SELECT CAST({column} AS TEXT), r.score FROM items i JOIN results r ON r.item_id = i.id "
        f"WHERE i.batch_id = {mark} ORDER BY i.id LIMIT {mark}"
    )
    batches = session.execute(select(Batch.id).where(Batch.job_id == job_id).order_by(Batch.seq)).scalars().all()
    texts: list[str] = []
    scores: list[float | None] = []
    cursor = session.connection().connection.dbapi_connection.cursor()
    try:
        for batch_id in batches:
            cursor.execute(query, (batch_id, limit - len(texts)))
            for text, score in cursor.fetchall():
                texts.append(text)
                scores.append(score)
            if len(texts) >= limit:
                break
    finally:
        cursor.close()
    return texts, scores


def monitoring_latest_drift(session: Session, *, look_back_jobs: int = 50) -> dict[str, dict[str, Any]]:
    """The drift block of the latest measured job per tabular or X-ray workload (among the last
    ``look_back_jobs``)."""
    stmt = (
        select(Job.workload, Job.id, Job.metrics)
        .where(Job.workload.in_(DRIFT_WORKLOADS), Job.status.in_(FINISHED_JOB), Job.metrics.is_not(None))
        .order_by(Job.id.desc())
        .limit(look_back_jobs)
    )
    latest: dict[str, dict[str, Any]] = {}
    for workload, job_id, metrics in session.execute(stmt):
        d = (metrics or {}).get("drift") if isinstance(metrics, dict) else None
        if workload not in latest and d and d.get("available"):
            latest[workload] = {"job_id": job_id, **d}
    return latest
