"""A patient-record job through the real queue, a real worker process and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, BatchStatus, Item, ItemStatus, Result
from medbatch.pipeline.tabular import score_batch
from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients
from medbatch.wakeups import JobEndListener
from tests.helpers import MESSY_RISK_CSV, wait_for_job

pytestmark = pytest.mark.integration


def test_risk_job_end_to_end(db_url, redis_url, sender, start_worker, tmp_path):
    # Given a worker and a CSV with good and bad rows
    start_worker("tabular")
    path = tmp_path / "messy.csv"
    path.write_bytes(MESSY_RISK_CSV.encode())
    # When it is submitted
    with JobEndListener(redis_url) as ends:
        summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=2)
        # Then the worker that ends the job announces it, once its drift is stored (a --wait wakes to the figures)
        assert ends.wait(120, {summary.job_id}), "no job-end announcement"
        with session_scope(db_url) as s:
            job = repo.get_job(s, summary.job_id)
            assert job.status == "completed_with_errors" and job.metrics["drift"] is not None
    counts = wait_for_job(db_url, summary.job_id)
    # Then good rows have results, each bad row one reasoned error, and the job says so
    assert summary.items_staged == 3 and summary.rows_rejected == 3
    assert counts["status"] == "completed_with_errors"
    assert counts["items_done"] == 3 and counts["items_pending"] == 0
    with session_scope(db_url) as s:
        rows = list(repo.iter_results(s, summary.job_id))
        errors = list(repo.iter_errors(s, summary.job_id))
    assert [(r["patient_ref"], r["source_row"]) for r in rows] == [("A1", 2), ("A3", 5), ("A6", 8)]
    assert all(0.0 <= r["score"] <= 1.0 and r["label"] in ("high", "low") for r in rows)
    assert all(r["source_uri"] == str(path.resolve()) for r in rows)
    assert {e["source_row"]: e["patient_ref"] for e in errors} == {3: "A2", 6: "A4", 7: "A5"}
    assert "age 'abc' is not a number" in errors[0]["reason"]


def test_treatment_job_on_two_workers(db_url, sender, start_worker, tmp_path):
    start_worker("tabular", concurrency=2)
    path = write_patients(tmp_path / "t.csv", "treatment", 1200, seed=3, bad_fraction=0.05)
    summary = submit_records(path, "treatment", database_url=db_url, send=sender, batch_size=100)
    counts = wait_for_job(db_url, summary.job_id)
    assert counts["items_done"] == summary.items_staged > 1000
    assert counts["items_done"] + counts["rows_rejected"] == 1200
    with session_scope(db_url) as s:
        labels = {r["label"] for r in repo.iter_results(s, summary.job_id)}
    assert labels <= {"antihypertensive_medication", "lifestyle_only"}


def test_same_batch_delivered_twice_writes_each_result_once(db_url, sender, celery_app, start_worker, tmp_path):
    # Given a finished job
    start_worker("tabular")
    path = write_patients(tmp_path / "r.csv", "risk", 300, seed=5)
    summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=100)
    wait_for_job(db_url, summary.job_id)
    with session_scope(db_url) as s:
        batch_ids = [b for b, _q in repo.unfinished_batches(s, summary.job_id)] or [
            b.id for b in s.scalars(select(Batch).where(Batch.job_id == summary.job_id))
        ]
    # When every batch message is delivered again through the queue, then a marker job after them
    for batch_id in batch_ids:
        sender("medbatch.tabular.score_batch", "tabular", batch_id)
    marker = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=1000)
    wait_for_job(db_url, marker.job_id)
    # Then each item still has exactly one result and the batches were not re-run
    with session_scope(db_url) as s:
        n = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == summary.job_id))
        attempts = set(s.scalars(select(Batch.attempts).where(Batch.job_id == summary.job_id)))
    assert n == 300
    assert attempts == {1}


def test_rerun_after_partial_state_loss_is_idempotent(db_url, sender, start_worker, tmp_path):
    """Even if the batch's own state were lost, the unique key keeps results single."""
    path = write_patients(tmp_path / "r.csv", "risk", 50, seed=9)
    summary = submit_records(path, "risk", database_url=db_url, send=lambda *a: None, batch_size=50)
    with session_scope(db_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    first = score_batch(batch_id, database_url=db_url, max_attempts=5)
    # Simulate a crash that lost the batch bookkeeping but not the results
    with session_scope(db_url) as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.QUEUED.value))
        s.execute(update(Item).where(Item.batch_id == batch_id).values(status=ItemStatus.PENDING.value))
    second = score_batch(batch_id, database_url=db_url, max_attempts=5)
    third = score_batch(batch_id, database_url=db_url, max_attempts=5)
    with session_scope(db_url) as s:
        n = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == summary.job_id))
        done = s.scalar(
            select(func.count())
            .select_from(Item)
            .where(Item.job_id == summary.job_id, Item.status == ItemStatus.DONE.value)
        )
    assert first["results"] == second["results"] == 50 and third["status"] == "skipped"
    assert n == 50 and done == 50


