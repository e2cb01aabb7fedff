"""Celery adapter for sending an X-ray job's findings back to the PACS: a job ID in, a small dict out."""

from celery import shared_task

from medbatch.config import get_settings
from medbatch.interop import delivery
from medbatch.tasks import RETRY, DatabaseIdentity, RowId, refuses_foreign

RETURN_TASK = "medbatch.dicom.return_job"


@shared_task(name=RETURN_TASK, bind=True, **RETRY)
@refuses_foreign
def return_job(self, job_id: RowId, *, db: DatabaseIdentity) -> dict:
    s = get_settings()
    return delivery.return_job(
        job_id,
        database_url=s.database_url,
        configured_destination=s.pacs_return_to,
        access=s.pacs_access(),
        calling_aet=s.dicom_aet,
        expected_db=db,
    )


def queue_return(task, batch_id: int, db: str) -> None:
    """After an imaging batch: queue the job's automatic return once the job is finished (IDs only)."""
    s = get_settings()
    job_id = delivery.return_due(s.database_url, batch_id, s.pacs_return)
    if job_id is not None:
        task.app.send_task(RETURN_TASK, args=[job_id], kwargs={"db": db}, queue="imaging", argsrepr=f"[{job_id}]")
