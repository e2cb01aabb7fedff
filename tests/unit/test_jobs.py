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


def test_a_measuring_wait_lets_the_worker_store_its_metrics_first(sqlite_url, tmp_path, monkeypatch):
    from medbatch.db import repository as repo

    # Given a finished risk job whose worker has not stored its drift yet
    path = write_patients(tmp_path / "p.csv", "risk", 20, seed=5)
    job = submit_records(path, "risk", database_url=sqlite_url, send=lambda *a: None, batch_size=10).job_id
    with session_scope(sqlite_url) as s:
        batch_ids = list(s.scalars(select(Batch.id).where(Batch.job_id == job)))
    for batch_id in batch_ids:
        score_batch(batch_id, database_url=sqlite_url, max_attempts=3)
    with session_scope(sqlite_url) as s:
        repo.get_job(s, job).metrics = None  # as if the worker were still measuring
    worker_metrics = {"drift": {"available": False, "reason": "stored by the worker", "flagged": []}}
    naps = []

    def worker_stores_them(seconds):  # the worker writes its metrics during the producer's grace
        naps.append(seconds)
        if len(naps) == 3:
            with session_scope(sqlite_url) as s:
                repo.set_job_metrics(s, job, worker_metrics)

    monkeypatch.setattr(jobs.time, "sleep", worker_stores_them)
    # When a measuring wait ends, it takes the worker's figures instead of measuring them itself
    counts = jobs.wait_for_job(sqlite_url, job, timeout_s=60, measure_missing=True)
    assert counts["metrics"] == worker_metrics and len(naps) == 3
    # And with no worker storing anything, the grace runs out and the wait measures them itself
    with session_scope(sqlite_url) as s:
        repo.get_job(s, job).metrics = None
    naps.clear()
    monkeypatch.setattr(jobs, "MEASURE_GRACE_S", 0.0)
    counts = jobs.wait_for_job(sqlite_url, job, timeout_s=60, measure_missing=True)
    assert counts["metrics"]["drift"]["available"] is True and naps == []
