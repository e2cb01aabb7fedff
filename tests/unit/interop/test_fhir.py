"""FHIR resources: each builder's output passes fhir.resources (R4B) and medbatch's own checks, and the own
checks refuse what the library lets through (bad codes, out-of-range probabilities, a model's output as final)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import data_store
import numpy as np
import pytest

from medbatch.errors import InvalidFhirResource
from medbatch.interop.fhir import checks
from medbatch.interop.fhir import resources as r
from medbatch.interop.fhir.bulk import NdjsonWriter, manifest
from medbatch.interop.fhir.export import study_uid
from tests.helpers import FHIR_AT as AT
from tests.helpers import FHIR_STUDY as STUDY
from tests.helpers import fhir_context
from tests.helpers import fhir_rows as rows

DICOM_DIR = Path(data_store.__file__).parent / "data"
CTX = fhir_context()


def built(workload: str, **changes) -> list[dict]:
    row = {**rows()[workload], **changes}
    dev = r.device(row["model_name"], row["model_version"])
    out = r.BUILDERS[workload](CTX, row, dev)
    return out + [r.provenance(CTX, row["item_id"], x, dev, r.instant(AT)) for x in out] + [dev]


@pytest.mark.parametrize(
    "workload, types",
    [
        ("risk", ["RiskAssessment", "Provenance", "Device"]),
        ("treatment", ["CarePlan", "Provenance", "Device"]),
        ("xray", ["Observation", "DiagnosticReport", "Provenance", "Provenance", "Device"]),
        ("report", ["DocumentReference", "Task", "Provenance", "Provenance", "Device"]),
    ],
)
def test_each_workload_builds_resources_that_pass_both_checks(workload, types):
    resources = built(workload)
    assert [x["resourceType"] for x in resources] == types
    for resource in resources:
        checks.check(resource)  # raises on any problem
        assert checks.structure_problems(resource) == [] and checks.own_problems(resource) == []


def test_statuses_say_a_model_proposed_it():
    risk, treatment, xray, report = (built(w)[0] for w in ("risk", "treatment", "xray", "report"))
    assert risk["status"] == "preliminary" and risk["prediction"][0]["probabilityDecimal"] == 0.41
    assert risk["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] == "high"
    assert (treatment["status"], treatment["intent"]) == ("draft", "proposal")
    assert xray["status"] == "preliminary" and xray["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    diag = built("xray")[1]
    assert diag["status"] == "preliminary" and diag["result"] == [{"reference": f"Observation/{xray['id']}"}]
    study = {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY}"}}
    assert diag["imagingStudy"] == [study] and xray["derivedFrom"] == [study]
    assert report["docStatus"] == "preliminary"
    task = built("report")[1]
    assert task["focus"] == {"reference": f"DocumentReference/{report['id']}"} and task["status"] == "requested"


def test_patient_is_referred_to_by_identifier_and_no_name_leaves():
    for workload in ("risk", "treatment", "xray", "report"):
        subject = built(workload)[0].get("subject")
        assert subject == {"type": "Patient", "identifier": {"system": CTX.patient_system, "value": "MRN-0042"}}
    text = json.dumps([built(w)[:-1] for w in ("risk", "treatment", "xray", "report")])  # less the Device
    assert '"Patient/' not in text and '"name"' not in text and "Patient" in text


def test_negative_xray_is_absent_and_without_study_has_no_reference():
    obs, diag = built("xray", score=0.1, detail={"probability": 0.1, "threshold": 0.5, "findings": None},
                      study_uid=None)[:2]  # fmt: skip
    assert obs["valueCodeableConcept"]["coding"][0]["code"] == "272519000"
    assert "derivedFrom" not in obs and "imagingStudy" not in diag and "conclusionCode" not in diag
    for resource in (obs, diag):
        checks.check(resource)


def test_ids_are_deterministic_and_distinct_per_item_kind_and_database():
    assert built("risk") == built("risk")
    ids = [x["id"] for w in ("risk", "treatment", "xray", "report") for x in built(w)[:-1]]
    assert len(ids) == len(set(ids))
    other = r.Context(instance="another-database", patient_system=CTX.patient_system)
    assert r.resource_id(other, 11, "riskassessment") != r.resource_id(CTX, 11, "riskassessment")


def _refused(resource: dict, *fragments: str) -> None:
    problems = checks.own_problems(resource)
    assert problems, "medbatch's own checks let it through"
    for fragment in fragments:
        assert any(fragment in p for p in problems), problems
    with pytest.raises(InvalidFhirResource):
        checks.check(resource)


def test_library_lets_bogus_status_and_probability_through_and_own_checks_refuse_them():
    risk = built("risk")[0]
    bogus = {**risk, "status": "bogus"}
    assert checks.structure_problems(bogus) == []  # what fhir.resources alone would accept
    _refused(bogus, "status: not in the RiskAssessment status value set")
    high = copy.deepcopy(risk)
    high["prediction"][0]["probabilityDecimal"] = 1.7
    assert checks.structure_problems(high) == []
    _refused(high, "probability must lie in [0, 1]")
    high["prediction"][0]["probabilityDecimal"] = -0.01
    _refused(high, "probability must lie in [0, 1]")


@pytest.mark.parametrize(
    "workload, index, path, value, fragment",
    [
        ("risk", 0, ("status",), "final", "must be 'preliminary'"),
        ("risk", 0, ("prediction", 0, "qualitativeRisk", "coding", 0, "code"), "very-high", "value set"),
        ("treatment", 0, ("status",), "active", "must be 'draft'"),
        ("treatment", 0, ("intent",), "order", "must be 'proposal'"),
        ("treatment", 0, ("intent",), "bogus", "intent value set"),
        ("treatment", 0, ("activity", 0, "detail", "status"), "bogus", "detail.status"),
        ("xray", 0, ("status",), "final", "must be 'preliminary'"),
        ("xray", 0, ("component", 0, "valueQuantity", "value"), 1.5, "probability must lie in [0, 1]"),
        ("xray", 0, ("valueCodeableConcept", "coding", 0, "code"), "123", "Present or Absent"),
        ("xray", 0, ("derivedFrom", 0, "identifier", "value"), "urn:oid:1.2.x", "Study Instance UID"),
        ("xray", 1, ("status",), "bogus", "DiagnosticReport status value set"),
        ("report", 0, ("docStatus",), "final", "must be 'preliminary'"),
        ("report", 0, ("docStatus",), "bogus", "composition status"),
        ("report", 0, ("content", 0, "attachment", "size"), 3, "size"),
        ("report", 0, ("content", 0, "attachment", "hash"), "AAAA", "SHA-1"),
        ("report", 1, ("intent",), "bogus", "Task intent"),
        ("report", 1, ("status",), "completed", "must be 'requested'"),
        ("report", 0, ("subject", "identifier", "value"), "", "logical reference"),
        ("risk", 1, ("agent", 0, "type", "coding", 0, "code"), "bogus", "value set"),
        ("risk", 1, ("target", 0, "reference"), "RiskAssessment/has spaces", "Type/id"),
        ("risk", 2, ("deviceName", 0, "type"), "bogus", "deviceName[0].type"),
    ],
)
def test_own_checks_refuse_bad_codes_ranges_and_references(workload, index, path, value, fragment):
    resource = copy.deepcopy(built(workload)[index])
    node = resource
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    _refused(resource, fragment)


def test_structure_problems_name_the_element_never_the_value():
    risk = {**built("risk")[0], "unknownElement": "MRN-0042"}
    problems = checks.structure_problems(risk)
    assert problems and "unknownElement" in problems[0] and "MRN-0042" not in " ".join(problems)
    with pytest.raises(InvalidFhirResource) as info:
        checks.check({**risk, "subject": {"type": "Patient", "identifier": {"value": "MRN-0042", "bogus": 1}}})
    assert "MRN-0042" not in str(info.value)


def test_writer_writes_one_line_per_resource_and_replaces_a_previous_export(tmp_path):
    old = tmp_path / "CarePlan.ndjson"
    old.write_text("stale\n")
    writer = NdjsonWriter(tmp_path)
    for resource in built("risk"):
        writer.write(resource)
    files = writer.commit()
    assert set(files) == {"RiskAssessment", "Provenance", "Device"} and not old.exists()
    lines = (tmp_path / "RiskAssessment.ndjson").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == [built("risk")[0]]
    m = manifest(transaction_time=r.instant(AT), request="medbatch export fhir 1", files=files,
                 counts=writer.counts, extra={})  # fmt: skip
    assert [o["type"] for o in m["output"]] == ["Device", "RiskAssessment", "Provenance"]
    assert m["transactionTime"] == "2026-12-01T03:04:05.678Z" and m["error"] == []
    aborted = NdjsonWriter(tmp_path)
    aborted.write(built("treatment")[0])
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Device.ndjson", "Provenance.ndjson", "RiskAssessment.ndjson"]


def test_study_uid_from_the_payload_or_the_dicom_header(tmp_path):
    from medbatch.producer.synthetic import write_synthetic_dicom

    assert study_uid({"kind": "dicom", "study": STUDY, "sop": "1.2.3"}) == STUDY
    assert study_uid({"kind": "dicom", "study": "not a uid"}) is None
    rg1 = DICOM_DIR / "RG1_UNCR.dcm"
    import pydicom

    expected = pydicom.dcmread(rg1, stop_before_pixels=True).StudyInstanceUID
    assert expected and study_uid({"kind": "dicom", "path": str(rg1)}) == expected
    no_study = write_synthetic_dicom(tmp_path / "s.dcm", np.zeros((8, 8)))
    assert study_uid({"kind": "dicom", "path": str(no_study)}) is None
    assert study_uid({"kind": "dicom", "path": str(tmp_path / "gone.dcm")}) is None
    assert study_uid({"kind": "png", "path": str(rg1)}) is None


def test_processes_give_the_same_outcomes_in_the_same_order(monkeypatch):
    from medbatch.interop.fhir import export

    monkeypatch.setattr(export, "CHUNK", 3)  # 20 rows: 7 chunks over 2 processes, at most 4 in flight
    many = [{**rows()["risk"], "item_id": i, "patient_ref": None if i == 5 else f"P{i}"} for i in range(20)]
    many[7]["score"] = 1.7  # withheld, with an OperationOutcome
    serial = list(export._outcomes(CTX, "risk", iter(copy.deepcopy(many)), 1))
    assert [o["kind"] for o in serial].count("ok") == 18 and serial[5] == {"kind": "skipped"}
    assert serial[7]["kind"] == "invalid" and "probability must lie in [0, 1]" in serial[7]["outcome"]
    assert list(export._outcomes(CTX, "risk", iter(copy.deepcopy(many)), 2)) == serial
