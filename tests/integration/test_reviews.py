"""Reviewers' verdicts come back (issue 14.4): ``review import`` all or nothing, agreement per model version."""

from __future__ import annotations

import csv
import json

import pytest

from medbatch.producer.synthetic import write_patients
from tests.helpers import run_cli as medbatch

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def _write(path, rows):
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(
            fh, ["result_id", "source_uri", "patient_ref", "verdict", "corrected_label", "reviewer", "reviewed_at"]
        )
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_review_import_round_trip_with_a_bad_row(service_env, db_url, start_worker, tmp_path):
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    # Given a scored risk job
    start_worker("tabular")
    patients = write_patients(tmp_path / "p.csv", "risk", 40, seed=3)
    job = json.loads(medbatch(service_env, "submit", "risk", str(patients), "--json", "--wait").stdout)
    exported = medbatch(service_env, "results", str(job["job_id"]), "--format", "json").stdout
    rows = [json.loads(r) for r in exported.splitlines()]
    when = "2026-12-01T07:30:00Z"
    high = [r for r in rows if r["label"] == "high"][:3]
    low = [r for r in rows if r["label"] == "low"][:3]
    assert len(high) == 3 and len(low) == 3
    extra_result = result_id_of(db_url, job["job_id"], low[2]["item_key"])
    verdicts = [
        {"source_uri": r["source_uri"], "patient_ref": r["patient_ref"], "verdict": v, "reviewer": "dr-a",
         "reviewed_at": when}
        for r, v in zip(high + low[:2], ["agree", "agree", "disagree", "agree", "disagree"], strict=True)
    ]
    bad = {"result_id": "999999", "verdict": "agree", "reviewer": "dr-a", "reviewed_at": when}
    # When a file with one unknown result id is imported
    run = medbatch(service_env, "review", "import", str(_write(tmp_path / "bad.csv", [*verdicts, bad])))
    # Then it is refused naming the line, and nothing was imported
    assert run.returncode == 2 and "line 7" in run.stderr and "no result 999999" in run.stderr
    model = [m for m in json.loads(medbatch(service_env, "models", "--json").stdout) if m["name"] == "risk"][0]
    assert model["reviews"] == {"reviewed": 0}
    # When the good rows are imported (one more by result id, with a corrected label)
    extra = {"result_id": str(extra_result), "verdict": "disagree", "corrected_label": "high", "reviewer": "dr-b",
             "reviewed_at": when}
    run = medbatch(service_env, "review", "import", str(_write(tmp_path / "good.csv", [*verdicts, extra])), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"rows": 6, "results": 6, "reports": 0}
    # Then models shows, for that version, 6 reviewed and agreement / PPV / sensitivity with their counts
    model = [m for m in json.loads(medbatch(service_env, "models", "--json").stdout) if m["name"] == "risk"][0]
    r = model["reviews"]
    assert r["reviewed"] == 6 and r["agreement"]["k"] == 3 and r["agreement"]["n"] == 6
    # predicted high: agree, agree, disagree -> PPV 2/3; truly high by the reviewers: the two agreed highs,
    # the low they disagreed with, the low corrected to high -> sensitivity 2/4
    assert (r["ppv"]["k"], r["ppv"]["n"]) == (2, 3) and (r["sensitivity"]["k"], r["sensitivity"]["n"]) == (2, 4)
    text = medbatch(service_env, "models").stdout
    assert "agree 3/6" in text
    # And the import is audited, and re-importing replaces rather than duplicates
    assert medbatch(service_env, "review", "import", str(tmp_path / "good.csv")).returncode == 0
    model = [m for m in json.loads(medbatch(service_env, "models", "--json").stdout) if m["name"] == "risk"][0]
    assert model["reviews"]["reviewed"] == 6
    with session_scope(db_url) as s:
        assert [e.action for e in repo.audit_events(s)].count("review_import") == 2


def result_id_of(db_url, job_id, item_key):
    from sqlalchemy import select

    from medbatch.db.session import session_scope
    from medbatch.db.tables import Item, Result

    with session_scope(db_url) as s:
        return s.scalar(
            select(Result.id)
            .join(Item, Item.id == Result.item_id)
            .where(Item.job_id == job_id, Item.item_key == item_key)
        )
