"""End to end through the command line and a real imaging worker: a PACS's studies in, findings back out.

Upload to Orthanc -> ``medbatch submit xray --from-pacs`` -> the worker retrieves by WADO-RS -> with
MEDBATCH_PACS_RETURN=true the findings go back on their own -> QIDO-RS shows one SR per radiograph and
one SC per positive; ``medbatch export dicom`` afterwards adds nothing.
"""

from __future__ import annotations

import json

import pytest

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from tests.helpers import register_xray, run_cli, wait_for
from tests.orthanc import check_every_object, upload_night

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_pacs_pull_worker_and_automatic_return(db_url, pacs, start_worker, service_env, xray_artifact, tmp_path):  # noqa: F811
    # Given a PACS with a night's films (and a CT), a registered model and an imaging worker that returns findings
    register_xray(db_url, xray_artifact)
    night = upload_night(pacs, tmp_path)
    start_worker("imaging", env={"MEDBATCH_PACS_RETURN": "true"})
    # When the PACS's CR studies of a date range are submitted and waited for
    done = run_cli(
        service_env, "submit", "xray", "--from-pacs", pacs.dicomweb, "--study-date", "20000101-20991231",
        "--modality", "CR,DX", "--wait", "--json",
    )
    assert done.returncode == 5, done.stderr  # done, every radiograph classified, one instance rejected
    summary = json.loads(done.stdout)
    job_id = summary["job_id"]
    assert summary["items_staged"] == night["radiographs"] and summary["rows_rejected"] == 1
    assert summary["final"]["items_done"] == night["radiographs"]
    with session_scope(db_url) as s:
        positives = repo.label_counts(s, job_id).get("pneumonia", 0)
    expected = night["radiographs"] + positives

    # Then the findings arrive in the PACS by themselves: one SR per radiograph, one SC per positive
    def delivered():
        with session_scope(db_url) as s:
            counts = repo.delivery_counts(s, job_id)
        return counts if counts.get("sent", 0) == expected else None

    assert wait_for(delivered, timeout_s=120, what="the automatic return") == {"sent": expected}
    assert pacs.count_instances(Modality="SR") == night["radiographs"]
    assert pacs.count_instances(Modality="OT") == positives
    assert check_every_object(pacs, tmp_path) == expected  # dciodvfy: 0 errors on each
    # status reports the deliveries
    status = run_cli(service_env, "status", str(job_id), "--json")
    assert json.loads(status.stdout)["dicom_deliveries"] == {"sent": expected}
    # And an export by hand afterwards adds nothing
    again = run_cli(service_env, "export", "dicom", str(job_id), "--to", pacs.dicomweb, "--json")
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["sent"], json.loads(again.stdout)["already_sent"]) == (0, expected)
    assert pacs.count_instances(Modality="SR") == night["radiographs"]


def test_submit_from_pacs_refuses_credentials_in_the_url_and_bad_dates(service_env):
    url = "http://user:s3cret-pw@127.0.0.1:9/dicom-web"
    r = run_cli(service_env, "submit", "xray", "--from-pacs", url)
    assert r.returncode == 2 and "MEDBATCH_PACS_PASSWORD" in r.stderr and "s3cret-pw" not in r.stderr + r.stdout
    r = run_cli(service_env, "submit", "xray", "--from-pacs", "http://127.0.0.1:9/dicom-web", "--study-date", "2026")
    assert r.returncode == 2 and "YYYYMMDD" in r.stderr
    r = run_cli(service_env, "submit", "xray", "--from-pacs", "http://127.0.0.1:9/dicom-web")
    assert r.returncode == 3 and "unreachable" in r.stderr  # a PACS that is down: exit 3, nothing staged