def test_broker_down_at_submit_keeps_work_for_resume(db_url, redis_url, sender, start_worker, tmp_path):
    # Given a broker that refuses every send
    from medbatch.errors import BrokerUnavailable
    from medbatch.producer.recovery import resume_job

    def dead_broker(*_a):
        raise BrokerUnavailable("connection refused")

    path = write_patients(tmp_path / "r.csv", "risk", 250, seed=4)
    with pytest.raises(BrokerUnavailable, match=r"all 250 items are staged.*3 of 3 batches could not be sent"):
        submit_records(path, "risk", database_url=db_url, send=dead_broker, batch_size=100)
    with session_scope(db_url) as s:
        job_id = s.scalar(select(func.max(Batch.job_id)))
        staged = s.scalar(select(func.count()).select_from(Item).where(Item.job_id == job_id))
        status = repo.get_job(s, job_id).status
    assert staged == 250 and status == "queued"  # the whole file is kept, and the job is not stuck staging
    # When the broker is back and the job is resumed
    start_worker("tabular")
    assert resume_job(job_id, database_url=db_url, send=sender) == 3
    # Then every staged item is processed
    counts = wait_for_job(db_url, job_id)
    assert counts["items_done"] == 250 and counts["status"] == "completed"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_worker_on_another_database_refuses_the_message(db_url, celery_app, start_worker, tmp_path):
    """Two deployments sharing a broker by mistake: batch IDs collide, but no worker takes another's work."""
    from medbatch.producer.send import celery_sender
    from tests.helpers import fresh_schema, wait_for_log

    # Given a worker on database A, where batch 1 is already done
    worker_a = start_worker("tabular")
    send_a = celery_sender(celery_app, db_url)
    wait_for_job(
        db_url,
        submit_records(
            write_patients(tmp_path / "a.csv", "risk", 20), "risk", database_url=db_url, send=send_a, batch_size=50
        ).job_id,
    )
    # When a job is staged in database B (its batch 1 too) and sent through the same broker
    other = fresh_schema(f"sqlite:///{tmp_path / 'b.db'}")
    job_b = submit_records(
        write_patients(tmp_path / "b.csv", "risk", 30, seed=3),
        "risk",
        database_url=other,
        send=celery_sender(celery_app, other),
        batch_size=50,
    )
    wait_for_log(worker_a.log_path, "message handed back to the queue")
    # Then worker A refuses it (it does not mark B's batch 1 as its own), and a worker on B completes it
    with session_scope(other) as s:
        assert repo.job_counts(s, job_b.job_id)["items_done"] == 0
    start_worker("tabular", env={"MEDBATCH_DATABASE_URL": other})
    assert wait_for_job(other, job_b.job_id, timeout_s=120)["items_done"] == 30
    # and worker A handed the message back to the queue, never retried it with an ETA of its own
    assert "Retry in" not in worker_a.log_path.read_text()
