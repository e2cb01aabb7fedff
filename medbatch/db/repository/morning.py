"""Read-only queries behind the morning summary (``medbatch/summary.py``) and the nightly verdict."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, func, select
from sqlalchemy.orm import Session

from medbatch.db.tables import (
    Batch,
    BatchStatus,
    Item,
    ItemError,
    Job,
    Report,
    Result,
)


def jobs_between(session: Session, start: datetime, end: datetime) -> list[Job]:
    """Jobs created in ``[start, end)``, oldest first."""
    return list(session.scalars(select(Job).where(Job.created_at >= start, Job.created_at < end).order_by(Job.id)))


_VALUE = re.compile(r"'[^']*'|\"[^\"]*\"")


_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")


def reason_group(reason: str) -> str:
    """A reason with its quoted values and numbers blanked, so the same mistake groups together."""
    return _NUMBER.sub("N", _VALUE.sub("'...'", reason)).strip()


def error_groups(session: Session, job_ids: Sequence[int], *, examples: int = 3) -> list[dict[str, Any]]:
    """The errors of ``job_ids`` grouped by (workload, stage, reason pattern), largest group first.

    Each group carries up to ``examples`` sources (file and line) to start from.
    """
    if not job_ids:
        return []
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    rows = session.execute(
        select(Job.workload, ItemError.stage, ItemError.reason, ItemError.source_uri, ItemError.source_row)
        .join(Job, Job.id == ItemError.job_id)
        .where(ItemError.job_id.in_(job_ids))
        .order_by(ItemError.id)
        .execution_options(yield_per=5000)
    )
    for r in rows:
        key = (r.workload, r.stage, reason_group(r.reason))
        g = groups.setdefault(
            key, {"workload": r.workload, "stage": r.stage, "reason": key[2], "count": 0, "examples": []}
        )
        g["count"] += 1
        if len(g["examples"]) < examples:
            where = f"{r.source_uri}:{r.source_row}" if r.source_row else r.source_uri
            g["examples"].append({"source": where, "reason": r.reason})
    return sorted(groups.values(), key=lambda g: (-g["count"], g["workload"], g["reason"]))


def results_per_minute(session: Session, job_ids: Sequence[int]) -> list[tuple[str, int]]:
    """Results written per minute (``YYYY-MM-DD HH:MM`` in UTC, count), for a throughput plot."""
    if not job_ids:
        return []
    if session.get_bind().dialect.name == "postgresql":
        minute = func.to_char(func.date_trunc("minute", Result.created_at), "YYYY-MM-DD HH24:MI")
    else:
        minute = func.substr(cast(Result.created_at, String), 1, 16)
    rows = session.execute(
        select(minute.label("m"), func.count()).where(Result.job_id.in_(job_ids)).group_by("m").order_by("m")
    )
    return [(str(m), int(n)) for m, n in rows]


def scores(session: Session, job_ids: Sequence[int]) -> list[float]:
    """Every non-null result score of ``job_ids``."""
    if not job_ids:
        return []
    rows = session.execute(
        select(Result.score)
        .where(Result.job_id.in_(job_ids), Result.score.is_not(None))
        .execution_options(yield_per=50_000)
    )
    return [float(r[0]) for r in rows]


def label_totals(session: Session, job_ids: Sequence[int]) -> dict[str, int]:
    if not job_ids:
        return {}
    rows = session.execute(select(Result.label, func.count()).where(Result.job_id.in_(job_ids)).group_by(Result.label))
    return {str(label): int(n) for label, n in rows}


def flagged_xrays(session: Session, job_ids: Sequence[int], limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
    """X-ray positives awaiting review: (how many, the ``limit`` most probable with their overlay and findings)."""
    if not job_ids:
        return 0, []
    where = and_(Result.job_id.in_(job_ids), Result.label == "pneumonia")
    total = session.scalar(select(func.count()).select_from(Result).where(where)) or 0
    rows = session.execute(
        select(Item.source_uri, Item.patient_ref, Result.job_id, Result.score, Result.detail)
        .join(Item, Item.id == Result.item_id)
        .where(where)
        .order_by(Result.score.desc(), Result.id)
        .limit(limit)
    )
    return int(total), [
        {
            "source": r.source_uri,
            "patient_id": r.patient_ref,
            "job_id": r.job_id,
            "probability": r.score,
            "heatmap": (r.detail or {}).get("heatmap"),
            "findings": (r.detail or {}).get("findings"),
            "flags": (r.detail or {}).get("flags") or [],
            "threshold": (r.detail or {}).get("threshold"),
        }
        for r in rows
    ]


def reports_to_review(session: Session, job_ids: Sequence[int]) -> int:
    if not job_ids:
        return 0
    return int(
        session.scalar(
            select(func.count()).select_from(Report).where(Report.job_id.in_(job_ids), Report.requires_review.is_(True))
        )
        or 0
    )


def model_usage(session: Session, job_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Which model versions produced the night's results, with counts."""
    if not job_ids:
        return []
    rows = session.execute(
        select(Result.model_name, Result.model_version, func.count())
        .where(Result.job_id.in_(job_ids))
        .group_by(Result.model_name, Result.model_version)
        .order_by(Result.model_name, Result.model_version)
    )
    return [{"model": m, "version": v, "results": int(n)} for m, v, n in rows]


def llm_usage(session: Session, job_ids: Sequence[int]) -> list[dict[str, Any]]:
    """LLM reports, tokens and estimated cost per provider and model."""
    if not job_ids:
        return []
    rows = session.execute(
        select(
            Report.provider,
            Report.model,
            func.count(),
            func.coalesce(func.sum(Report.tokens_in), 0),
            func.coalesce(func.sum(Report.tokens_out), 0),
            func.sum(Report.cost_usd),
        )
        .where(Report.job_id.in_(job_ids))
        .group_by(Report.provider, Report.model)
    )
    return [
        {"provider": p, "model": m, "reports": int(n), "tokens_in": int(ti), "tokens_out": int(to), "cost_usd": c}
        for p, m, n, ti, to, c in rows
    ]


def dead_batches(session: Session, job_ids: Sequence[int]) -> int:
    if not job_ids:
        return 0
    dead = select(func.count()).select_from(Batch).where(Batch.job_id.in_(job_ids), Batch.status == BatchStatus.DEAD)
    return int(session.scalar(dead) or 0)
