"""The producer's side of a job: create it, stage its batches and rejected rows, record what was sent,
end the staging phase.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from medbatch.db.rawjson import RawJson
from medbatch.db.repository.auditing import audit
from medbatch.db.repository.batches import finish_job_if_done
from medbatch.db.repository.bulk import _dialect, bulk_insert, copy_buffer, copy_text, insert_ignore_conflicts
from medbatch.db.tables import (
    FINISHED_BATCH,
    Batch,
    BatchStatus,
    Item,
    ItemError,
    ItemStatus,
    Job,
    JobStatus,
    utcnow,
)


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


@dataclass(frozen=True)
class ItemColumns:
    """Validated rows of one CSV as columns: row ``i`` is item ``row:<source_rows[i]>`` of ``source_uri``.

    Staged with one COPY (PostgreSQL) or one INSERT ... SELECT over a JSON array (SQLite) per chunk instead of one
    dict per row;
    iterating it still gives the item dicts :func:`stage_batch` takes (tests, small paths).
    """

    source_uri: str
    source_rows: np.ndarray  # int64 line numbers
    patient_refs: list[str | None]
    payloads: list[str]  # JSON text of the validated inputs, one per row

    def __len__(self) -> int:
        return len(self.payloads)

    def __getitem__(self, part: slice) -> ItemColumns:
        return ItemColumns(self.source_uri, self.source_rows[part], self.patient_refs[part], self.payloads[part])

    def __add__(self, other: ItemColumns) -> ItemColumns:
        if not len(self):
            return other
        if other.source_uri != self.source_uri:
            raise ValueError("items of two sources cannot be joined")
        return ItemColumns(
            self.source_uri,
            np.concatenate([self.source_rows, other.source_rows]),
            self.patient_refs + other.patient_refs,
            self.payloads + other.payloads,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row, ref, payload in zip(self.source_rows.tolist(), self.patient_refs, self.payloads, strict=True):
            yield {
                "item_key": f"row:{row}",
                "source_uri": self.source_uri,
                "source_row": row,
                "patient_ref": ref,
                "payload": RawJson(payload),
            }


Items = Sequence[dict[str, Any]] | ItemColumns


def stage_batch(session: Session, *, job_id: int, seq: int, queue: str, items: Items) -> int:
    """Stage one batch of validated items (dicts with item_key, source_uri, source_row, patient_ref, payload,
    or :class:`ItemColumns`).

    Returns:
        The new batch id; its status is ``pending`` until :func:`mark_batches_queued`.
    """
    return stage_batches(
        session, job_id=job_id, first_seq=seq, queue=queue, items=items, batch_size=max(len(items), 1)
    )[0]


def stage_batches(
    session: Session, *, job_id: int, first_seq: int, queue: str, items: Items, batch_size: int
) -> list[int]:
    """Stage ``items`` as consecutive batches of ``batch_size`` (numbered from ``first_seq``): one INSERT of
    the batch rows, then one COPY (PostgreSQL) or one INSERT ... SELECT (SQLite) of every item.

    Returns:
        The new batch ids in order; their status is ``pending`` until :func:`mark_batches_queued`.
    """
    sizes = [min(batch_size, len(items) - start) for start in range(0, len(items), batch_size)] or [0]
    rows = [
        {"job_id": job_id, "seq": first_seq + k, "queue": queue, "item_count": n, "status": BatchStatus.PENDING.value}
        for k, n in enumerate(sizes)
    ]
    columns = isinstance(items, ItemColumns) and len(items)
    sqlite_rows = None
    if columns and _dialect(session) == "sqlite":  # built before the first write takes SQLite's lock
        sqlite_rows = _sqlite_item_rows(items, np.repeat(np.arange(first_seq, first_seq + len(sizes)), sizes))
    by_seq = dict(
        (seq, bid)
        for bid, seq in session.execute(
            insert(Batch).returning(Batch.id, Batch.seq, sort_by_parameter_order=True), rows
        )
    )
    batch_ids = [by_seq[r["seq"]] for r in rows]
    if not len(items):
        return batch_ids
    if sqlite_rows is not None:
        session.connection().exec_driver_sql(_SQLITE_ITEMS_INSERT, (job_id, job_id, items.source_uri, sqlite_rows))
        return batch_ids
    owners = np.repeat(np.asarray(batch_ids, dtype=np.int64), sizes)
    if columns:
        _stage_item_columns(session, job_id, owners, items)
        return batch_ids
    bulk_insert(
        session,
        Item.__table__,
        [
            {
                "job_id": job_id,
                "batch_id": int(owner),
                "item_key": it["item_key"],
                "source_uri": it["source_uri"],
                "source_row": it.get("source_row"),
                "patient_ref": it.get("patient_ref"),
                "payload": it["payload"],
                "status": ItemStatus.PENDING.value,
            }
            for owner, it in zip(owners.tolist(), items, strict=True)
        ],
    )
    return batch_ids


_ITEM_COLUMNS = "job_id, batch_id, item_key, source_uri, source_row, patient_ref, payload, status"

#: SQLite: a chunk's items in one statement from one JSON array of ``[batch seq, line, patient id, payload]``
#: rows. An executemany needs the GIL back after every row, and the producer's reader thread holds it for
#: milliseconds at a time while it parses the next chunk, so 10,000 inserts that take 25 ms alone took up to seconds,
#: all of it under SQLite's one write lock that the workers wait for. This statement runs in C from start to end
#: (Python's sqlite3 releases the GIL around it). ``json_extract``, not ``->>``: SQLite 3.38 added the operator.
_SQLITE_ITEMS_INSERT = (
    f"INSERT INTO items ({_ITEM_COLUMNS}) "
    "SELECT ?, (SELECT b.id FROM batches b WHERE b.job_id = ? AND b.seq = json_extract(r.value, '$[0]')), "
    "'row:' || json_extract(r.value, '$[1]'), ?, json_extract(r.value, '$[1]'), json_extract(r.value, '$[2]'), "
    f"json_extract(r.value, '$[3]'), '{ItemStatus.PENDING.value}' FROM json_each(?) AS r ORDER BY r.key"
)


def _sqlite_item_rows(items: ItemColumns, seqs: np.ndarray) -> str | None:
    """The JSON array :data:`_SQLITE_ITEMS_INSERT` reads: ``[batch seq, line, patient id, payload text]`` a row;
    None when a text holds a NUL character (SQLite's ``json_extract`` would end the text there)."""
    texts = (items.source_uri, "".join(filter(None, items.patient_refs)), "".join(items.payloads))
    if any("\x00" in t for t in texts):
        return None
    rows = zip(seqs.tolist(), items.source_rows.tolist(), items.patient_refs, items.payloads, strict=True)
    return json.dumps(list(rows))


def _stage_item_columns(session: Session, job_id: int, owners: np.ndarray, items: ItemColumns) -> None:
    pending = ItemStatus.PENDING.value
    rows = items.source_rows.tolist()
    if _dialect(session) == "postgresql":
        source = copy_text([items.source_uri])[0]
        refs = copy_text(items.patient_refs)
        payloads = copy_text(items.payloads)
        buffer = "".join(
            [
                f"{job_id}\t{owner}\trow:{row}\t{source}\t{row}\t{ref}\t{payload}\t{pending}\n"
                for owner, row, ref, payload in zip(owners.tolist(), rows, refs, payloads, strict=True)
            ]
        )
        copy_buffer(session, "items", _ITEM_COLUMNS, buffer)
        return
    # SQLite, a chunk whose text holds a NUL character, which json_extract would cut short: row by row.
    session.connection().exec_driver_sql(
        f"INSERT INTO items ({_ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (job_id, owner, f"row:{row}", items.source_uri, row, ref, payload, pending)
            for owner, row, ref, payload in zip(owners.tolist(), rows, items.patient_refs, items.payloads, strict=True)
        ],
    )


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


