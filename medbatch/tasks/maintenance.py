"""Periodic upkeep, run by beat: re-send stuck batches; take the nightly inbox; write the morning summary."""

from celery import shared_task

from medbatch.config import get_settings
from medbatch.producer.recovery import reconcile as reconcile_jobs
from medbatch.producer.send import celery_sender


@shared_task(name="medbatch.maintenance.reconcile", bind=True, ignore_result=True)
def reconcile(self) -> dict:
    s = get_settings()
    sent = reconcile_jobs(
        database_url=s.database_url, send=celery_sender(self.app, s.database_url), older_than_s=s.reconcile_after_s
    )
    return {"resent": {str(k): v for k, v in sent.items()}}


@shared_task(name="medbatch.maintenance.nightly", bind=True, ignore_result=True)
def nightly(self) -> dict:
    """Submit what arrived in the inbox (without waiting: beat must not hold a worker for the night)."""
    from medbatch.nightly import NightlyConfig, run_nightly

    s = get_settings()
    send = celery_sender(self.app, s.database_url)
    return run_nightly(s.nightly_inbox, NightlyConfig.from_settings(s), send, wait=False).as_dict()


@shared_task(name="medbatch.maintenance.morning_summary", bind=True, ignore_result=True)
def morning_summary(self) -> dict:
    """Write last night's HTML summary under ``MEDBATCH_RESULTS_DIR/nights/``."""
    from datetime import UTC, datetime

    from medbatch.nightly import night_of
    from medbatch.summary import write_night

    s = get_settings()
    night = night_of(datetime.now(UTC), s.timezone)
    return {"summary": str(write_night(s.database_url, night, s.results_dir / "nights", s.timezone))}
