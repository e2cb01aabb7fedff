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


def test_bulk_paths_keep_odd_patient_ids_details_and_write_once(db_url, tmp_path):
    """One COPY / executemany per chunk and per batch: ids with tabs, backslashes and quotes survive as typed,
    each result's detail is the JSON it always was, and a re-delivered batch writes nothing twice."""
    import json

    from medbatch.db.tables import Item, ItemStatus

    path = tmp_path / "odd.csv"
    path.write_text(
        "patient_id,age,bmi,exercise_frequency,smoking_history\n"
        '"A\tB",54,27.5,3,0\n"C\\\\D",61,31,0,20\n"E""F",45,22,2,0\n"line\nbreak",50,25,1,1\n,40,20,1,0\n'
    )
    summary = submit_records(path, "risk", database_url=db_url, send=lambda *a: None, batch_size=2)
    with session_scope(db_url) as s:
        batches = list(s.scalars(select(Batch.id).where(Batch.job_id == summary.job_id).order_by(Batch.seq)))
    assert summary.items_staged == 5 and len(batches) == 3
    for batch_id in batches:
        assert score_batch(batch_id, database_url=db_url, max_attempts=5)["status"] == "done"
    with session_scope(db_url) as s:  # a re-delivery after the work was lost from the broker's view
        s.execute(update(Batch).where(Batch.job_id == summary.job_id).values(status=BatchStatus.QUEUED.value))
        s.execute(update(Item).where(Item.job_id == summary.job_id).values(status=ItemStatus.PENDING.value))
    for batch_id in batches:
        score_batch(batch_id, database_url=db_url, max_attempts=5)
    with session_scope(db_url) as s:
        rows = s.execute(
            select(Item.source_row, Item.patient_ref, Item.payload, Result.label, Result.score, Result.detail)
            .join(Result, Result.item_id == Item.id)
            .where(Item.job_id == summary.job_id)
            .order_by(Item.source_row)
        ).all()
    assert [(r.source_row, r.patient_ref) for r in rows] == [
        (2, "A\tB"),
        (3, "C\\\\D"),
        (4, 'E"F'),
        (5, "line\nbreak"),
        (7, None),
    ]
    assert rows[0].payload == {"age": 54.0, "bmi": 27.5, "exercise_frequency": 3.0, "smoking_history": 0.0}
    for r in rows:
        detail = r.detail if isinstance(r.detail, dict) else json.loads(r.detail)
        assert set(detail) == {"probabilities", "threshold"} and set(detail["probabilities"]) == {"low", "high"}
        assert detail["probabilities"]["high"] == round(r.score, 6)
        assert r.label == ("high" if r.score >= detail["threshold"] else "low")
