"""``medbatch export fhir``: real risk, treatment, report and X-ray jobs through real workers, exported with the
CLI; every line of every NDJSON file is validated again (fhir.resources R4B and medbatch's own checks), every
reference resolves, and a second export writes identical files."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.interop.fhir import checks
from medbatch.producer.submit import submit_images, submit_records, submit_reports
from medbatch.producer.synthetic import write_patients, write_xrays
from tests.fakes.fhir_server import FakeFhirServer
from tests.helpers import register_xray, run_cli, wait_for_job

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
DICOM_DIR = Path(pytest.importorskip("data_store").__file__).parent / "data"
SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
FACTS_CSV = (
    "patient_id,name,date_of_birth,address,phone,sex,bmi,blood_pressure,cholesterol,diabetes,conditions\n"
    "MRN-7731002,Maria Gonzalez,1961-03-14,221B Baker Street,555-867-5309,F,31.4,152/95,262,yes,hypertension\n"
    "MRN-7731003,Ann Lee,1950-07-02,1 Main St,555-000-1111,F,24.0,128,190,no,asthma\n"
)
NAMES = ("Maria Gonzalez", "Ann Lee", "221B Baker Street", "555-867-5309", "1961-03-14")


def _export(env: dict, job_id: int, out: Path, *extra: str) -> dict:
    done = run_cli(env, "export", "fhir", str(job_id), "-o", str(out), *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _revalidate(out: Path, manifest: dict) -> dict[str, list[dict]]:
    """Every line of every file, validated again; every literal reference resolves within the export."""
    from fhir.resources.R4B import get_fhir_model_class

    by_type: dict[str, list[dict]] = {}
    for entry in manifest["output"]:
        path = out / f"{entry['type']}.ndjson"
        assert entry["url"] == path.resolve().as_uri()
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == entry["count"] > 0
        for line in lines:
            resource = json.loads(line)
            assert resource["resourceType"] == entry["type"]
            get_fhir_model_class(entry["type"]).model_validate(resource)
            checks.check(resource)
            by_type.setdefault(entry["type"], []).append(resource)
    ids = {f"{t}/{r['id']}" for t, rs in by_type.items() for r in rs}
    assert len(ids) == sum(len(rs) for rs in by_type.values())  # no id twice
    for ref in _literal_refs(list(by_type.values())):
        assert ref in ids, ref
    targets = [p["target"][0]["reference"] for p in by_type["Provenance"]]
    assert sorted(targets) == sorted(i for i in ids if not i.startswith(("Provenance/", "Device/")))
    assert manifest["error"] == []
    return by_type


def _literal_refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node["reference"]
        for v in node.values():
            yield from _literal_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _literal_refs(v)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@sqlite_only
def test_risk_treatment_and_report_jobs_export_as_valid_identical_fhir(
    db_url, sender, start_worker, service_env, tmp_path
):
    # Given finished risk, treatment and report jobs run by a real worker
    start_worker("tabular,reports", pool="threads", concurrency=2, env={"MEDBATCH_LLM_PROVIDER": "auto"})
    risk = submit_records(write_patients(tmp_path / "r.csv", "risk", 30, seed=3), "risk",
                          database_url=db_url, send=sender, batch_size=10)  # fmt: skip
    treatment = submit_records(write_patients(tmp_path / "t.csv", "treatment", 20, seed=4), "treatment",
                               database_url=db_url, send=sender, batch_size=10)  # fmt: skip
    (tmp_path / "facts.csv").write_text(FACTS_CSV)
    report = submit_reports(database_url=db_url, send=sender, provider="offline", llm_model="",
                            path=tmp_path / "facts.csv", batch_size=2)  # fmt: skip
    for job in (risk, treatment, report):
        assert wait_for_job(db_url, job.job_id)["status"] == "completed"
    env = {**service_env, "MEDBATCH_FHIR_PATIENT_SYSTEM": SYSTEM}
    # When each is exported with the CLI
    out = {name: tmp_path / f"fhir-{name}" for name in ("risk", "treatment", "report")}
    manifests = {name: _export(env, job.job_id, out[name])
                 for name, job in (("risk", risk), ("treatment", treatment), ("report", report))}  # fmt: skip
    # Then every line validates, each result is one resource with its Provenance, and the model is a Device
    got = {name: _revalidate(out[name], m) for name, m in manifests.items()}
    assert {t: len(rs) for t, rs in got["risk"].items()} == {"Device": 1, "RiskAssessment": 30, "Provenance": 30}
    assert {t: len(rs) for t, rs in got["treatment"].items()} == {"Device": 1, "CarePlan": 20, "Provenance": 20}
    assert {t: len(rs) for t, rs in got["report"].items()} == {
        "Device": 1, "DocumentReference": 2, "Task": 2, "Provenance": 4}  # fmt: skip
    with session_scope(db_url) as s:
        results = {r["patient_ref"]: r for r in repo.iter_results(s, risk.job_id)}
    for ra in got["risk"]["RiskAssessment"]:
        pid = ra["subject"]["identifier"]["value"]
        assert ra["subject"] == {"type": "Patient", "identifier": {"system": SYSTEM, "value": pid}}
        assert ra["prediction"][0]["probabilityDecimal"] == results[pid]["score"]
        assert ra["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] == results[pid]["label"]
        assert ra["status"] == "preliminary"
    assert {(c["status"], c["intent"]) for c in got["treatment"]["CarePlan"]} == {("draft", "proposal")}
    docs = got["report"]["DocumentReference"]
    assert {d["docStatus"] for d in docs} == {"preliminary"}
    texts = [base64.b64decode(d["content"][0]["attachment"]["data"]).decode("utf-8") for d in docs]
    assert all(t.startswith("OFFLINE TEMPLATE DRAFT") for t in texts)
    assert {t["focus"]["reference"] for t in got["report"]["Task"]} == {f"DocumentReference/{d['id']}" for d in docs}
    # Only the minimum leaves: no names, addresses or dates of birth, in the files or the drafted text
    everything = "\n".join(p.read_text(encoding="utf-8") for o in out.values() for p in o.glob("*.ndjson"))
    for phi in NAMES:
        assert phi not in everything and all(phi not in t for t in texts)
    assert "MRN-7731002" in everything  # the job's own patient identifier is the reference
    # And a second export writes byte-identical files (manifest included)
    before = _files(out["risk"])
    assert _export(env, risk.job_id, out["risk"]) == manifests["risk"] and _files(out["risk"]) == before
    again = _export(env, risk.job_id, tmp_path / "elsewhere", "--jobs", "2")  # two processes, the same files
    assert {k: v for k, v in _files(tmp_path / "elsewhere").items() if k.endswith(".ndjson")} == {
        k: v for k, v in before.items() if k.endswith(".ndjson")}  # fmt: skip
    assert again["extension"]["medbatch"]["exported"] == 30
    # --to also sends them, as transaction Bundles, to a FHIR server (a local one this test starts)
    with FakeFhirServer() as server:
        pushed = run_cli({**env, "MEDBATCH_FHIR_TOKEN": "t0ken"}, "export", "fhir", str(report.job_id),
                         "-o", str(out["report"]), "--to", server.url)  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        assert "9 resources sent" in pushed.stderr and "t0ken" not in pushed.stderr + pushed.stdout
        assert len(server.stored) == 9 and server.headers[0]["Authorization"] == "Bearer t0ken"
        assert {k: json.dumps(v) for k, v in server.stored.items()} == {
            f"{x['resourceType']}/{x['id']}": json.dumps(x) for rs in got["report"].values() for x in rs}  # fmt: skip
    creds = run_cli(env, "export", "fhir", str(report.job_id), "-o", str(out["report"]),
                    "--to", "https://user:pw@ehr.example/fhir")  # fmt: skip
    assert creds.returncode == 2 and "MEDBATCH_FHIR_TOKEN" in creds.stderr and "pw@" not in creds.stderr


def test_unknown_and_unfinished_jobs_are_refused(db_url, service_env, tmp_path):
    unknown = run_cli(service_env, "export", "fhir", "999999", "-o", str(tmp_path / "x"))
    assert unknown.returncode == 4 and "no job 999999" in unknown.stderr
    with session_scope(db_url) as s:
        job_id = repo.create_job(s, workload="risk", source_uri="staging.csv", model_name="risk", model_version="v")
    staging = run_cli(service_env, "export", "fhir", str(job_id), "-o", str(tmp_path / "y"))
    assert staging.returncode == 2 and "has not finished (status staging)" in staging.stderr
    assert not (tmp_path / "y").exists()


@sqlite_only
def test_xray_job_exports_observation_and_report_referring_to_the_imaging_study(
    db_url, sender, start_worker, service_env, tmp_path, xray_artifact
):
    import pydicom

    # Given an X-ray job over synthetic PNG and DICOM files and a real CR film with a Study Instance UID
    register_xray(db_url, xray_artifact)
    start_worker("imaging")
    folder = tmp_path / "night"
    write_xrays(folder, 4, size=96, seed=5, formats=("png", "dicom"))  # 4 PNG + 4 DICOM
    shutil.copy(DICOM_DIR / "RG1_UNCR.dcm", folder / "IM0001")
    study = str(pydicom.dcmread(DICOM_DIR / "RG1_UNCR.dcm", stop_before_pixels=True).StudyInstanceUID)
    summary = submit_images(folder, database_url=db_url, send=sender, batch_size=5)
    counts = wait_for_job(db_url, summary.job_id, timeout_s=180)
    assert counts["status"] == "completed" and counts["items_done"] == 9
    # When it is exported
    manifest = _export(service_env, summary.job_id, tmp_path / "fhir")
    got = _revalidate(tmp_path / "fhir", manifest)
    # Then the DICOM results (which carry a patient id) are an Observation + a preliminary DiagnosticReport;
    # PNGs have no patient identifier and are skipped, counted; only RG1 has a study to refer to
    stats = manifest["extension"]["medbatch"]
    assert stats["items"] == 9 and stats["skipped_no_patient"] == 4 and stats["exported"] == 5
    assert stats["without_study"] == 4
    assert len(got["Observation"]) == len(got["DiagnosticReport"]) == 5
    rg1 = [d for d in got["DiagnosticReport"] if d["subject"]["identifier"]["value"] == "9RG1"]
    ref = {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}}
    assert len(rg1) == 1 and rg1[0]["imagingStudy"] == [ref] and rg1[0]["status"] == "preliminary"
    obs = next(o for o in got["Observation"] if f"Observation/{o['id']}" == rg1[0]["result"][0]["reference"])
    assert obs["derivedFrom"] == [ref] and obs["status"] == "preliminary"
    others = [d for d in got["DiagnosticReport"] if d is not rg1[0]]
    assert all("imagingStudy" not in d for d in others)
    assert "SYNTHETIC^PATIENT" not in (tmp_path / "fhir" / "Observation.ndjson").read_text()
