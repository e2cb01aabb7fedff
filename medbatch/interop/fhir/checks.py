"""Validate a FHIR resource twice: its structure with ``fhir.resources`` (R4B), then medbatch's own checks.

The library checks structure and datatypes only (``status="bogus"`` and ``probabilityDecimal=1.7``
pass it), so :func:`own_problems` checks the required bindings of every coded element medbatch writes,
the ranges of its numbers, the shape of its references and medbatch's policy that a model's output is
never final (preliminary, draft, proposal). Messages name paths and rules, never values: a resource
carries a patient identifier, and a problem may be logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from typing import Any

from pydantic import ValidationError

from medbatch.errors import InvalidFhirResource
from medbatch.interop.fhir import codes as c

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LITERAL_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
_CODING_PATH = re.compile(r"\.coding\[\d+\]$")
_STUDY_VALUE = re.compile(r"^urn:oid:[0-9]+(\.[0-9]+)*$")
#: Code systems whose codes medbatch checks wherever a coding names them.
_CODE_SETS = {c.RISK_PROBABILITY: c.QUALITATIVE_RISK, c.PROVENANCE_AGENT_TYPE: c.AGENT_TYPE}
KNOWN_TYPES = frozenset({*c.STATUS, "Provenance"})


def check(resource: dict[str, Any]) -> None:
    """Raise :class:`InvalidFhirResource` unless ``resource`` passes both the library and medbatch's checks."""
    problems = structure_problems(resource) or own_problems(resource)
    if problems:
        name = f"{resource.get('resourceType', '?')}/{resource.get('id', '?')}"
        raise InvalidFhirResource(f"{name}: " + "; ".join(problems))


