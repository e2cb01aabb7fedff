"""DICOM interop state: per-object deliveries of X-ray findings to a PACS, and the C-STORE listener's ledger.

Every change of a :class:`DeliveryStatus` or :class:`ReceivedStatus` happens here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from medbatch.db.tables import (
    DeliveryStatus,
    DicomDelivery,
    DicomReceived,
    Item,
    Job,
    ReceivedStatus,
    Result,
    utcnow,
)

# --------------------------------------------------------------------------- deliveries


def export_rows(session: Session, job_id: int) -> list[Any]:
    """Every result of a job with its item: (item_id, payload, source_uri, label, score, detail, model)."""
    return list(
        session.execute(
            select(
                Item.id.label("item_id"),
                Item.payload,
                Item.source_uri,
                Result.label,
                Result.score,
                Result.detail,
                Result.model_name,
                Result.model_version,
            )
            .join(Result, Result.item_id == Item.id)
            .where(Item.job_id == job_id)
            .order_by(Item.id)
        )
    )


def deliveries_for(session: Session, job_id: int, destination: str) -> dict[tuple[int, str], DicomDelivery]:
    """The job's delivery rows for ``destination``, keyed by (item_id, kind)."""
    rows = session.scalars(
        select(DicomDelivery).where(DicomDelivery.job_id == job_id, DicomDelivery.destination == destination)
    )
    return {(r.item_id, r.kind): r for r in rows}


def record_delivery(
    session: Session,
    *,
    job_id: int,
    item_id: int,
    destination: str,
    kind: str,
    sop_instance_uid: str,
    status: str,
    reason: str | None = None,
) -> None:
    """Record one try of one object: ``sent``, or ``failed`` with the destination's reason (attempts + 1)."""
    status = DeliveryStatus(status).value
    row = session.scalars(
        select(DicomDelivery).where(
            DicomDelivery.item_id == item_id, DicomDelivery.destination == destination, DicomDelivery.kind == kind
        )
    ).one_or_none()
    if row is None:
        row = DicomDelivery(
            job_id=job_id, item_id=item_id, destination=destination, kind=kind, sop_instance_uid=sop_instance_uid,
            attempts=0,
        )
        session.add(row)
    if row.status == DeliveryStatus.SENT.value:
        return  # sent is final: a later failed re-send of the same object does not undo it
    row.sop_instance_uid = sop_instance_uid
    row.status = status
    row.attempts = (row.attempts or 0) + 1
    row.reason = None if status == DeliveryStatus.SENT.value else (reason or "")[:2000]
    row.sent_at = utcnow() if status == DeliveryStatus.SENT.value else None
    row.updated_at = utcnow()
    session.flush()


def delivery_counts(session: Session, job_id: int) -> dict[str, int]:
    """``{status: objects}`` over every destination of a job (empty when nothing was exported)."""
    rows = session.execute(
        select(DicomDelivery.status, func.count()).where(DicomDelivery.job_id == job_id).group_by(DicomDelivery.status)
    )
    return {status: n for status, n in rows}


