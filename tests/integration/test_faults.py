"""Faults with real processes: a worker SIGKILLed mid-job loses and doubles nothing; a poison batch is dead-lettered."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from medbatch import jobs
from medbatch.db.session import session_scope
from medbatch.db.tables import Item, ItemStatus, Result
from medbatch.producer.recovery import reconcile
from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients
from tests.helpers import wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]


def _results(db_url: str, job_id: int) -> int:
    with session_scope(db_url) as s:
        return s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))


def test_worker_killed_three_times_mid_job(db_url, sender, start_worker, tmp_path):
    # Given a job of many batches and workers whose lost messages come back after 10 s. Small batches: a fresh
    # worker runs a 1,000-row batch in 0.02 s, and with 20 of them one worker could finish the job between two
    # kills (while the test still waited for it to answer a ping), leaving no third kill to make.
    env = {"MEDBATCH_VISIBILITY_TIMEOUT_S": "10"}
    path = write_patients(tmp_path / "big.csv", "risk", 20_000, seed=8)
    worker = start_worker("tabular", env=env)
    summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=100)
    # When the worker is SIGKILLed (with its pool children) three times while it works
    kills = 0
    seen = 0
    deadline = time.monotonic() + 120
    while kills < 3 and time.monotonic() < deadline:
        now = _results(db_url, summary.job_id)
        if now > seen:
            worker.kill()
            kills += 1
            seen = now
            worker = start_worker("tabular", env=env)
        time.sleep(0.05)
    assert kills == 3
    # The batches the dead workers held come back two ways that race: Redis re-delivers their unacked
    # messages (kombu checks only every ~100 s once the visibility timeout has passed), and the
    # periodic reconciler re-sends batches stuck past its deadline (every 5 s here, as beat would).
    # Either way, nothing may be doubled.
    counts = jobs.wait_for_job(
        db_url,
        summary.job_id,
        timeout_s=180,
        poll_s=5,
        on_progress=lambda c: jobs.is_finished(c) or reconcile(database_url=db_url, send=sender, older_than_s=5),
    )
    # Then every item ends with exactly one result
    with session_scope(db_url) as s:
        results = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == summary.job_id))
        distinct = s.scalar(select(func.count(func.distinct(Result.item_id))).where(Result.job_id == summary.job_id))
        pending = s.scalar(
            select(func.count())
            .select_from(Item)
            .where(Item.job_id == summary.job_id, Item.status != ItemStatus.DONE.value)
        )
    assert counts["status"] == "completed"
    assert results == distinct == summary.items_staged == 20_000
    assert pending == 0


@pytest.fixture
def private_redis():
    """A Redis of this test's own (so it can be killed), restartable empty on the same port."""
    import socket

    from medbatch.worker.embedded import start_local_redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    servers = [start_local_redis(url)]

    def crash_and_restart_empty() -> None:
        servers[-1].process.kill()  # a crash, not a shutdown: nothing is saved
        servers[-1].process.wait()
        servers[-1].stop()
        servers.append(start_local_redis(url))

    yield url, crash_and_restart_empty
    for server in servers:
        server.stop()


