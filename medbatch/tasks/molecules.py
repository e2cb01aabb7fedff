"""Celery adapter for the molecule workload: a batch ID in, a small dict out."""

from celery import shared_task

from medbatch.config import get_settings
from medbatch.pipeline import molecules
from medbatch.producer.send import celery_sender
from medbatch.tasks import RETRY, DatabaseIdentity, RowId, refuses_foreign


@shared_task(name="medbatch.molecules.generate_batch", bind=True, **RETRY)
@refuses_foreign
def generate_batch(self, batch_id: RowId, *, db: DatabaseIdentity) -> dict:
    s = get_settings()

    def send(task: str, queue: str, staged_id: int) -> None:  # a top-up round the batch staged
        celery_sender(self.app, s.database_url)(task, queue, staged_id)

    return molecules.generate_batch(
        batch_id, database_url=s.database_url, max_attempts=s.max_attempts, expected_db=db, send=send
    )
