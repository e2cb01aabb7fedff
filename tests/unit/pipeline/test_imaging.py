"""The imaging pipeline called directly (no broker, no worker) on SQLite: re-delivery, files changed overnight."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from sqlalchemy import delete, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, BatchStatus, Item, ItemStatus, Job, Result
from medbatch.pipeline.imaging import ImagingOptions, classify_batch, classify_items
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


class _ScriptedModel:
    """The model contract with scripted probabilities (in scoring order) and a fixed Grad-CAM map: no TensorFlow."""

    name, version, input_size, threshold = "scripted", "1", 32, 0.5
    positive_label, negative_label = "pneumonia", "normal"

    def __init__(self, probabilities):
        self.probabilities = list(probabilities)
        self.predict_sizes: list[int] = []
        self.gradcam_sizes: list[int] = []

    def predict(self, x):
        self.predict_sizes.append(len(x))
        return np.array([self.probabilities.pop(0) for _ in range(len(x))], dtype=np.float32)

    def gradcam(self, x):
        self.gradcam_sizes.append(len(x))
        ramp = np.linspace(0, 1, self.input_size, dtype=np.float32)
        return np.tile(np.outer(ramp, ramp), (len(x), 1, 1))


def test_stages_overlap_yet_every_image_gets_one_outcome_and_every_positive_its_overlay(tmp_path):
    # Given twelve radiographs (one of them changed since submission) and a file that is no image
    files = sorted(write_xrays(tmp_path / "imgs", 6, size=40, seed=3))
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    paths = [*files[:4], tmp_path / "junk.png", *files[4:]]
    items = []
    for i, p in enumerate(paths):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if i == 8:
            digest = "0" * 64  # not what is on disk now
        items.append(
            SimpleNamespace(
                id=100 + i,
                payload={"path": str(p), "sha256": digest},
                source_uri=str(p),
                source_row=None,
                patient_ref=None,
            )
        )
    # and a model whose every third scored image is negative
    decodable = len(items) - 2
    model = _ScriptedModel([0.1 if i % 3 == 0 else 0.9 for i in range(decodable)])
    opts = ImagingOptions(results_dir=tmp_path / "results", decode_threads=2, predict_batch=3)
    # When the batch is classified with the stages overlapping
    results, failures = classify_items(model, items, opts)
    # Then each item has exactly one outcome, the unreadable ones a reason
    assert sorted([r["item_id"] for r in results] + [f["item_id"] for f in failures]) == [it.id for it in items]
    assert {f["item_id"]: f["stage"] for f in failures} == {104: "decode", 108: "decode"}
    # and the model saw compiled-size chunks: scoring as images were decoded, Grad-CAM once enough positives waited
    assert model.predict_sizes == [3, 3, 3, 2] and model.gradcam_sizes == [3, 3, 1]
    positives = [r for r in results if r["label"] == "pneumonia"]
    assert len(positives) == 7 and all(r["score"] >= 0.5 for r in positives)
    # and every positive's overlay is on disk when the results are handed over; negatives have none
    assert all(Path(r["detail"]["heatmap"]).is_file() and r["detail"]["findings"] for r in positives)
    assert all(r["detail"]["heatmap"] is None for r in results if r["label"] == "normal")
