"""Job-end wake-ups (``medbatch.wakeups``) on a real Redis, and a wait they end (``medbatch.jobs``)."""

from __future__ import annotations

import threading
import time

import redis
from sqlalchemy import select

from medbatch import jobs
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch
from medbatch.pipeline.tabular import score_batch
from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients
from medbatch.wakeups import CHANNEL, JobEndListener, announce_job_end


def test_a_listener_hears_the_ends_of_its_jobs_only(redis_url):
    client = redis.Redis.from_url(redis_url)
    with JobEndListener(redis_url) as ends:
        assert ends.live
        # An end announced after the listener was made is heard, even before anyone waits
        announce_job_end(client, 7)
        assert ends.wait(30, {7}) is True
        # Another job's end, or a message that is not a job id, does not end a wait for job 7
        announce_job_end(client, 8)
        client.publish(CHANNEL, "not a job")
        assert ends.wait(0.3, {7}) is False
        # A wait for any job ends at any job's end
        announce_job_end(client, 9)
        assert ends.wait(30) is True


def test_without_a_reachable_redis_the_listener_just_sleeps(redis_url):
    for url in (None, "memory://", "redis://127.0.0.1:1/0"):
        with JobEndListener(url, connect_timeout_s=0.5) as ends:
            assert not ends.live
            assert ends.wait(0.05, {1}) is False
    # and announcing to a Redis that is away fails nothing
    announce_job_end(redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5), 1)


def test_an_announcement_ends_the_wait_at_once_and_the_database_decides(sqlite_url, redis_url, tmp_path):
    # Given a staged job nobody has scored yet, and a wait that would otherwise look only once an hour
    path = write_patients(tmp_path / "p.csv", "risk", 20, seed=6)
    job = submit_records(path, "risk", database_url=sqlite_url, send=lambda *a: None, batch_size=10).job_id
    looks: list[dict] = []
    out: dict = {}
    waiter = threading.Thread(
        target=lambda: out.update(
            jobs.wait_for_job(sqlite_url, job, poll_s=3600, on_progress=looks.append, broker_url=redis_url)
        ),
        daemon=True,
    )
    waiter.start()
    deadline = time.monotonic() + 30
    while not looks and time.monotonic() < deadline:  # its first look: the job still queued
        time.sleep(0.02)
    assert [c["status"] for c in looks] == ["queued"]
    client = redis.Redis.from_url(redis_url)
    # When an end is announced that the database does not show, the wait looks again and goes on waiting
    announce_job_end(client, job)
    deadline = time.monotonic() + 30
    while len(looks) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [c["status"] for c in looks] == ["queued", "queued"] and waiter.is_alive()
    # When the job's batches are scored and the end announced, the wait returns with the finished job
    with session_scope(sqlite_url) as s:
        batch_ids = list(s.scalars(select(Batch.id).where(Batch.job_id == job)))
    for batch_id in batch_ids:
        score_batch(batch_id, database_url=sqlite_url, max_attempts=3)
    announce_job_end(client, job)
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "the announcement did not end the wait"
    assert len(looks) == 3 and jobs.is_finished(out) and out["items_done"] == 20
