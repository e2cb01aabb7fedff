"""The code systems and value sets medbatch's FHIR resources use (R4B, FHIR 4.3.0), in one place.

:mod:`~medbatch.interop.fhir.resources` builds with these; :mod:`~medbatch.interop.fhir.checks` refuses
anything outside them. The value sets are the required bindings of the FHIR specification for the
elements medbatch fills (the library that parses resources checks structure only, not these).
"""

from __future__ import annotations

FHIR_VERSION = "4.3.0"  # R4B

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
PROVENANCE_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
DICOM_UID = "urn:dicom:uid"  # ImagingStudy.identifier system for a Study Instance UID ("urn:oid:" + UID)

# Findings (the same codes as the DICOM SR that H-pacs's export writes).
PNEUMONIA = (SNOMED, "233604007", "Pneumonia")
PRESENT = (SNOMED, "52101004", "Present")
ABSENT = (SNOMED, "272519000", "Absent")
CERTAINTY = (DCM, "111012", "Certainty of Finding")
IMAGING_STUDY_REPORT = (LOINC, "18748-4", "Diagnostic imaging study")
NOTE = (LOINC, "34109-9", "Note")
IMAGING_CATEGORY = (OBSERVATION_CATEGORY, "imaging", "Imaging")
RADIOLOGY = (V2_0074, "RAD", "Radiology")
APPROVE = (TASK_CODE, "approve", "Activate/approve the focal resource")
AUTHOR = (PROVENANCE_AGENT_TYPE, "author", "Author")
CREATE = (DATA_OPERATION, "CREATE", "create")

# Required bindings (FHIR R4B value sets) of the coded elements medbatch writes.
STATUS = {
    "Observation": {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown",
    },
    "DiagnosticReport": {
        "registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled",
        "entered-in-error", "unknown",
    },
    "RiskAssessment": {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown",
    },
    "CarePlan": {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"},
    "DocumentReference": {"current", "superseded", "entered-in-error"},
    "Task": {
        "draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress", "on-hold",
        "failed", "completed", "entered-in-error",
    },
    "Device": {"active", "inactive", "entered-in-error", "unknown"},
}  # fmt: skip
CAREPLAN_INTENT = {"proposal", "plan", "order", "option"}
TASK_INTENT = {
    "unknown", "proposal", "plan", "order", "original-order", "reflex-order", "filler-order", "instance-order",
    "option",
}  # fmt: skip
DOC_STATUS = {"preliminary", "final", "amended", "entered-in-error"}
ACTIVITY_STATUS = {
    "not-started", "scheduled", "in-progress", "on-hold", "completed", "cancelled", "stopped", "unknown",
    "entered-in-error",
}  # fmt: skip
DEVICE_NAME_TYPE = {
    "udi-label-name", "user-friendly-name", "patient-reported-name", "manufacturer-name", "model-name", "other",
}  # fmt: skip
QUALITATIVE_RISK = {"negligible", "low", "moderate", "high", "certain"}
TASK_PRIORITY = {"routine", "urgent", "asap", "stat"}
AGENT_TYPE = {
    "enterer", "performer", "author", "verifier", "legal", "attester", "informant", "custodian", "assembler",
    "composer",
}  # fmt: skip

# medbatch's policy on top of the bindings: a model's output is never final, active or approved.
POLICY_STATUS = {
    "Observation": "preliminary",
    "DiagnosticReport": "preliminary",
    "RiskAssessment": "preliminary",
    "CarePlan": "draft",
    "DocumentReference": "current",  # the document exists; its docStatus says it is a draft
    "Task": "requested",
    "Device": "active",
}
