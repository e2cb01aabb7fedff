"""The nightly run's inbox ledger: which files (path + content hash) it has claimed, taken or rejected.

Every change of an entry's :class:`InboxStatus` happens here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from medbatch.db.repository.bulk import insert_ignore_conflicts
from medbatch.db.tables import (
    InboxEntry,
    InboxStatus,
    Job,
    utcnow,
)


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
    """Record inbox files about to be submitted (dicts with path, sha256, size, workload, optional reason).

    An entry without a workload (a file the run cannot use) is recorded ``rejected`` with its reason.
    """
    rows = [
        {
            "path": e["path"],
            "sha256": e["sha256"],
            "size": e.get("size", 0),
            "workload": e.get("workload"),
            "status": (InboxStatus.CLAIMED if e.get("workload") else InboxStatus.REJECTED).value,
            "reason": e.get("reason"),
            "claim": claim,
            "job_id": None,
            "taken_at": utcnow(),
        }
        for e in entries
    ]
    if rows:
        insert_ignore_conflicts(session, InboxEntry.__table__, rows, ["path", "sha256"])


def take_entries(session: Session, claim: str, paths: Sequence[str], *, job_id: int) -> None:
    """This run's claimed entries for ``paths`` are ``taken``: ``job_id`` holds them."""
    _move_entries(session, claim, paths, status=InboxStatus.TAKEN, job_id=job_id, reason=None)


def reject_entries(session: Session, claim: str, paths: Sequence[str], *, reason: str) -> None:
    """This run's claimed entries for ``paths`` are ``rejected``: unusable, for ``reason``."""
    _move_entries(session, claim, paths, status=InboxStatus.REJECTED, job_id=None, reason=reason)


def _move_entries(
    session: Session,
    claim: str,
    paths: Sequence[str],
    *,
    status: InboxStatus,
    job_id: int | None,
    reason: str | None,
) -> None:
    for start in range(0, len(paths), 500):
        session.execute(
            update(InboxEntry)
            .where(InboxEntry.claim == claim, InboxEntry.path.in_(paths[start : start + 500]))
            .values(status=status.value, job_id=job_id, reason=reason)
        )


def relink_lost_claim(session: Session, entry_id: int, job_id: int) -> None:
    """A lost claim whose job was created after all (see :func:`lost_claims`) is ``taken`` by that job."""
    session.execute(
        update(InboxEntry).where(InboxEntry.id == entry_id).values(status=InboxStatus.TAKEN.value, job_id=job_id)
    )


def lost_claims(session: Session) -> list[InboxEntry]:
    """Entries a previous run claimed but never linked to a job (it stopped between the two)."""
    return list(
        session.scalars(
            select(InboxEntry).where(InboxEntry.status == InboxStatus.CLAIMED.value, InboxEntry.job_id.is_(None))
        )
    )


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
