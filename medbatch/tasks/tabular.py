"""Celery adapter for the patient-record workloads: a batch ID in, a small dict out."""

from celery import shared_task

from medbatch.config import get_settings
from medbatch.pipeline import tabular
from medbatch.tasks import RETRY, DatabaseIdentity, RowId, refuses_foreign


@shared_task(name="medbatch.tabular.score_batch", bind=True, **RETRY)
@refuses_foreign
def score_batch(self, batch_id: RowId, *, db: DatabaseIdentity) -> dict:
    s = get_settings()
    return tabular.score_batch(batch_id, database_url=s.database_url, max_attempts=s.max_attempts, expected_db=db)
