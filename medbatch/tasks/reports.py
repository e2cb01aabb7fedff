"""Celery adapters for report generation: IDs in, a small dict out."""

from celery import shared_task

from medbatch.config import get_settings
from medbatch.pipeline import reports
from medbatch.tasks import RETRY, DatabaseIdentity, RowId, refuses_foreign
from medbatch.worker.providers import provider_for, shared_limiter


@shared_task(name="medbatch.reports.generate_batch", bind=True, **RETRY)
@refuses_foreign
def generate_batch(self, batch_id: RowId, *, db: DatabaseIdentity) -> dict:
    s = get_settings()
    return reports.generate_batch(
        batch_id,
        database_url=s.database_url,
        max_attempts=s.max_attempts,
        provider_for=lambda name, model: provider_for(s, name, model),
        limiter=shared_limiter(s),
        policy=reports.CallPolicy(max_attempts=s.llm_max_attempts),
        expected_db=db,
    )


@shared_task(name="medbatch.reports.submit_provider_batch", bind=True, **RETRY)
@refuses_foreign
def submit_provider_batch(self, job_id: RowId, *, db: DatabaseIdentity) -> dict:
    s = get_settings()
    out = reports.submit_provider_batch(
        job_id, database_url=s.database_url, provider_for=lambda n, m: provider_for(s, n, m), expected_db=db
    )
    if out["provider_batch_id"]:
        poll_provider_batch.apply_async(args=[job_id], kwargs={"db": db}, countdown=s.report_poll_interval_s)
    return out


@shared_task(name="medbatch.reports.poll_provider_batch", bind=True, **RETRY)
@refuses_foreign
def poll_provider_batch(self, job_id: RowId, *, db: DatabaseIdentity) -> dict:
    s = get_settings()
    out = reports.poll_provider_batch(
        job_id, database_url=s.database_url, provider_for=lambda n, m: provider_for(s, n, m), expected_db=db
    )
    if not out["done"]:
        poll_provider_batch.apply_async(args=[job_id], kwargs={"db": db}, countdown=s.report_poll_interval_s)
    return out
