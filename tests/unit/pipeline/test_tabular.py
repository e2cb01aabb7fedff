"""The tabular pipeline called directly (no broker, no worker): failures, dead letters, hand-backs, export."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import func, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, BatchStatus, ItemError, Result
from medbatch.export import write_rows
from medbatch.pipeline.tabular import score_batch
from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients
from tests.helpers import MESSY_RISK_CSV


def test_tampered_model_fails_items_with_reason_never_a_result(db_url, tmp_path):
    """A model that cannot be trusted produces recorded errors, not negative findings."""
    from medbatch.db.tables import Model
    from medbatch.ml import registry

    registry.clear_cache()
    path = write_patients(tmp_path / "r.csv", "risk", 20, seed=2)
    summary = submit_records(path, "risk", database_url=db_url, send=lambda *a: None, batch_size=50)
    with session_scope(db_url) as s:
        s.execute(update(Model).where(Model.name == "risk").values(uri=str(tmp_path / "gone.skops")))
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    out = score_batch(batch_id, database_url=db_url, max_attempts=5)
    with session_scope(db_url) as s:
        results = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == summary.job_id))
        reasons = list(s.scalars(select(ItemError.reason).where(ItemError.job_id == summary.job_id)))
        counts = repo.job_counts(s, summary.job_id)
    assert out["failures"] == 20 and results == 0
    assert len(reasons) == 20 and all("not found" in r for r in reasons)
    assert counts["status"] == "completed_with_errors"


def test_export_formats_carry_source_and_patient(db_url, tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(MESSY_RISK_CSV.encode())
    summary = submit_records(path, "risk", database_url=db_url, send=lambda *a: None, batch_size=10)
    with session_scope(db_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    score_batch(batch_id, database_url=db_url, max_attempts=5)
    buf = io.StringIO()
    import sys

    with session_scope(db_url) as s:
        old, sys.stdout = sys.stdout, buf
        try:
            write_rows(repo.iter_results(s, summary.job_id), "csv", None)
        finally:
            sys.stdout = old
        n_parquet = write_rows(repo.iter_results(s, summary.job_id), "parquet", tmp_path / "r.parquet")
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["patient_ref"] for r in rows] == ["A1", "A3", "A6"] and n_parquet == 3
    assert {"source_uri", "source_row", "score", "label", "prob_high", "prob_low"} <= set(rows[0])
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "r.parquet").num_rows == 3


def test_batch_past_max_attempts_is_dead_lettered_and_job_completes(db_url, tmp_path):
    """A batch whose worker died every time stops being retried; its items get a reason; the job ends."""
    path = write_patients(tmp_path / "r.csv", "risk", 30, seed=6)
    summary = submit_records(path, "risk", database_url=db_url, send=lambda *a: None, batch_size=10)
    with session_scope(db_url) as s:
        first, second, third = s.scalars(select(Batch.id).where(Batch.job_id == summary.job_id).order_by(Batch.seq))
        # three claims that never finished: the worker was killed each time
        s.execute(update(Batch).where(Batch.id == first).values(attempts=3, status=BatchStatus.RUNNING.value))
    poisoned = score_batch(first, database_url=db_url, max_attempts=3)
    for batch_id in (second, third):
        score_batch(batch_id, database_url=db_url, max_attempts=3)
    with session_scope(db_url) as s:
        counts = repo.job_counts(s, summary.job_id)
        errors = list(repo.iter_errors(s, summary.job_id))
    assert poisoned["status"] == "skipped"
    assert counts["status"] == "completed_with_errors"
    assert counts["items_done"] == 20 and counts["items_failed"] == 10
    assert counts["batches"] == {"done": 2, "dead": 1}
    assert len(errors) == 10 and all("dead-lettered" in e["reason"] and e["stage"] == "dead_letter" for e in errors)


def test_transient_failure_hands_the_batch_back_without_counting(db_url, tmp_path, monkeypatch):
    from medbatch.errors import DatabaseUnavailable
    from medbatch.pipeline import common

    path = write_patients(tmp_path / "r.csv", "risk", 10, seed=6)
    summary = submit_records(path, "risk", database_url=db_url, send=lambda *a: None, batch_size=10)
    with session_scope(db_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))

    def flaky(*_a, **_k):
        raise DatabaseUnavailable("connection reset")

    monkeypatch.setattr(common, "load_job_model", flaky)
    with pytest.raises(DatabaseUnavailable):
        score_batch(batch_id, database_url=db_url, max_attempts=3)
    with session_scope(db_url) as s:
        batch = s.get(Batch, batch_id)
        assert (batch.status, batch.attempts, batch.error) == ("queued", 0, "connection reset")
    monkeypatch.undo()
    assert score_batch(batch_id, database_url=db_url, max_attempts=3)["results"] == 10