def test_redis_loses_its_data_mid_job_and_the_reconciler_recovers(db_url, private_redis, service_env, tmp_path):
    from medbatch.config import Settings
    from medbatch.producer.recovery import reconcile
    from medbatch.producer.send import celery_sender
    from medbatch.worker.app import create_app
    from medbatch.worker.processes import start_worker, wait_until_ready

    # Given a worker in the middle of a job on a broker that then crashes and comes back empty
    url, crash = private_redis
    app = create_app(Settings(broker_url=url, database_url=db_url))
    env = {**service_env, "MEDBATCH_BROKER_URL": url}
    workers = [start_worker("tabular", env=env, log_path=tmp_path / "w1.log")]
    try:
        wait_until_ready(app, workers[0], timeout_s=90)
        path = write_patients(tmp_path / "big.csv", "risk", 60_000, seed=3)
        summary = submit_records(path, "risk", database_url=db_url, send=celery_sender(app, db_url), batch_size=2_000)
        assert reconcile(database_url=db_url, send=celery_sender(app, db_url), older_than_s=3600) == {}  # not stuck yet
        deadline = time.monotonic() + 60
        while _results(db_url, summary.job_id) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        crash()  # every message still queued is gone
        time.sleep(1)
        done_before = _results(db_url, summary.job_id)
        assert 0 < done_before < summary.items_staged
        # When a fresh worker joins (as a restart policy would start one) and the reconciler runs
        workers.append(start_worker("tabular", env=env, log_path=tmp_path / "w2.log"))
        wait_until_ready(app, workers[1], timeout_s=90)
        sent = reconcile(database_url=db_url, send=celery_sender(app, db_url), older_than_s=0)
        # Then the lost batches are re-sent and every item ends with exactly one result
        assert sent and sent[summary.job_id] >= 1
        counts = wait_for_job(db_url, summary.job_id, timeout_s=120)
        assert counts["status"] == "completed"
        assert _results(db_url, summary.job_id) == summary.items_staged == 60_000
        assert reconcile(database_url=db_url, send=celery_sender(app, db_url), older_than_s=0) == {}
    finally:
        for w in workers:
            w.kill()  # cold: nothing is asserted about shutdown
        app.close()


def test_poison_batch_that_kills_its_worker_every_time_is_dead_lettered(db_url, sender, start_worker, tmp_path):
    import signal

    import psutil
    from sqlalchemy import create_engine

    from medbatch.db.tables import Batch, BatchStatus, ItemError

    # Given a job of ten batches, one of which kills whichever worker child takes it (as a decoder
    # segfaulting on one file would), and at most three attempts per batch
    max_attempts = 3
    path = write_patients(tmp_path / "p.csv", "risk", 1_000, seed=4)
    summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=100)
    with session_scope(db_url) as s:
        poison = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id, Batch.seq == 3))
    # A row lock on the poison batch's items holds its worker inside the batch (its write waits on the
    # lock) until the watcher below kills it: the child dies mid-batch on every attempt, deterministically.
    engine = create_engine(db_url)
    holder = engine.connect()
    holder.begin()
    holder.execute(select(Item.id).where(Item.batch_id == poison).with_for_update())
    worker = start_worker("tabular", env={"MEDBATCH_MAX_ATTEMPTS": str(max_attempts)})
    # When the pool child is SIGKILLed each time it is inside that batch
    kills = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with session_scope(db_url) as s:
                status, attempts = s.execute(select(Batch.status, Batch.attempts).where(Batch.id == poison)).one()
            if status == BatchStatus.RUNNING.value and attempts > kills:
                for child in psutil.Process(worker.process.pid).children():
                    child.send_signal(signal.SIGKILL)
                kills += 1
                if kills == max_attempts:
                    holder.rollback()  # nothing left to hold: the next delivery must give up, not run
            if status in (BatchStatus.DEAD.value, BatchStatus.DONE.value):
                break
            time.sleep(0.05)
    finally:
        holder.close()
        engine.dispose()
    counts = wait_for_job(db_url, summary.job_id, timeout_s=60)
    # Then the batch is dead after exactly max_attempts deaths, every item of it says why,
    # and every other batch of the job completed
    with session_scope(db_url) as s:
        batch = s.get(Batch, poison)
        reasons = s.scalars(select(ItemError.reason).where(ItemError.job_id == summary.job_id)).all()
        failed_items = s.scalars(
            select(Item.id).where(Item.job_id == summary.job_id, Item.status == ItemStatus.FAILED.value)
        ).all()
        poison_items = s.scalars(select(Item.id).where(Item.batch_id == poison)).all()
    assert kills == max_attempts
    assert batch.status == BatchStatus.DEAD.value and batch.attempts == max_attempts
    assert f"gave up after {max_attempts} attempts" in batch.error
    assert sorted(failed_items) == sorted(poison_items) and len(poison_items) == 100
    assert len(reasons) == 100 and all(f"batch {poison} dead-lettered: gave up after" in r for r in reasons)
    assert counts["status"] == "completed_with_errors"
    assert counts["batches"] == {"done": 9, "dead": 1} and counts["items_done"] == 900
    assert _results(db_url, summary.job_id) == 900
    assert "WorkerLostError" in worker.log_path.read_text(errors="replace")