def _error_key(key: str) -> str:
    """``key``, or its hash when longer than the column (a long path, a PACS instance URI)."""
    if len(key) <= 160:
        return key
    import hashlib

    return "validation:sha256:" + hashlib.sha256(key.encode()).hexdigest()


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
            "error_key": _error_key(f"validation:{e['source_uri']}:{e.get('source_row')}"),
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


def mark_batches_queued(session: Session, batch_ids: Sequence[int], *, sent_at: datetime | None = None) -> None:
    """Record that messages for these batches were sent, at ``sent_at`` (default: now): those still pending become
    ``queued``. One a worker claimed first is left alone (its claim set its ``queued_at``): touching it here would
    wait for that worker's transaction, which waits for the job row this caller may hold (a deadlock).
    """
    if not batch_ids:
        return
    session.execute(
        update(Batch)
        .where(Batch.id.in_(batch_ids), Batch.status == BatchStatus.PENDING.value)
        .values(status=BatchStatus.QUEUED.value, queued_at=sent_at or utcnow())
    )


def mark_batches_resent(session: Session, batch_ids: Sequence[int]) -> None:
    """Record a re-send (resume, reconcile): unfinished batches go back to ``queued`` with a fresh time."""
    if batch_ids:
        session.execute(
            update(Batch)
            .where(Batch.id.in_(batch_ids), Batch.status.not_in(FINISHED_BATCH))
            .values(status=BatchStatus.QUEUED.value, queued_at=utcnow())
        )


def committed_chunk(
    session: Session, *, job_id: int, first_seq: int, batches: int, first_rejection: dict[str, Any] | None
) -> list[int] | None:
    """After a chunk's staging transaction failed, whether it committed all the same (the connection was lost
    after the server committed): the ids of its ``batches`` batches from ``first_seq`` on,
    or ``[]`` for a chunk of rejections only whose first one is recorded; None when nothing of it is there.
    One transaction wrote them all, so one of them found means all of them.
    """
    if batches:
        ids = list(
            session.scalars(
                select(Batch.id)
                .where(Batch.job_id == job_id, Batch.seq >= first_seq, Batch.seq < first_seq + batches)
                .order_by(Batch.seq)
            )
        )
        return ids or None
    if first_rejection is not None:
        key = _error_key(f"validation:{first_rejection['source_uri']}:{first_rejection.get('source_row')}")
        found = session.scalar(select(ItemError.id).where(ItemError.job_id == job_id, ItemError.error_key == key))
        return [] if found is not None else None
    return None


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
