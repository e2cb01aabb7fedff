"""Faults with real processes: a worker SIGKILLed mid-job loses and doubles nothing."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from medbatch.db.session import session_scope
from medbatch.db.tables import Item, ItemStatus, Result
from medbatch.producer.enqueue import submit_records
from medbatch.producer.synthetic import write_patients
from tests.conftest import wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]


def _results(db_url: str, job_id: int) -> int:
    with session_scope(db_url) as s:
        return s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))


def test_worker_killed_three_times_mid_job(db_url, sender, start_worker, tmp_path):
    # Given a job of many batches and workers whose lost messages come back after 10 s
    env = {"MEDBATCH_VISIBILITY_TIMEOUT_S": "10"}
    path = write_patients(tmp_path / "big.csv", "risk", 60_000, seed=8)
    worker = start_worker("tabular", env=env)
    summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=2_000)
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
    counts = wait_for_job(db_url, summary.job_id, timeout_s=180)
    # Then every item ends with exactly one result
    with session_scope(db_url) as s:
        results = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == summary.job_id))
        distinct = s.scalar(select(func.count(func.distinct(Result.item_id))).where(Result.job_id == summary.job_id))
        pending = s.scalar(
            select(func.count()).select_from(Item).where(
                Item.job_id == summary.job_id, Item.status != ItemStatus.DONE.value
            )
        )
    assert counts["status"] == "completed"
    assert results == distinct == summary.items_staged == 60_000
    assert pending == 0
