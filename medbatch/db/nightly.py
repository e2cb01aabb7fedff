"""Repository functions of the night: the inbox ledger (what the nightly run has taken) and the
read-only queries behind the morning summary. State changes happen here and in ``repository``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, func, select, tuple_, update
from sqlalchemy.orm import Session

from medbatch.db.repository import insert_ignore_conflicts
from medbatch.db.tables import Batch, InboxEntry, Item, ItemError, Job, Report, Result, utcnow

# --------------------------------------------------------------------------- the inbox ledger


def taken_pairs(session: Session, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (path, sha256) pairs the ledger already holds, in any state but ``claimed``-and-lost."""
    found: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), 500):
        chunk = pairs[start : start + 500]
        rows = session.execute(
            select(InboxEntry.path, InboxEntry.sha256).where(tuple_(InboxEntry.path, InboxEntry.sha256).in_(chunk))
        )
        found.update((r.path, r.sha256) for r in rows)
    return found


def claim_entries(session: Session, claim: str, entries: Iterable[dict[str, Any]]) -> None:
    """Record inbox files about to be submitted (dicts with path, sha256, size, workload)."""
    rows = [
        {
            "path": e["path"],
            "sha256": e["sha256"],
            "size": e.get("size", 0),
            "workload": e.get("workload"),
            "status": e.get("status", "claimed"),
            "reason": e.get("reason"),
            "claim": claim,
            "job_id": None,
            "taken_at": utcnow(),
        }
        for e in entries
    ]
    if rows:
        insert_ignore_conflicts(session, InboxEntry.__table__, rows, ["path", "sha256"])


def mark_entries(
    session: Session,
    claim: str,
    paths: Sequence[str],
    *,
    status: str,
    job_id: int | None = None,
    reason: str | None = None,
) -> None:
    """Move this run's claimed entries for ``paths`` to ``taken`` (with the job) or ``rejected`` (with why)."""
    for start in range(0, len(paths), 500):
        session.execute(
            update(InboxEntry)
            .where(InboxEntry.claim == claim, InboxEntry.path.in_(paths[start : start + 500]))
            .values(status=status, job_id=job_id, reason=reason)
        )


def lost_claims(session: Session) -> list[InboxEntry]:
    """Entries a previous run claimed but never linked to a job (it stopped between the two)."""
    return list(session.scalars(select(InboxEntry).where(InboxEntry.status == "claimed", InboxEntry.job_id.is_(None))))


def job_for_source(session: Session, source_uri: str, since: datetime) -> int | None:
    """The job created from ``source_uri`` at or after ``since``, if any (to re-link a lost claim)."""
    return session.scalar(
        select(Job.id).where(Job.source_uri == source_uri, Job.created_at >= since).order_by(Job.id).limit(1)
    )


def forget_entries(session: Session, ids: Sequence[int]) -> None:
    """Drop lost claims whose job never came to be, so the next run takes the files again."""
    if ids:
        session.execute(InboxEntry.__table__.delete().where(InboxEntry.id.in_(ids)))


def night_entries(session: Session, start: datetime, end: datetime) -> list[InboxEntry]:
    """Inbox entries recorded between ``start`` and ``end``."""
    return list(
        session.scalars(
            select(InboxEntry).where(InboxEntry.taken_at >= start, InboxEntry.taken_at < end).order_by(InboxEntry.id)
        )
    )


# --------------------------------------------------------------------------- the morning summary


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
    return int(
        session.scalar(select(func.count()).select_from(Batch).where(Batch.job_id.in_(job_ids), Batch.status == "dead"))
        or 0
    )
