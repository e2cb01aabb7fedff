"""Helpers the test modules share: import them from here, never from another test module or conftest.

Fixtures live in ``tests/conftest.py``; plain functions and constants live here. Waiting is always for a
condition, with a deadline (:func:`wait_for`), never a bare sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

T = TypeVar("T")

#: A risk CSV with a BOM, CRLF, a blank line, a quoted comma and rows that must be rejected (3 of 6 are valid).
MESSY_RISK_CSV = (
    "\ufeffpatient_id,age,bmi,exercise_frequency,smoking_history,notes\r\n"
    "A1,54,27.5,3,0,ok\r\n"
    "A2,abc,27.5,3,0,not a number\r\n"
    "\r\n"
    'A3,61,"31,5",0,20,"quoted, comma"\r\n'
    "A4,54,27.5,3,0,extra,field\r\n"
    "A5,200,27.5,3,0,too old\r\n"
    "A6,70,22,1,10,ok\r\n"
)

#: Report facts for three patients, with identifiers that must never leave (name, MRN, address, phone...).
REPORT_FACTS_CSV = (
    "patient_id,name,date_of_birth,address,phone,email,ssn,sex,bmi,blood_pressure,cholesterol,diabetes,conditions\n"
    "MRN-7731002,Maria Gonzalez,1961-03-14,221B Baker Street,555-867-5309,maria.g@example.org,078-05-1120,F,31.4,"
    '152/95,262,yes,"hypertension; seen by John Smith on 2024-02-01, call 555-867-5309"\n'
    "MRN-7731003,Ann Lee,1950-07-02,1 Main St,555-000-1111,ann@example.org,123-45-6789,F,24.0,128,190,no,asthma\n"
    "MRN-7731004,Bo Chan,1975-11-30,2 Main St,555-000-2222,bo@example.org,223-45-6789,M,27.2,139,240,no,none\n"
)


#: Values that identify a patient in :func:`identifying_patients`' file; none may appear outside the database.
IDENTIFYING = ("MRN-88", "Leakcheck", "555-77", "1961-04-")


def identifying_patients(path: Path, n: int = 60) -> Path:
    """A risk CSV of ``n`` patients with names, phones and dates of birth (row 7 has a bad age)."""
    lines = ["patient_id,name,phone,date_of_birth,age,bmi,exercise_frequency,smoking_history"]
    for i in range(n):
        age = "abc" if i == 7 else str(30 + i % 50)  # one bad row: its rejection reason must not quote it
        lines.append(f"MRN-88{i:05d},Ada Leakcheck{i},555-77{i:02d},1961-04-{1 + i % 28:02d},{age},27.5,2,0")
    path.write_text("\n".join(lines) + "\n")
    return path


def need(service: str, reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"{service} is required in CI: {reason}")
    pytest.skip(f"{service} not available: {reason}")


def wait_for(condition: Callable[[], T], *, timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "") -> T:
    """Call ``condition`` until it returns something truthy and return that; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:g}s: {what or getattr(condition, '__name__', 'condition')}")
        time.sleep(interval_s)


def wait_for_log(path: Path, text: str, *, timeout_s: float = 30.0) -> str:
    """Wait until the log file at ``path`` contains ``text``; returns the log."""

    def logged() -> str:
        log = path.read_text(errors="replace") if path.exists() else ""
        return log if text in log else ""

    return wait_for(logged, timeout_s=timeout_s, interval_s=0.2, what=f"{text!r} in {path.name}")