def delivery_failures(session: Session, job_ids: Sequence[int], limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
    """How many objects of these jobs are not delivered (failed), and the latest few with their reasons."""
    if not job_ids:
        return 0, []
    where = (DicomDelivery.job_id.in_(list(job_ids)), DicomDelivery.status == DeliveryStatus.FAILED.value)
    total = session.scalar(select(func.count()).select_from(DicomDelivery).where(*where)) or 0
    rows = session.scalars(select(DicomDelivery).where(*where).order_by(DicomDelivery.updated_at.desc()).limit(limit))
    return total, [
        {
            "job_id": r.job_id,
            "item_id": r.item_id,
            "kind": r.kind,
            "destination": r.destination,
            "attempts": r.attempts,
            "reason": r.reason,
        }
        for r in rows
    ]


def pacs_return_due(session: Session, job_id: int) -> bool:
    """True once for a finished PACS-sourced job (pulled, or received by the listener) whose automatic return
    was not yet queued; marks it queued (the job row is locked, so two last batches cannot both queue it)."""
    # FOR NO KEY UPDATE (only options change): a plain FOR UPDATE would wait for the KEY SHARE lock that every
    # results insert of the job takes (migration 0011) while holding finish_job_if_done's lock: a deadlock.
    job = session.get(Job, job_id, with_for_update={"key_share": True})
    options = job.options or {} if job is not None else {}
    if job is None or not (options.get("pacs") or options.get("dicom_claim")) or job.finished_at is None:
        return False
    if (job.options or {}).get("dicom_return_queued"):
        return False
    job.options = {**(job.options or {}), "dicom_return_queued": True}
    return True


# --------------------------------------------------------------------------- listener ledger


def received_instance(session: Session, sop_instance_uid: str) -> DicomReceived | None:
    return session.scalars(select(DicomReceived).where(DicomReceived.sop_instance_uid == sop_instance_uid)).first()


def record_received(
    session: Session, *, sop_instance_uid: str, study_instance_uid: str, calling_aet: str, path: str
) -> None:
    session.add(
        DicomReceived(
            sop_instance_uid=sop_instance_uid,
            study_instance_uid=study_instance_uid,
            calling_aet=calling_aet[:16],
            path=path,
            status=ReceivedStatus.RECEIVED.value,
        )
    )
    session.flush()


def settled_studies(session: Session, *, quiet_since: datetime) -> list[str]:
    """Studies with instances waiting to be staged and none received after ``quiet_since``."""
    rows = session.execute(
        select(DicomReceived.study_instance_uid, func.max(DicomReceived.received_at))
        .where(DicomReceived.status == ReceivedStatus.RECEIVED.value)
        .group_by(DicomReceived.study_instance_uid)
    )
    out = []
    for study, last in rows:
        if last.tzinfo is None:  # SQLite returns naive UTC
            from datetime import UTC

            last = last.replace(tzinfo=UTC)
        if last <= quiet_since:
            out.append(study)
    return out


def claim_study(session: Session, study_instance_uid: str, claim: str) -> list[str]:
    """Claim the study's waiting instances for a staging run; returns their paths."""
    rows = list(
        session.scalars(
            select(DicomReceived).where(
                DicomReceived.study_instance_uid == study_instance_uid,
                DicomReceived.status == ReceivedStatus.RECEIVED.value,
            )
        )
    )
    for r in rows:
        r.status, r.claim = ReceivedStatus.CLAIMED.value, claim
    session.flush()
    return [r.path for r in rows]


def mark_study_staged(session: Session, claim: str, job_id: int) -> None:
    session.execute(
        update(DicomReceived)
        .where(DicomReceived.claim == claim)
        .values(status=ReceivedStatus.STAGED.value, job_id=job_id)
    )


def release_study_claim(session: Session, claim: str) -> None:
    """A claim whose job was never created: its instances wait again."""
    session.execute(
        update(DicomReceived)
        .where(DicomReceived.claim == claim, DicomReceived.status == ReceivedStatus.CLAIMED.value)
        .values(status=ReceivedStatus.RECEIVED.value, claim=None)
    )


def open_claims(session: Session) -> list[str]:
    """Claims left by a listener that stopped between claiming a study and recording its job."""
    return list(
        session.scalars(
            select(DicomReceived.claim).where(DicomReceived.status == ReceivedStatus.CLAIMED.value).distinct()
        )
    )


def job_for_claim(session: Session, claim: str) -> int | None:
    """The job a listener claim created (its options carry the claim), if it was created."""
    for job_id, options in session.execute(
        select(Job.id, Job.options).where(Job.workload == "xray").order_by(Job.id.desc()).limit(500)
    ):
        if (options or {}).get("dicom_claim") == claim:
            return job_id
    return None


def received_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(DicomReceived.status, func.count()).group_by(DicomReceived.status))
    return {status: n for status, n in rows}
