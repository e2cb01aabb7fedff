"""The tabular worker's bulk path: a batch's pending inputs read with one query, its results written with
one COPY (PostgreSQL) or one executemany (SQLite), idempotently (``results.item_id`` is unique).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from medbatch.db.rawjson import records_frame
from medbatch.db.repository.batches import complete_batch
from medbatch.db.repository.bulk import _dialect, copy_ignore_conflicts, copy_text
from medbatch.db.tables import Item, ItemStatus, Result, utcnow

if TYPE_CHECKING:
    import pandas as pd


class PendingItem(NamedTuple):
    id: int
    source_uri: str
    source_row: int | None
    patient_ref: str | None


@dataclass(frozen=True)
class PendingInputs:
    """A batch's pending items as columns, in staging order; ``payloads`` are the JSON texts as stored."""

    ids: list[int]
    source_uris: list[str]
    source_rows: list[int | None]
    patient_refs: list[str | None]
    payloads: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def frame(self) -> pd.DataFrame:
        """The payloads as one DataFrame, a row per item in order (:func:`medbatch.db.rawjson.records_frame`)."""
        return records_frame(self.payloads)

    def item(self, i: int) -> PendingItem:
        """Row ``i`` with the attributes a failure record takes."""
        return PendingItem(self.ids[i], self.source_uris[i], self.source_rows[i], self.patient_refs[i])

    def __iter__(self) -> Iterator[PendingItem]:
        return (self.item(i) for i in range(len(self)))


def load_pending_inputs(session: Session, batch_id: int) -> PendingInputs:
    """The batch's items still waiting for a result, as columns, with one query (payloads as JSON text).

    Read through the driver's own cursor: SQLAlchemy's result rows cost six times the query for 10,000 items. On
    PostgreSQL in binary format: the ids and line numbers arrive as integers, not digits to parse (10.3 -> 8.0 ms).
    """
    postgres = _dialect(session) == "postgresql"
    mark = "%s" if postgres else "?"
    raw = session.connection().connection.dbapi_connection
    cursor = raw.cursor(binary=True) if postgres else raw.cursor()
    try:
        cursor.execute(
            "SELECT id, source_uri, source_row, patient_ref, CAST(payload AS TEXT) FROM items "
            f"WHERE batch_id = {mark} AND status = {mark} ORDER BY id",
            (batch_id, ItemStatus.PENDING.value),
        )
        rows = cursor.fetchall()
    finally:
        cursor.close()
    if not rows:
        return PendingInputs([], [], [], [], [])
    ids, uris, lines, refs, payloads = (list(c) for c in zip(*rows, strict=True))
    return PendingInputs(ids, uris, lines, refs, payloads)


@dataclass(frozen=True)
class ScoredColumns:
    """One batch's model outputs as columns: ``probabilities[i]`` in ``classes`` order, for item ``item_ids[i]``.

    ``detail`` of each result is ``{"probabilities": {class: p, ...}, "threshold": threshold}``, the
    probabilities rounded to 6 decimals, written as the same JSON text ``json.dumps`` makes.
    """

    model_name: str
    model_version: str
    item_ids: Sequence[int]
    labels: Sequence[str]
    scores: np.ndarray
    probabilities: np.ndarray
    classes: Sequence[str]
    threshold: float | None

    def __len__(self) -> int:
        return len(self.item_ids)

    def _detail_template(self) -> str:
        """The ``detail`` JSON with a ``%r`` for each class's probability (one %-template for every row: a join
        of per-class pieces per row cost 5 s of a million)."""
        keys = [json.dumps(str(c)).replace("%", "%%") for c in self.classes]  # JSON keys are strings
        threshold = json.dumps(self.threshold).replace("%", "%%")
        return '{"probabilities": {' + ", ".join(f"{k}: %r" for k in keys) + '}, "threshold": ' + threshold + "}"

    def _rounded(self) -> list[list[float]]:
        """The probabilities rounded to 6 decimals, a Python list per class (``%r`` of a numpy float is not a
        number)."""
        return self.probabilities.round(6).T.tolist()

    def details(self) -> list[str]:
        return list(map(self._detail_template().__mod__, zip(*self._rounded(), strict=True)))

    def copy_lines(self, job_id: int, stamp: str) -> str:
        """The rows of ``results`` (:data:`_RESULT_COLUMNS`) in PostgreSQL's text COPY format, from one
        %-template per row: the constant fields and the detail's keys escaped once, the floats as ``%r``
        (no tab, backslash or line break in either), each label through :func:`copy_text`."""
        fixed = copy_text([self.model_name, self.model_version, stamp, self._detail_template()])
        name, version, stamp, detail = (f.replace("%", "%%") if i < 3 else f for i, f in enumerate(fixed))
        row = f"%s\t{job_id}\t{name}\t{version}\t%s\t%r\t{detail}\t{stamp}\n"
        labels = copy_text(list(self.labels))
        columns = zip(self.item_ids, labels, self.scores.tolist(), *self._rounded(), strict=True)
        return "".join(map(row.__mod__, columns))


_RESULT_COLUMNS = "item_id, job_id, model_name, model_version, label, score, detail, created_at"


def write_scored_batch(
    session: Session, *, batch_id: int, job_id: int, scored: ScoredColumns, failures: Sequence[dict[str, Any]] = ()
) -> bool:
    """Write a batch's results in bulk, skipping items that already have one, mark the rest of its pending items
    done and the batch done (:func:`complete_batch` records ``failures``), all in the caller's transaction.

    Returns:
        Whether this batch finished its job.
    """
    if len(scored):
        now = utcnow()
        if _dialect(session) == "postgresql":
            buffer = scored.copy_lines(job_id, now.isoformat())
            copy_ignore_conflicts(session, Result.__table__, _RESULT_COLUMNS, buffer, ["item_id"])
        else:
            dialect = session.get_bind().dialect  # the column type's whole chain: SQLite's text, not a datetime
            stamp = Result.__table__.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)(now)
            session.connection().exec_driver_sql(
                f"INSERT INTO results ({_RESULT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (item_id) DO NOTHING",
                [
                    (i, job_id, scored.model_name, scored.model_version, label, score, detail, stamp)
                    for i, label, score, detail in zip(
                        scored.item_ids, scored.labels, scored.scores.tolist(), scored.details(), strict=True
                    )
                ],
            )
        # Every item of the batch that did not fail now has a result (written above or by an earlier attempt).
        # Marked before complete_batch locks the batch and job rows, so those locks are held the shortest time
        # (every finishing batch of the job queues on the job row) and a wait here holds neither.
        done = update(Item).where(Item.batch_id == batch_id, Item.status == ItemStatus.PENDING.value)
        if failures:
            done = done.where(Item.id.not_in([f["item_id"] for f in failures]))
        session.execute(done.values(status=ItemStatus.DONE.value))
    return complete_batch(session, batch_id=batch_id, job_id=job_id, results=(), failures=failures)