def run_cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``medbatch ARGS`` as a user would: a new process, this test's environment on top of ours."""
    return subprocess.run(
        [sys.executable, "-m", "medbatch.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for_job(db_url: str, job_id: int, timeout_s: float = 120.0) -> dict:
    """Wait (``medbatch.jobs.wait_for_job``) until the job is finished; fail the test if it is not in time."""
    from medbatch.jobs import is_finished
    from medbatch.jobs import wait_for_job as wait

    counts = wait(db_url, job_id, timeout_s=timeout_s, poll_s=0.3)
    if not is_finished(counts):
        pytest.fail(f"job {job_id} did not finish in {timeout_s}s: {counts}")
    return counts


def fresh_schema(url: str) -> str:
    """Drop every table of ``url`` and migrate it to head (Alembic, as ``medbatch db upgrade`` does).

    Every table the database has goes, not only those the models declare (a migration may add more).
    """
    from sqlalchemy import MetaData, text

    from medbatch.db.migrate import upgrade
    from medbatch.db.session import get_engine

    engine = get_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # tables, and the types and sequences they use
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        else:
            existing = MetaData()
            existing.reflect(conn)
            existing.drop_all(conn)
    upgrade(url)
    return url


def moses_head(n: int, split: str = "train") -> list[str]:
    """The first ``n`` SMILES of a MOSES split: ``read_moses_smiles(split)[:n]`` without reading the other 1.58M."""
    import gzip
    from itertools import islice

    from medbatch.ml.moses import moses_data_dir

    with gzip.open(moses_data_dir() / f"{split}.csv.gz", "rt") as fh:
        assert fh.readline().strip() == "SMILES"
        return list(islice((line.strip() for line in fh if line.strip()), n))


def register_xray(db_url: str, artifact: Path) -> str:
    """Register ``artifact`` as the active xray model in ``db_url``; returns its version."""
    return _register(db_url, "xray", artifact, "synthetic")


def register_molecules(db_url: str, artifact: Path) -> str:
    """Register ``artifact`` as the active molecules model in ``db_url``; returns its version."""
    return _register(db_url, "molecules", artifact, "tiny test model")


def _register(db_url: str, name: str, artifact: Path, source: str) -> str:
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.ml.registry import file_version

    version = file_version(artifact)
    with session_scope(db_url) as s:
        repo.register_model(s, name=name, version=version, uri=str(artifact), metrics={}, training_source=source)
    return version


# --------------------------------------------------------------------------- FHIR test data


def fhir_context():
    """The FHIR builders' context of the unit tests: a fixed database identity and patient system."""
    from medbatch.interop.fhir import resources

    return resources.Context(
        instance="0b7c7a8e-1111-4c1e-9a8b-0c4d6e7f8a9b", patient_system="urn:oid:1.2.36.146.595.217.0.1"
    )


FHIR_AT = datetime(2026, 12, 1, 3, 4, 5, 678000, tzinfo=UTC)
FHIR_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


def fhir_rows() -> dict[str, dict]:
    """One result row per workload, as the FHIR export reads them."""
    common = {"patient_ref": "MRN-0042", "created_at": FHIR_AT, "report_text": None, "requires_review": True}
    return {
        "risk": {**common, "item_id": 11, "label": "high", "score": 0.41, "model_name": "risk",
                 "model_version": "df33c8363188eeeb", "detail": {"threshold": 0.2341,
                                                                  "probabilities": {"low": 0.59, "high": 0.41}}},
        "treatment": {**common, "item_id": 12, "label": "lifestyle_only", "score": 0.83, "model_name": "treatment",
                      "model_version": "715b9ad2dd955cfa", "detail": {"threshold": None, "probabilities": {
                          "antihypertensive_medication": 0.17, "lifestyle_only": 0.83}}},
        "xray": {**common, "item_id": 13, "label": "pneumonia", "score": 0.91, "model_name": "xray",
                 "model_version": "abc123", "study_uid": FHIR_STUDY,
                 "detail": {"probability": 0.91, "threshold": 0.5, "findings": "Opacity in the right lower zone."}},
        "report": {**common, "item_id": 14, "label": "draft_requires_review", "score": None,
                   "model_name": "offline:template", "model_version": "v3", "detail": {},
                   "report_text": "Condition: hypertension. Follow-up: 3 months. Ünïcode."},
    }  # fmt: skip


def job_with_results(db_url: str, workload: str, details: list[dict]) -> int:
    """A job of ``workload`` whose results carry ``details``, in this order (staged and written directly)."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    with session_scope(db_url) as s:
        job = repo.create_job(s, workload=workload, source_uri="test", model_name="m", model_version="1")
        batch = repo.stage_batch(
            s,
            job_id=job,
            seq=0,
            queue=workload,
            items=[
                {"item_key": f"k{i}", "source_uri": "test", "source_row": i + 1, "patient_ref": None, "payload": {}}
                for i in range(len(details))
            ],
        )
        items = repo.load_pending_items(s, batch)
        results = [
            {"item_id": it.id, "model_name": "m", "model_version": "1", "label": "x", "score": 0.5, "detail": d}
            for it, d in zip(items, details, strict=True)
        ]
        repo.complete_batch(s, batch_id=batch, job_id=job, results=results)
        repo.finish_staging(s, job)
    return job
