"""Build FHIR R4B resources (plain dicts) from medbatch results, one builder per workload.

Each builder takes one result row (as :func:`medbatch.db.repository.fhir.iter_fhir_rows` yields it) and
returns the resources for it, without their Provenance (:func:`provenance` adds one per resource).

- ids are deterministic (uuid5 of the database's identity, the item id and the resource kind), so an
  export run twice writes identical files and a server that imports both holds each resource once;
- the patient is referred to by identifier (the input's own patient id and the configured system): no
  Patient resource is made up, and nothing else about the patient (no name) leaves;
- every status says what a model's output is: preliminary, draft, a proposal awaiting review.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from medbatch.interop.fhir import codes as c

#: Namespace of every uuid5 medbatch derives for FHIR ids (fixed: changing it changes every id).
NAMESPACE = uuid.UUID("6f1d4b7e-2a35-5c1e-9a8b-0c4d6e7f8a9b")
#: DICOM UIDs are dotted decimal, at most 64 characters.
_DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class Context:
    """What every builder needs besides the row: whose ids, and how the hospital names its patients."""

    instance: str  # the database's identity (medbatch_instance): ids never collide across medbatch installs
    patient_system: str  # identifier system of the job's patient ids (e.g. the hospital's MRN system URI)


def resource_id(ctx: Context, item_id: int, kind: str) -> str:
    """The deterministic id of one resource kind (``observation``, ``provenance:observation``...) of an item."""
    return str(uuid.uuid5(NAMESPACE, f"{ctx.instance}/item/{item_id}/{kind}"))


def device_id(name: str, version: str) -> str:
    """A model version is one Device wherever it runs (its version is the artifact's hash)."""
    return str(uuid.uuid5(NAMESPACE, f"device/{name}/{version}"))


def instant(at: Any) -> str:
    """An ``instant`` (UTC, milliseconds); SQLite gives naive datetimes, stored as UTC."""
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def coding(code: tuple[str, str, str]) -> dict[str, str]:
    system, value, display = code
    return {"system": system, "code": value, "display": display}


def concept(code: tuple[str, str, str], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(code)]}
    if text:
        out["text"] = text
    return out


def ref(resource: dict[str, Any]) -> dict[str, str]:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def patient_ref(ctx: Context, patient_id: str) -> dict[str, Any]:
    """A logical reference: the EHR resolves it to its own Patient by identifier."""
    return {"type": "Patient", "identifier": {"system": ctx.patient_system, "value": patient_id}}


def study_ref(study_uid: str) -> dict[str, Any]:
    return {"type": "ImagingStudy", "identifier": {"system": c.DICOM_UID, "value": f"urn:oid:{study_uid}"}}


def valid_dicom_uid(uid: Any) -> str | None:
    uid = str(uid or "").strip()
    return uid if uid and len(uid) <= 64 and _DICOM_UID.match(uid) else None


def device(name: str, version: str) -> dict[str, Any]:
    """The model as a Device: its name and version (the artifact hash), nothing about where it runs."""
    return {
        "resourceType": "Device",
        "id": device_id(name, version),
        "status": "active",
        "manufacturer": "medbatch",
        "deviceName": [{"name": name, "type": "model-name"}],
        "type": {"text": "AI model (decision support; every output requires clinician review)"},
        "version": [{"value": version}],
    }


