"""A task claims only batches of its own workload, checked in the statement that locks the batch; a
mismatch or a malformed id changes nothing (on SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.errors import InvalidInput, PermanentError, WrongWorkload

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)]


def _staged(db_url: str, workload: str) -> int:
    with session_scope(db_url) as s:
        job_id = repo.create_job(s, workload=workload, source_uri="test", model_name="m", model_version="1")
        item = {"item_key": "row:2", "source_uri": "test", "source_row": 2, "payload": {"age": 50}}
        return repo.stage_batch(s, job_id=job_id, seq=0, queue="q", items=[item])


def _state(db_url: str, batch_id: int) -> tuple:
    from medbatch.db.tables import Batch, Job

    with session_scope(db_url) as s:
        batch = s.get(Batch, batch_id)
        return batch.status, batch.attempts, batch.started_at, s.get(Job, batch.job_id).status


def test_a_batch_of_another_workload_is_refused_and_left_as_it_was(db_url):
    # Given a report batch, and a tabular task's claim for it
    report_batch = _staged(db_url, "report")
    before = _state(db_url, report_batch)
    # When the tabular task claims it, it is refused (permanently: not retried) and nothing changed
    with session_scope(db_url) as s, pytest.raises(WrongWorkload, match="report") as info:
        repo.claim_batch(s, report_batch, max_attempts=5, workloads=("risk", "treatment"))
    assert isinstance(info.value, PermanentError)
    assert _state(db_url, report_batch) == before
    # And the report task's claim takes it
    with session_scope(db_url) as s:
        claim = repo.claim_batch(s, report_batch, max_attempts=5, workloads=("report",))
    assert claim is not None and claim.workload == "report" and claim.attempt == 1


@pytest.mark.parametrize("bad", [1.5, 1.0, "1", "abc", True, 0, -1, 2**63, 2**70, None, [1]])
def test_a_malformed_batch_id_is_a_permanent_error_and_matches_no_batch(db_url, bad):
    batch_id = _staged(db_url, "risk")
    assert batch_id == 1
    before = _state(db_url, batch_id)
    with session_scope(db_url) as s, pytest.raises(InvalidInput, match="batch id"):
        repo.claim_batch(s, bad, max_attempts=5, workloads=("risk",))
    assert _state(db_url, batch_id) == before
