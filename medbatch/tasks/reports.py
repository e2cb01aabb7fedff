"""Celery adapters for report generation: IDs in, a small dict out."""

from celery import shared_task

from medbatch.config import get_settings
from medbatch.errors import PermanentError
from medbatch.pipeline import reports
from medbatch.worker.providers import provider_for, shared_limiter

RETRY = {
    "autoretry_for": (Exception,),
    "dont_autoretry_for": (PermanentError,),
    "retry_backoff": 2,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 20,
}


@shared_task(name="medbatch.reports.generate_batch", bind=True, **RETRY)
def generate_batch(self, batch_id: int) -> dict:
    s = get_settings()
    return reports.generate_batch(
        batch_id,
        database_url=s.database_url,
        max_attempts=s.max_attempts,
        provider_for=lambda name, model: provider_for(s, name, model),
        limiter=shared_limiter(s),
        policy=reports.CallPolicy(max_attempts=s.llm_max_attempts),
    )


@shared_task(name="medbatch.reports.submit_provider_batch", bind=True, **RETRY)
def submit_provider_batch(self, job_id: int) -> dict:
    s = get_settings()
    out = reports.submit_provider_batch(
        job_id, database_url=s.database_url, provider_for=lambda n, m: provider_for(s, n, m)
    )
    if out["provider_batch_id"]:
        poll_provider_batch.apply_async(args=[job_id], countdown=s.report_poll_interval_s)
    return out


@shared_task(name="medbatch.reports.poll_provider_batch", bind=True, **RETRY)
def poll_provider_batch(self, job_id: int) -> dict:
    s = get_settings()
    out = reports.poll_provider_batch(
        job_id, database_url=s.database_url, provider_for=lambda n, m: provider_for(s, n, m)
    )
    if not out["done"]:
        poll_provider_batch.apply_async(args=[job_id], countdown=s.report_poll_interval_s)
    return out