def provenance(ctx: Context, item_id: int, target: dict[str, Any], dev: dict[str, Any], recorded: str,
               sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Who made ``target``: the model (Device), when, and from what (the ImagingStudy for X-rays)."""
    out: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": resource_id(ctx, item_id, f"provenance:{target['resourceType']}"),
        "target": [ref(target)],
        "recorded": recorded,
        "activity": concept(c.CREATE),
        "agent": [{"type": concept(c.AUTHOR), "who": ref(dev)}],
    }
    if sources:
        out["entity"] = [{"role": "source", "what": s} for s in sources]
    return out


def _quantity(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "probability", "system": c.UCUM, "code": "1"}


def xray(ctx: Context, row: dict[str, Any], dev: dict[str, Any]) -> list[dict[str, Any]]:
    """Observation (pneumonia present/absent, its probability and the threshold) + DiagnosticReport.

    Both refer to the ImagingStudy by Study Instance UID when the image came from DICOM and carries
    one (``row["study_uid"]``); a PNG/JPEG or a DICOM without it gets no study reference.
    """
    detail = row.get("detail") or {}
    p = float(detail.get("probability", row["score"]))
    threshold = float(detail["threshold"])
    positive = p >= threshold
    issued = instant(row["created_at"])
    subject = patient_ref(ctx, row["patient_ref"])
    study = [study_ref(row["study_uid"])] if row.get("study_uid") else []
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id(ctx, row["item_id"], "observation"),
        "status": "preliminary",
        "category": [concept(c.IMAGING_CATEGORY)],
        "code": concept(c.PNEUMONIA, "Pneumonia (AI finding on a chest radiograph)"),
        "subject": subject,
        "issued": issued,
        "valueCodeableConcept": concept(c.PRESENT if positive else c.ABSENT),
        "device": ref(dev),
        "component": [
            {"code": concept(c.CERTAINTY, "Model probability of the finding"), "valueQuantity": _quantity(p)},
            {"code": {"text": "Decision threshold"}, "valueQuantity": _quantity(threshold)},
        ],
    }
    if study:
        obs["derivedFrom"] = study
    findings = detail.get("findings")
    conclusion = findings or (
        f"Preliminary AI result, not reviewed: no pneumonia finding (probability {p:.3f} below the "
        f"threshold {threshold:.3f})."
    )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": resource_id(ctx, row["item_id"], "diagnosticreport"),
        "status": "preliminary",
        "category": [concept(c.RADIOLOGY)],
        "code": concept(c.IMAGING_STUDY_REPORT),
        "subject": subject,
        "issued": issued,
        "result": [ref(obs)],
        "conclusion": conclusion,
    }
    if study:
        report["imagingStudy"] = study
    if positive:
        report["conclusionCode"] = [concept(c.PNEUMONIA)]
    return [obs, report]


def _qualitative(label: str | None, score: float, threshold: float | None) -> str:
    if label in c.QUALITATIVE_RISK:
        return label
    return "high" if threshold is not None and score >= threshold else "low"


def risk(ctx: Context, row: dict[str, Any], dev: dict[str, Any]) -> list[dict[str, Any]]:
    """RiskAssessment: the model's probability of its outcome and the qualitative risk it labelled."""
    detail = row.get("detail") or {}
    threshold = detail.get("threshold")
    score = float(row["score"])
    qualitative = _qualitative(row.get("label"), score, threshold)
    out: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": resource_id(ctx, row["item_id"], "riskassessment"),
        "status": "preliminary",
        "subject": patient_ref(ctx, row["patient_ref"]),
        "occurrenceDateTime": instant(row["created_at"]),
        "performer": ref(dev),
        "method": {"text": f"{row['model_name']} {row['model_version']} (see its model card)"},
        "prediction": [
            {
                "outcome": {"text": f"The outcome the {row['model_name']} model predicts (see its model card)"},
                "probabilityDecimal": score,
                "qualitativeRisk": {"coding": [{"system": c.RISK_PROBABILITY, "code": qualitative}]},
            }
        ],
    }
    if threshold is not None:
        out["note"] = [{"text": f"Labelled high at probability >= {float(threshold):.4f}. Requires clinician review."}]
    return [out]


def treatment(ctx: Context, row: dict[str, Any], dev: dict[str, Any]) -> list[dict[str, Any]]:
    """CarePlan, draft and a proposal: the plan class the model found most probable, never an order."""
    label = str(row["label"])
    probs = (row.get("detail") or {}).get("probabilities") or {}
    shown = ", ".join(f"{k} {float(v):.3f}" for k, v in probs.items())
    return [
        {
            "resourceType": "CarePlan",
            "id": resource_id(ctx, row["item_id"], "careplan"),
            "status": "draft",
            "intent": "proposal",
            "title": f"Proposed by {row['model_name']}: {label.replace('_', ' ')}",
            "description": "Machine-proposed plan class for clinician review; not an order.",
            "subject": patient_ref(ctx, row["patient_ref"]),
            "created": instant(row["created_at"]),
            "author": ref(dev),
            "activity": [
                {
                    "detail": {
                        "code": {
                            "coding": [{"system": f"urn:medbatch:class:{row['model_name']}", "code": label}],
                            "text": label.replace("_", " "),
                        },
                        "status": "not-started",
                        "description": f"Model probability {float(row['score']):.3f}",
                    }
                }
            ],
            "note": [{"text": f"Class probabilities: {shown}. Requires clinician review."}],
        }
    ]


def report(ctx: Context, row: dict[str, Any], dev: dict[str, Any]) -> list[dict[str, Any]]:
    """DocumentReference (docStatus preliminary) holding the drafted text, and a Task to approve it."""
    text = row.get("report_text") or ""
    data = text.encode("utf-8")
    created = instant(row["created_at"])
    subject = patient_ref(ctx, row["patient_ref"])
    doc = {
        "resourceType": "DocumentReference",
        "id": resource_id(ctx, row["item_id"], "documentreference"),
        "status": "current",
        "docStatus": "preliminary",
        "type": concept(c.NOTE, "AI-drafted report"),
        "subject": subject,
        "date": created,
        "author": [ref(dev)],
        "description": "Drafted by a language model: requires review and approval by a clinician before use.",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(data).decode("ascii"),
                    "size": len(data),
                    "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),  # noqa: S324 - FHIR's hash
                    "title": "Draft report",
                    "creation": created,
                }
            }
        ],
    }
    out = [doc]
    if row.get("requires_review", True):
        out.append(
            {
                "resourceType": "Task",
                "id": resource_id(ctx, row["item_id"], "task"),
                "status": "requested",
                "intent": "order",
                "priority": "routine",
                "code": concept(c.APPROVE),
                "description": "Review the drafted report and approve (docStatus final) or correct it.",
                "focus": ref(doc),
                "for": subject,
                "authoredOn": created,
                "requester": ref(dev),
            }
        )
    return out


BUILDERS = {"xray": xray, "risk": risk, "treatment": treatment, "report": report}
