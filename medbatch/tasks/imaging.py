"""Celery adapter for the X-ray workload: a batch ID in, a small dict out."""

from celery import shared_task

from medbatch.config import get_settings
from medbatch.pipeline import imaging
from medbatch.tasks import RETRY, DatabaseIdentity, RowId, refuses_foreign
from medbatch.tasks.dicom import queue_return


@shared_task(name="medbatch.imaging.classify_batch", bind=True, **RETRY)
@refuses_foreign
def classify_batch(self, batch_id: RowId, *, db: DatabaseIdentity) -> dict:
    s = get_settings()
    done = imaging.classify_batch(
        batch_id, database_url=s.database_url, max_attempts=s.max_attempts, options=imaging_options(s), expected_db=db
    )
    queue_return(self, batch_id, db)  # MEDBATCH_PACS_RETURN: findings of a finished PACS job go back
    return done


def imaging_options(s) -> imaging.ImagingOptions:
    return imaging.ImagingOptions(
        results_dir=s.results_dir,
        decode_threads=s.imaging_decode_threads,
        predict_batch=s.imaging_predict_batch,
        max_pixels=s.imaging_max_pixels,
        max_bytes=s.imaging_max_file_mb * 2**20,
        modalities=s.modality_list(),
        child_memory_bytes=s.worker_max_memory_per_child_mb * 2**20,
        pacs=s.pacs_access(),
    )
