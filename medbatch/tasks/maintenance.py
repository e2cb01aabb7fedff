"""Periodic upkeep, run by beat: re-send batches stuck past their deadline."""

from celery import shared_task

from medbatch.config import get_settings
from medbatch.producer.enqueue import celery_sender
from medbatch.producer.enqueue import reconcile as reconcile_jobs


@shared_task(name="medbatch.maintenance.reconcile", bind=True, ignore_result=True)
def reconcile(self) -> dict:
    s = get_settings()
    sent = reconcile_jobs(
        database_url=s.database_url, send=celery_sender(self.app, s.database_url), older_than_s=s.reconcile_after_s
    )
    return {"resent": {str(k): v for k, v in sent.items()}}