def structure_problems(resource: dict[str, Any]) -> list[str]:
    """What ``fhir.resources`` (R4B) refuses: unknown or missing elements, wrong datatypes."""
    from fhir.resources.R4B import get_fhir_model_class

    rtype = resource.get("resourceType")
    if rtype not in KNOWN_TYPES:
        return [f"resourceType {rtype!r} is not one medbatch writes"]
    try:
        get_fhir_model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        return [
            f"{'.'.join(str(p) for p in err['loc']) or '(resource)'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        ]
    return []


def own_problems(resource: dict[str, Any]) -> list[str]:
    """The bindings, ranges, references and status policy; [] when all hold."""
    out: list[str] = []
    rtype = resource.get("resourceType")
    if rtype not in KNOWN_TYPES:
        return [f"resourceType {rtype!r} is not one medbatch writes"]
    if not _ID.match(str(resource.get("id", ""))):
        out.append("id: not a FHIR id ([A-Za-z0-9-.], 1-64 characters)")
    if rtype in c.STATUS:
        status = resource.get("status")
        if status not in c.STATUS[rtype]:
            out.append(f"status: not in the {rtype} status value set")
        elif status != c.POLICY_STATUS[rtype]:
            out.append(f"status: a model's {rtype} must be {c.POLICY_STATUS[rtype]!r}")
    for path, cd in _codings(resource, rtype):
        allowed = _CODE_SETS.get(cd.get("system"))
        if allowed is not None and cd.get("code") not in allowed:
            out.append(f"{path}: code not in its value set")
    for path, reference in _references(resource, rtype):
        out.extend(_reference_problems(path, reference))
    out.extend(_PER_TYPE.get(rtype, _none)(resource))
    return out


def _none(_: dict[str, Any]) -> list[str]:
    return []


def _probability(path: str, value: Any) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return [f"{path}: not a number"]
    return [] if 0.0 <= value <= 1.0 else [f"{path}: a probability must lie in [0, 1]"]


def _has_code(cc: Any, *codes: tuple[str, str, str]) -> bool:
    wanted = {(s, v) for s, v, _ in codes}
    return isinstance(cc, dict) and any((x.get("system"), x.get("code")) in wanted for x in cc.get("coding") or [])


def _observation(r: dict[str, Any]) -> list[str]:
    out = []
    if not _has_code(r.get("code"), c.PNEUMONIA):
        out.append("code: must be SNOMED CT 233604007 (Pneumonia)")
    if not any(_has_code(cat, c.IMAGING_CATEGORY) for cat in r.get("category") or []):
        out.append("category: must include observation-category imaging")
    if not _has_code(r.get("valueCodeableConcept"), c.PRESENT, c.ABSENT):
        out.append("valueCodeableConcept: must be SNOMED CT Present or Absent")
    components = r.get("component") or []
    if not any(_has_code(comp.get("code"), c.CERTAINTY) for comp in components):
        out.append("component: the model probability (DCM 111012) is missing")
    for i, comp in enumerate(components):
        q = comp.get("valueQuantity") or {}
        out.extend(_probability(f"component[{i}].valueQuantity.value", q.get("value")))
        if (q.get("system"), q.get("code")) != (c.UCUM, "1"):
            out.append(f"component[{i}].valueQuantity: unit must be UCUM '1'")
    return out


def _diagnostic_report(r: dict[str, Any]) -> list[str]:
    out = []
    if not _has_code(r.get("code"), c.IMAGING_STUDY_REPORT):
        out.append("code: must be LOINC 18748-4")
    if not r.get("result"):
        out.append("result: the Observation is missing")
    return out


def _risk_assessment(r: dict[str, Any]) -> list[str]:
    predictions = r.get("prediction") or []
    out = [] if predictions else ["prediction: missing"]
    for i, p in enumerate(predictions):
        out.extend(_probability(f"prediction[{i}].probabilityDecimal", p.get("probabilityDecimal")))
        q = (p.get("qualitativeRisk") or {}).get("coding") or []
        if not any(x.get("system") == c.RISK_PROBABILITY and x.get("code") in c.QUALITATIVE_RISK for x in q):
            out.append(f"prediction[{i}].qualitativeRisk: must be a risk-probability code")
    return out


def _care_plan(r: dict[str, Any]) -> list[str]:
    out = []
    if r.get("intent") not in c.CAREPLAN_INTENT:
        out.append("intent: not in the CarePlan intent value set")
    elif r.get("intent") != "proposal":
        out.append("intent: a model's CarePlan must be 'proposal'")
    for i, act in enumerate(r.get("activity") or []):
        if (act.get("detail") or {}).get("status") not in c.ACTIVITY_STATUS:
            out.append(f"activity[{i}].detail.status: not in its value set")
    return out


def _document_reference(r: dict[str, Any]) -> list[str]:
    out = []
    if r.get("docStatus") not in c.DOC_STATUS:
        out.append("docStatus: not in the composition status value set")
    elif r.get("docStatus") != "preliminary":
        out.append("docStatus: a drafted report must be 'preliminary'")
    for i, content in enumerate(r.get("content") or []):
        att = content.get("attachment") or {}
        try:
            data = base64.b64decode(att.get("data", ""), validate=True)
        except (binascii.Error, ValueError):
            out.append(f"content[{i}].attachment.data: not base64")
            continue
        if att.get("size") != len(data):
            out.append(f"content[{i}].attachment.size: does not match the data")
        if att.get("hash") != base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"):  # noqa: S324
            out.append(f"content[{i}].attachment.hash: not the SHA-1 of the data")
    return out


def _task(r: dict[str, Any]) -> list[str]:
    out = []
    if r.get("intent") not in c.TASK_INTENT:
        out.append("intent: not in the Task intent value set")
    if r.get("priority") not in c.TASK_PRIORITY:
        out.append("priority: not in the request priority value set")
    if not _has_code(r.get("code"), c.APPROVE):
        out.append("code: must be task-code approve")
    if not r.get("focus"):
        out.append("focus: the document to approve is missing")
    return out


def _device(r: dict[str, Any]) -> list[str]:
    names = r.get("deviceName") or []
    out = [] if names else ["deviceName: missing"]
    for i, n in enumerate(names):
        if n.get("type") not in c.DEVICE_NAME_TYPE:
            out.append(f"deviceName[{i}].type: not in its value set")
    return out


def _provenance(r: dict[str, Any]) -> list[str]:
    out = [] if r.get("target") else ["target: missing"]
    if not r.get("agent"):
        out.append("agent: missing")
    return out


_PER_TYPE = {
    "Observation": _observation,
    "DiagnosticReport": _diagnostic_report,
    "RiskAssessment": _risk_assessment,
    "CarePlan": _care_plan,
    "DocumentReference": _document_reference,
    "Task": _task,
    "Device": _device,
    "Provenance": _provenance,
}


def _walk(node: Any, path: str):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _codings(resource: dict[str, Any], rtype: str):
    for path, node in _walk(resource, rtype):
        if _CODING_PATH.search(path):
            yield path, node


def _references(resource: dict[str, Any], rtype: str):
    for path, node in _walk(resource, rtype):
        if "reference" in node or ("identifier" in node and "type" in node):
            yield path, node


def _reference_problems(path: str, reference: dict[str, Any]) -> list[str]:
    if "reference" in reference:
        return [] if _LITERAL_REF.match(str(reference["reference"])) else [f"{path}: not a Type/id reference"]
    ident = reference.get("identifier") or {}
    system, value = ident.get("system"), ident.get("value")
    if not system or not isinstance(value, str) or not value.strip() or len(value) > 128:
        return [f"{path}: a logical reference needs an identifier system and a value (1-128 characters)"]
    if reference.get("type") == "ImagingStudy" and (system != c.DICOM_UID or not _STUDY_VALUE.match(value)):
        return [f"{path}: an ImagingStudy is referred to by urn:dicom:uid and urn:oid:<Study Instance UID>"]
    return []
