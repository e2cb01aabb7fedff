"""X-ray jobs through the real queue, a real imaging worker process and a real database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, BatchStatus, Item, ItemStatus, Job, Result
from medbatch.errors import InvalidInput
from medbatch.pipeline.imaging import ImagingOptions, classify_batch
from medbatch.producer.submit import submit_images
from medbatch.producer.synthetic import write_xrays
from tests.helpers import register_xray, wait_for_job

pytestmark = pytest.mark.integration

DICOM_DIR = Path(pytest.importorskip("data_store").__file__).parent / "data"


def _night_folder(root: Path) -> Path:
    """A night's folder: synthetic radiographs in three formats, a real CR DICOM, a duplicate and junk."""
    write_xrays(root, 6, size=200, seed=21, formats=("png", "jpeg", "dicom"), split="ward-a")
    shutil.copy(DICOM_DIR / "RG1_UNCR.dcm", root / "IM0001")  # DICOM export without an extension
    shutil.copy(DICOM_DIR / "MR2_UNCR.dcm", root / "brain.dcm")  # not a radiograph
    shutil.copy(root / "ward-a" / "NORMAL" / "SYNTHETIC-normal-ward-a-21-00000.png", root / "copy-of-first.png")
    (root / "notes.txt").write_text("handover notes\n")
    (root / "empty.jpg").write_bytes(b"")
    good = (root / "ward-a" / "PNEUMONIA" / "SYNTHETIC-pneumonia-ward-a-21-00001.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(good[: len(good) // 3])
    return root


def _pids(pid: int) -> list[int]:
    import psutil

    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _has_tensorflow(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "_pywrap_tensorflow" in maps or "libtensorflow" in maps


def test_xray_folder_end_to_end(db_url, sender, start_worker, tmp_path, xray_artifact, service_env):
    # Given a registered model, an imaging worker and a night's folder with good files and junk
    version = register_xray(db_url, xray_artifact)
    worker = start_worker("imaging")
    folder = _night_folder(tmp_path / "night")
    # When the folder is submitted
    summary = submit_images(folder, database_url=db_url, send=sender, batch_size=5)
    counts = wait_for_job(db_url, summary.job_id, timeout_s=180)
    # Then each distinct readable image has one result and each bad file one reasoned error
    assert summary.model == {"name": "xray", "version": version}
    assert summary.items_staged == 14  # 12 synthetic + RG1 + the truncated JPEG; the copy is processed once
    assert summary.rows_rejected == 3 and any("same content" in w for w in summary.warnings)
    assert counts["status"] == "completed_with_errors"
    assert counts["items_done"] == 13 and counts["items_failed"] == 1
    with session_scope(db_url) as s:
        rows = list(repo.iter_results(s, summary.job_id))
        errors = {Path(e["source_file"]).name: e["reason"] for e in repo.iter_errors(s, summary.job_id)}
    assert set(errors) == {"brain.dcm", "notes.txt", "empty.jpg", "cut.jpg"}
    assert "modality MR is not a radiograph" in errors["brain.dcm"]
    assert "not a PNG, JPEG or DICOM" in errors["notes.txt"]
    assert "empty" in errors["empty.jpg"] and "truncated" in errors["cut.jpg"]
    by_name = {Path(r["source_file"]).name: r for r in rows}
    assert by_name["IM0001"]["patient_id"] == "9RG1" and by_name["IM0001"]["detail"]["modality"] == "CR"
    # The model separates the synthetic classes, and every positive is explained and flagged for review
    labels = {n: r["label"] for n, r in by_name.items() if n.startswith("SYNTHETIC")}
    right = sum((lab == "pneumonia") == ("pneumonia" in n) for n, lab in labels.items())
    assert right >= 10, labels
    for r in rows:
        d = r["detail"]
        assert r["model_version"] == version and 0 <= r["score"] <= 1
        assert (r["label"] == "pneumonia") == (r["score"] >= d["threshold"]) == d["requires_review"]
        if r["label"] == "pneumonia":
            assert Path(d["heatmap"]).read_bytes()[:4] == b"\x89PNG"
            assert d["findings"].startswith("DRAFT") and "clinician review" in d["findings"]
        else:
            assert d["heatmap"] is None and d["findings"] is None
    # TensorFlow lives in the pool child only, never in the parent that forks it
    parent, *children = _pids(worker.process.pid)
    assert not _has_tensorflow(parent)
    assert children and any(_has_tensorflow(p) for p in children)


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


def test_no_registered_model_says_how_to_get_one(sqlite_url, tmp_path):
    write_xrays(tmp_path / "imgs", 1, size=32)
    with pytest.raises(InvalidInput, match="medbatch train xray"):
        submit_images(tmp_path / "imgs", database_url=sqlite_url, send=lambda *a: None, batch_size=10)
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(Job.id)) is None  # nothing was staged


def test_xray_input_roots_refuse_folders_and_symlinks_outside(sqlite_url, tmp_path, xray_artifact):
    # Given an input root holding a folder with one real image and a symlink to an image outside the root
    register_xray(sqlite_url, xray_artifact)
    root = tmp_path / "inbox"
    folder = root / "night"
    write_xrays(folder, 1, size=64, seed=8)
    outside = write_xrays(tmp_path / "elsewhere", 1, size=64, seed=9)[0]
    (folder / "link.png").symlink_to(outside)
    # Then a folder outside the roots is refused before anything is staged
    with pytest.raises(InvalidInput, match="outside the input roots"):
        submit_images(
            tmp_path / "elsewhere", database_url=sqlite_url, send=lambda *a: None, batch_size=10, input_roots=[root]
        )
    # And inside the root, the symlink leading out is a rejection with the reason; the rest is staged
    summary = submit_images(folder, database_url=sqlite_url, send=lambda *a: None, batch_size=10, input_roots=[root])
    assert summary.items_staged == 2 and summary.rows_rejected == 1
    with session_scope(sqlite_url) as s:
        (error,) = list(repo.iter_errors(s, summary.job_id))
    assert error["source_file"].endswith("link.png") and "outside the input roots" in error["reason"]
