"""X-ray jobs through the real queue, a real imaging worker process and a real database."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
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
    # The pool child loads the active model (and TensorFlow) as it starts, before any batch asks for it
    deadline = time.monotonic() + 120
    while f"preloaded xray {version}" not in worker.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"preloaded xray {version}" in worker.log_path.read_text()
    assert any(_has_tensorflow(p) for p in _pids(worker.process.pid)[1:])
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
        errors = {Path(e["source_uri"]).name: e["reason"] for e in repo.iter_errors(s, summary.job_id)}
    assert set(errors) == {"brain.dcm", "notes.txt", "empty.jpg", "cut.jpg"}
    assert "modality MR is not a radiograph" in errors["brain.dcm"]
    assert "not a PNG, JPEG or DICOM" in errors["notes.txt"]
    assert "empty" in errors["empty.jpg"] and "truncated" in errors["cut.jpg"]
    by_name = {Path(r["source_uri"]).name: r for r in rows}
    assert by_name["IM0001"]["patient_ref"] == "9RG1" and by_name["IM0001"]["detail"]["modality"] == "CR"
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
    # And the finished job's drift against the training images is measured from the results' input features:
    # tonight's 200 px radiographs (and the real CR) lie outside the 64 px training sizes
    from medbatch.jobs import job_status
    from medbatch.ml.xray import INPUT_FEATURES

    assert all(set(r["detail"]["input_features"]) == set(INPUT_FEATURES) for r in rows)
    block = job_status(db_url, summary.job_id, measure_missing=True)["drift"]
    assert block["available"] and block["n"] == 13 and set(block["features"]) == set(INPUT_FEATURES)
    assert {"width", "height"} <= set(block["flagged"]) and block["features"]["width"]["out_of_range_share"] == 1.0
    assert block["scores"] is not None
    from prometheus_client import generate_latest

    from medbatch.monitoring import make_registry

    exposition = generate_latest(make_registry(db_url, service_env["MEDBATCH_BROKER_URL"])).decode()
    assert 'medbatch_drift_psi{feature="width",workload="xray"}' in exposition
    # TensorFlow lives in the pool child only, never in the parent that forks it
    parent, *children = _pids(worker.process.pid)
    assert not _has_tensorflow(parent)
    assert children and any(_has_tensorflow(p) for p in children)
