"""The imaging pipeline called directly (no broker, no worker) on SQLite: re-delivery, files changed overnight."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, BatchStatus, Item, ItemStatus, Job, Result
from medbatch.pipeline.imaging import ImagingOptions, classify_batch
from medbatch.producer.submit import submit_images
from medbatch.producer.synthetic import write_xrays
from tests.helpers import register_xray


def test_same_xray_batch_run_twice_gives_identical_results(sqlite_url, tmp_path, xray_artifact):
    # Given a staged X-ray job (no broker needed: the pipeline is called directly)
    register_xray(sqlite_url, xray_artifact)
    folder = tmp_path / "imgs"
    write_xrays(folder, 3, size=120, seed=5, formats=("png", "dicom"))
    summary = submit_images(folder, database_url=sqlite_url, send=lambda *a: None, batch_size=100)
    with session_scope(sqlite_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    opts = ImagingOptions(results_dir=tmp_path / "results", decode_threads=2)
    first = classify_batch(batch_id, database_url=sqlite_url, max_attempts=5, options=opts)

    def snapshot():
        with session_scope(sqlite_url) as s:
            return {
                r.item_id: (r.label, r.score, r.detail.get("heatmap"), r.detail.get("findings"))
                for r in s.scalars(select(Result).where(Result.job_id == summary.job_id))
            }

    before = snapshot()
    heatmaps = {p: Path(p).read_bytes() for _l, _s, p, _f in before.values() if p}
    # When the same batch is delivered again: nothing is written twice
    again = classify_batch(batch_id, database_url=sqlite_url, max_attempts=5, options=opts)
    assert first["status"] == "done" and first["results"] == 6 and again["status"] == "skipped"
    assert snapshot() == before
    # And when the bookkeeping was lost and it really runs again, it produces the same results and files
    with session_scope(sqlite_url) as s:
        s.execute(delete(Result).where(Result.job_id == summary.job_id))
        s.execute(update(Item).where(Item.job_id == summary.job_id).values(status=ItemStatus.PENDING.value))
        s.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.QUEUED.value))
        s.execute(update(Job).where(Job.id == summary.job_id).values(status="running", finished_at=None))
    classify_batch(batch_id, database_url=sqlite_url, max_attempts=5, options=opts)
    assert snapshot().values() and sorted(snapshot().values()) == sorted(before.values())
    assert {p: Path(p).read_bytes() for p in heatmaps} == heatmaps


def test_file_changed_after_submission_is_an_item_error(sqlite_url, tmp_path, xray_artifact):
    register_xray(sqlite_url, xray_artifact)
    folder = tmp_path / "imgs"
    files = write_xrays(folder, 1, size=80, seed=6)
    summary = submit_images(folder, database_url=sqlite_url, send=lambda *a: None, batch_size=10)
    files[0].write_bytes(files[1].read_bytes())  # replaced between the evening and the night
    with session_scope(sqlite_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    classify_batch(batch_id, database_url=sqlite_url, max_attempts=5, options=ImagingOptions(results_dir=tmp_path))
    with session_scope(sqlite_url) as s:
        errors = list(repo.iter_errors(s, summary.job_id))
    assert len(errors) == 1 and "changed since it was submitted" in errors[0]["reason"]
