"""Submitting without a broker (``send`` does nothing): what is refused before staging, what is rejected per row."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Job
from medbatch.errors import InvalidInput
from medbatch.producer.submit import submit_images, submit_reports
from medbatch.producer.synthetic import write_xrays
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
