"""Reading a job's results for the FHIR export (read-only), streamed: memory stays flat at any job size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from medbatch.db.repository.queries import RESULT_COLUMNS, select_job_results
from medbatch.db.tables import Item


def iter_fhir_rows(
    session: Session, job_id: int, *, with_payload: bool = False, chunk: int = 5_000
) -> Iterator[dict[str, Any]]:
    """Every result of a job, in input order, with what a FHIR resource needs and nothing more.

    ``with_payload`` adds the item's payload (X-ray jobs: where the image is, to find its Study Instance UID);
    report jobs carry the drafted text and its review flag.
    """
    cols = [Item.id, Item.patient_ref, *RESULT_COLUMNS]
    if with_payload:
        cols.append(Item.payload)
    stmt = select_job_results(job_id, *cols, chunk=chunk)
    for row in session.execute(stmt):
        yield {
            "item_id": row.id,
            "patient_ref": row.patient_ref,
            "label": row.label,
            "score": row.score,
            "model_name": row.model_name,
            "model_version": row.model_version,
            "detail": row.detail,
            "created_at": row.created_at,
            "report_text": row.text,
            "requires_review": row.requires_review if row.requires_review is not None else True,
            "payload": row.payload if with_payload else None,
        }
