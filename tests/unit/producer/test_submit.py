"""Submitting without a broker (``send`` does nothing): what is refused before staging, what is rejected per row."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Item, Job
from medbatch.errors import InvalidInput
from medbatch.producer.submit import submit_images, submit_records, submit_reports
from medbatch.producer.synthetic import write_synthetic_dicom, write_xrays
from tests.helpers import register_xray

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


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
    assert error["source_uri"].endswith("link.png") and "outside the input roots" in error["reason"]


@sqlite_only
def test_report_facts_that_are_not_plausible_numbers_are_rejected(db_url, tmp_path):
    path = tmp_path / "facts.csv"
    path.write_text("patient_id,age,bmi,conditions\nA,abc,xx,asthma\nB,54,400,none\nC,61,27.5,asthma\n")
    summary = submit_reports(
        database_url=db_url, send=lambda *a: None, provider="offline", llm_model="", path=path, batch_size=5
    )
    with session_scope(db_url) as s:
        reasons = {e["patient_ref"]: e["reason"] for e in repo.iter_errors(s, summary.job_id)}
    assert summary.items_staged == 1
    assert "age 'abc' is not a number" in reasons["A"] and "bmi 'xx' is not a number" in reasons["A"]
    assert "bmi 400 is outside the plausible range" in reasons["B"]


def test_a_row_with_a_nul_character_is_rejected_and_the_rest_staged(db_url, tmp_path):
    # Given a patient CSV with a NUL character in one row's id and in another row's age (a damaged export)
    path = tmp_path / "patients.csv"
    path.write_bytes(
        b"patient_id,age,bmi,exercise_frequency,smoking_history\nA\x00B,53,21.0,1,0\nC,5\x003,29.3,0,3\nE,50,22,1,1\n"
    )
    # When it is submitted for risk
    summary = submit_records(path, "risk", database_url=db_url, send=lambda *a: None, batch_size=10)
    # Then the two rows are rejected with the reason, the id shown visibly, and the clean row is staged
    with session_scope(db_url) as s:
        errors = {e["source_row"]: e for e in repo.iter_errors(s, summary.job_id)}
        staged = list(s.scalars(select(Item.patient_ref)))
    assert summary.items_staged == 1 and summary.rows_rejected == 2 and staged == ["E"]
    assert errors[2]["patient_ref"] == "A\\x00B" and errors[3]["patient_ref"] == "C"
    assert all("NUL character" in errors[n]["reason"] for n in (2, 3))


@sqlite_only
def test_a_report_row_with_a_nul_character_is_rejected(db_url, tmp_path):
    path = tmp_path / "facts.csv"
    path.write_bytes(b"patient_id,age,conditions\nA\x00,54,asthma\nB,61,none\n")
    summary = submit_reports(
        database_url=db_url, send=lambda *a: None, provider="offline", llm_model="", path=path, batch_size=5
    )
    with session_scope(db_url) as s:
        (error,) = list(repo.iter_errors(s, summary.job_id))
    assert summary.items_staged == 1 and error["patient_ref"] == "A\\x00" and "NUL character" in error["reason"]


def test_a_dicom_patient_id_with_a_nul_character_is_rejected(sqlite_url, tmp_path, xray_artifact):
    # Given a folder with a DICOM whose patient ID holds a NUL character, beside a clean one
    register_xray(sqlite_url, xray_artifact)
    folder = tmp_path / "night"
    folder.mkdir()
    pixels = np.zeros((64, 64), dtype=np.float32)
    write_synthetic_dicom(folder / "bad.dcm", pixels, patient_id="A\x00B")
    write_synthetic_dicom(folder / "good.dcm", pixels + 0.5, patient_id="C")
    # When it is submitted, the damaged one is a rejection with its reason and the other is staged
    summary = submit_images(folder, database_url=sqlite_url, send=lambda *a: None, batch_size=10)
    with session_scope(sqlite_url) as s:
        (error,) = list(repo.iter_errors(s, summary.job_id))
        staged = list(s.scalars(select(Item.patient_ref)))
    assert summary.items_staged == 1 and staged == ["C"]
    assert error["source_uri"].endswith("bad.dcm") and "NUL character" in error["reason"]


def _instance(sop: str, patient: str) -> dict:
    tags = {"0020000D": "1.2.3", "0020000E": "1.2.3.4", "00080018": sop, "00080060": "CR", "00100020": patient}
    return {tag: {"vr": "LO", "Value": [value]} for tag, value in tags.items()} | {
        "00280010": {"vr": "US", "Value": [512]}
    }


def test_a_pacs_answer_with_a_nul_character_is_rejected_and_shown():
    from medbatch.producer.pacs import PacsScan, iter_pacs_chunks

    answers = [_instance("1.2.3.4.5", "P\x00Q"), _instance("1.2.3.4.\x006", "R"), _instance("1.2.3.4.7", "S")]
    (chunk,) = list(iter_pacs_chunks("http://pacs/dicom-web", answers, scan=PacsScan()))
    assert [it["patient_ref"] for it in chunk.items] == ["S"]
    assert [r["patient_ref"] for r in chunk.rejected] == ["P\\x00Q", "R"]
    assert all("NUL character" in r["reason"] and "\x00" not in r["source_uri"] for r in chunk.rejected)
