"""``medbatch.jobs``: how a job stands, and waiting for it, on SQLite without a broker."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from medbatch import jobs
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch
from medbatch.errors import NotFound
from medbatch.pipeline.tabular import score_batch
from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients


def test_wait_for_job_reports_each_look_and_returns_at_the_timeout_or_the_finish(sqlite_url, tmp_path):
    # Given a job staged with nothing sent, so no worker will finish it
    path = write_patients(tmp_path / "p.csv", "risk", 30, seed=4)
    job = submit_records(path, "risk", database_url=sqlite_url, send=lambda *a: None, batch_size=10).job_id
    seen = []
    # When waited for with no time to spare, it comes back as it stands, after one look reported
    counts = jobs.wait_for_job(sqlite_url, job, timeout_s=0, on_progress=seen.append)
    assert not jobs.is_finished(counts) and counts["status"] == "queued" and counts["items_done"] == 0
    assert [(c["status"], c["items_total"]) for c in seen] == [("queued", 30)]
    # When its batches are scored, the next wait finishes on its first look, labels counted
    with session_scope(sqlite_url) as s:
        batch_ids = list(s.scalars(select(Batch.id).where(Batch.job_id == job)))
    for batch_id in batch_ids:
        score_batch(batch_id, database_url=sqlite_url, max_attempts=3)
    seen.clear()
    counts = jobs.wait_for_job(sqlite_url, job, timeout_s=60, on_progress=seen.append)
    assert jobs.is_finished(counts) and counts["items_done"] == 30 and sum(counts["labels"].values()) == 30
    assert len(seen) == 1 and seen[0] == {k: v for k, v in counts.items() if k not in jobs.STATUS_ONLY_KEYS}
    assert jobs.wait_for_jobs(sqlite_url, [job, job], timeout_s=60) == {job: counts}


def test_job_status_of_an_unknown_job_raises_not_found(sqlite_url):
    with pytest.raises(NotFound, match="no job 424242"):
        jobs.job_status(sqlite_url, 424242)
