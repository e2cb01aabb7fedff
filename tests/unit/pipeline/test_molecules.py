"""The molecules pipeline called directly (no broker, no worker): re-delivery regenerates the same, duplicates."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, BatchStatus, Item, ItemStatus, Job, Result
from medbatch.pipeline.molecules import finalize_job, generate_batch
from medbatch.producer.generation import submit_molecules
from tests.helpers import register_molecules


def test_redelivered_and_rerun_molecule_batch_writes_the_same_once(sqlite_url, molecule_artifact):
    # Given a staged job (no broker: the pipeline is called directly)
    register_molecules(sqlite_url, molecule_artifact)
    summary = submit_molecules(database_url=sqlite_url, send=lambda *a: None, count=30, seed=1, batch_size=30)
    with session_scope(sqlite_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    first = generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)

    def snapshot():
        with session_scope(sqlite_url) as s:
            return {
                r.item_id: (r.label, r.score, r.detail["smiles"])
                for r in s.scalars(select(Result).where(Result.job_id == summary.job_id))
            }

    before = snapshot()
    # When the same message is delivered again: nothing is written
    again = generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)
    assert first["status"] == "done" and first["results"] == 30 and again["status"] == "skipped"
    assert snapshot() == before
    # And when the bookkeeping was lost and the batch really runs again, it generates the same molecules
    with session_scope(sqlite_url) as s:
        s.execute(delete(Result).where(Result.job_id == summary.job_id))
        s.execute(update(Item).where(Item.job_id == summary.job_id).values(status=ItemStatus.PENDING.value))
        s.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.QUEUED.value))
        s.execute(update(Job).where(Job.id == summary.job_id).values(status="running", finished_at=None, metrics=None))
    generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)
    assert sorted(snapshot().values(), key=str) == sorted(before.values(), key=str)
    assert finalize_job(sqlite_url, summary.job_id)["generated"] == 30


def test_duplicates_within_a_job_are_flagged_on_repeats_and_counted(db_url, molecule_artifact):
    # Given a job whose generations (fixed here) repeat ethanol in two spellings and include an invalid one
    from medbatch.ml import chem
    from medbatch.pipeline.common import run_batch
    from medbatch.pipeline.molecules import _result_row

    register_molecules(db_url, molecule_artifact)
    summary = submit_molecules(database_url=db_url, send=lambda *a: None, count=4, batch_size=4)
    fixed = ["CCO", "C1CC", "OCC", "c1ccccc1"]

    def predict(model, items):
        return [_result_row(model, it, chem.score(fixed[it.payload["k"]]), True) for it in items], []

    with session_scope(db_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    run_batch(batch_id, database_url=db_url, max_attempts=5, predict=predict)
    # When the job is finalised (twice: it is idempotent)
    metrics = finalize_job(db_url, summary.job_id)
    assert finalize_job(db_url, summary.job_id) == metrics
    # Then the repeat points at the first occurrence, and the metrics count it once
    with session_scope(db_url) as s:
        rows = list(repo.iter_results(s, summary.job_id))
        first_item = s.scalar(select(Item.id).where(Item.job_id == summary.job_id).order_by(Item.id))
    assert [r["detail"].get("duplicate_of") for r in rows] == [None, None, first_item, None]
    assert rows[1]["label"] is None and "not parseable" in rows[1]["detail"]["reason"]
    assert metrics["duplicates"] == 1 and metrics["unique"] == 2 and metrics["validity"] == 0.75
