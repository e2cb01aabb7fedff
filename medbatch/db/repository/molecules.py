"""A molecule job's rounds: what its last finishing batch needs to know, under the job's row lock, to decide
whether the job has delivered enough or must stage a top-up round; and how the job's end stores its outcomes.

Deliverable molecules are results whose ``detail.outcome`` is ``candidate`` (written by the batch) or, once
the job has been finalised, ``delivered`` / ``duplicate`` / ``surplus``; ``detail.canonical`` is the
molecule. Both are read with the JSON operators of either backend (``->>`` on PostgreSQL, ``json_extract``
on SQLite); no column of their own is needed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from medbatch.db.repository.batches import update_result_details
from medbatch.db.repository.bulk import _dialect
from medbatch.db.tables import FINISHED_BATCH, Batch, ItemError, Job, Result

#: Outcomes a sample keeps from its own batch and that the job's end turns into delivered/duplicate/surplus.
DELIVERABLE = ("candidate", "delivered", "duplicate", "surplus")


@dataclass(frozen=True)
class RoundState:
    """A molecule job as its last finishing batch sees it, under the job's row lock."""

    status: str
    options: dict[str, Any]
    sampled: int  # sample slots staged so far (``items_total``); the next top-up slot is this one
    others_unfinished: int  # batches other than the one being completed that are not done or dead
    errors: int  # item errors (a failed or dead-lettered batch): no top-up for a job that is failing
    next_seq: int
    queue: str  # the queue of the batch being completed; a top-up round goes to the same one


def lock_round(session: Session, job_id: int, batch_id: int) -> RoundState:
    """Lock the job row (``FOR NO KEY UPDATE`` on PostgreSQL, as ``finish_job_if_done`` does, so two batches
    ending at once are serialised and exactly one of them sees itself last) and read its round."""
    stmt = select(Job).where(Job.id == job_id)
    if _dialect(session) == "postgresql":
        stmt = stmt.with_for_update(key_share=True)
    job = session.scalars(stmt).one()
    others = session.scalar(
        select(func.count())
        .select_from(Batch)
        .where(Batch.job_id == job_id, Batch.id != batch_id, Batch.status.not_in(FINISHED_BATCH))
    )
    errors = session.scalar(select(func.count()).select_from(ItemError).where(ItemError.job_id == job_id))
    last_seq = session.scalar(select(func.max(Batch.seq)).where(Batch.job_id == job_id))
    queue = session.scalar(select(Batch.queue).where(Batch.id == batch_id))
    return RoundState(
        status=job.status,
        options=dict(job.options or {}),
        sampled=int(job.items_total),
        others_unfinished=int(others or 0),
        errors=int(errors or 0),
        next_seq=0 if last_seq is None else int(last_seq) + 1,
        queue=str(queue),
    )


def deliverable_molecules(session: Session, job_id: int) -> set[str]:
    """The distinct canonical SMILES of the job's deliverable samples written so far."""
    outcome = Result.detail["outcome"].as_string()
    canonical = Result.detail["canonical"].as_string()
    rows = session.execute(
        select(canonical).distinct().where(Result.job_id == job_id, outcome.in_(DELIVERABLE), canonical.is_not(None))
    )
    return {row[0] for row in rows}


#: The keys a job's end changes on most samples (the candidates it delivers, or finds repeated or surplus).
OUTCOME_KEYS = frozenset({"outcome", "reason"})


def write_outcomes(session: Session, updates: dict[int, tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Store the job end's new details (result id -> (stored detail, new detail)).

    On PostgreSQL a change of ``outcome``/``reason`` alone (nearly every one: a candidate becomes delivered)
    is one ``UPDATE ... SET detail = detail || patch WHERE id = ANY(ids)`` per distinct patch, instead of
    sending 10,000 whole details; the stored detail ends exactly as the new one. Any other change (a
    ``duplicate_of``, a key removed, SQLite) replaces the detail (:func:`update_result_details`).
    """
    grouped: dict[str, list[int]] = defaultdict(list)
    whole: dict[int, dict[str, Any]] = {}
    postgres = _dialect(session) == "postgresql"
    for rid, (old, new) in updates.items():
        changed = {k for k in new.keys() | old.keys() if k not in old or k not in new or old[k] != new[k]}
        if postgres and changed <= new.keys() and changed <= OUTCOME_KEYS:
            grouped[json.dumps({k: new[k] for k in sorted(changed)})].append(rid)
        else:
            whole[rid] = new
    for patch, ids in grouped.items():
        session.execute(
            text("UPDATE results SET detail = detail || CAST(:patch AS jsonb) WHERE id = ANY(:ids)"),
            {"patch": patch, "ids": ids},
        )
    update_result_details(session, whole)
