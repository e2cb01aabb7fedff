"""The audit trail: who did what to which job. (Not ``audit.py``: the module would shadow the
:func:`audit` function that ``medbatch.db.repository`` re-exports.)
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from medbatch.db.tables import (
    AuditEvent,
)


def audit(session: Session, *, actor: str, action: str, job_id: int | None = None, detail: dict | None = None) -> None:
    """Record who did what to which job. ``detail`` holds counts and options, never patient data."""
    session.add(AuditEvent(actor=actor or "unknown", action=action, job_id=job_id, detail=detail or {}))


def audit_events(session: Session, job_id: int | None = None, limit: int = 100) -> list[AuditEvent]:
    """The latest audit events, newest first (of one job when given)."""
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if job_id is not None:
        stmt = stmt.where(AuditEvent.job_id == job_id)
    return list(session.scalars(stmt))
