"""DICOM objects that carry an X-ray result back into the PACS: a Comprehensive SR and a Secondary Capture.

- :func:`build_sr`: a Comprehensive SR following TID 1500 (Measurement Report): finding Pneumonia (SCT
  233604007) present or absent, the model's probability as Certainty of Finding (DCM 111012, in %), the
  decision threshold, the algorithm (model name and version, TID 4019), the source image referenced,
  the draft findings text, PRELIMINARY and UNVERIFIED; the observer is the device, never a person.
- :func:`build_sc`: for a positive, a Secondary Capture of the Grad-CAM overlay in the same study, a new
  series, DERIVED, referencing its source image, with "NOT FOR DIAGNOSIS" burned into the pixels.

Every UID is derived (:func:`derived_uid`) from the source SOP Instance UID, the model version and the
object kind, so exporting twice, or again after a crash, sends the very same objects and the PACS keeps
one copy. Both objects carry the source's patient and study modules: they go back to the same hospital
PACS. Nothing here logs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Namespace of medbatch's derived UIDs (a fixed random UUID: changing it changes every UID).
UID_NAMESPACE = uuid.UUID("6f1c0e0a-3c59-4b8e-9d5e-5b0c2a7f4d11")
MANUFACTURER = "medbatch"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS - model attention (Grad-CAM), draft for clinician review"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


def derived_uid(*parts: str) -> str:
    """A UID that depends on ``parts`` only: ``2.25.`` + the integer of a UUIDv5 (at most 44 characters)."""
    return "2.25." + str(uuid.uuid5(UID_NAMESPACE, "|".join(parts)).int)


@dataclass(frozen=True)
class XrayFinding:
    """One X-ray result, as the export needs it (plain values read from the database)."""

    probability: float
    threshold: float
    positive: bool
    model_name: str
    model_version: str
    findings_text: str | None = None


def object_uids(source: Any, model_version: str) -> dict[str, str]:
    """The UIDs of the SR and SC made for ``source`` (a pydicom Dataset) by ``model_version``."""
    sop, study = str(source.SOPInstanceUID), str(source.StudyInstanceUID)
    return {
        "sr": derived_uid(sop, model_version, "sr"),
        "sc": derived_uid(sop, model_version, "sc"),
        "sr_series": derived_uid(study, model_version, "sr-series"),
        "sc_series": derived_uid(study, model_version, "sc-series"),
        "device": derived_uid("device", model_version),
    }


def _codes():
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {
        "pneumonia": CodedConcept("233604007", "SCT", "Pneumonia"),
        "present": CodedConcept("52101004", "SCT", "Present"),
        "absent": CodedConcept("272519000", "SCT", "Absent"),
        "certainty": CodedConcept("111012", "DCM", "Certainty of Finding"),
        "threshold": CodedConcept("THRESHOLD", "99MEDBATCH", "Decision threshold"),
        "percent": CodedConcept("%", "UCUM", "percent"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        "chest_xray": CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        "device": codes.DCM.Device,
    }


#: Type 2 patient and study attributes the SR and SC copy from the source: present, if empty, in both.
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName",
)


def complete_header(source: Any) -> Any:
    """A copy of ``source`` with every Type 2 patient/study attribute present (empty when the source lacks it)."""
    import copy

    ds = copy.deepcopy(source)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def build_sr(source: Any, finding: XrayFinding) -> Any:
    """The Comprehensive SR (TID 1500) of one X-ray result on ``source`` (the source image's header)."""
    source = complete_header(source)
    from highdicom.sr import (
        AlgorithmIdentification,
        ComprehensiveSR,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TextContentItem,
        TrackingIdentifier,
    )
    from highdicom.sr.enum import RelationshipTypeValues

    c = _codes()
    uids = object_uids(source, finding.model_version)
    algorithm = AlgorithmIdentification(name=finding.model_name, version=finding.model_version)
    observer = ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=c["device"],
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=uids["device"], name=finding.model_name[:64], manufacturer_name=MANUFACTURER,
                model_name=finding.model_version[:64],
            ),
        )
    )
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid(str(source.SOPInstanceUID), finding.model_version, "tracking"), identifier="Pneumonia"
        ),
        finding_type=c["pneumonia"],
        algorithm_id=algorithm,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[
            QualitativeEvaluation(name=c["pneumonia"], value=c["present"] if finding.positive else c["absent"])
        ],
        measurements=[
            Measurement(
                name=c["certainty"], value=round(100.0 * finding.probability, 4), unit=c["percent"],
                algorithm_id=algorithm,
            ),
            Measurement(name=c["threshold"], value=round(100.0 * finding.threshold, 4), unit=c["percent"]),
        ],
    )
    report = MeasurementReport(
        observation_context=observer,
        procedure_reported=c["chest_xray"],
        imaging_measurements=[group],
    )
    text = finding.findings_text or (
        "DRAFT: no pneumonia pattern above the threshold; model output, not a diagnosis, for clinician review."
    )
    root = report[0]
    root.ContentSequence.append(
        TextContentItem(name=c["finding"], value=text[:1024], relationship_type=RelationshipTypeValues.CONTAINS)
    )
    sr = ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=uids["sr_series"],
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids["sr"],
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # PRELIMINARY
        is_verified=False,  # UNVERIFIED
        series_description="medbatch AI findings (draft, unverified)",
    )
    _fixed_times(sr, source)
    return sr


def burn_caption(rgb: np.ndarray, text: str = NOT_FOR_DIAGNOSIS) -> np.ndarray:
    """``rgb`` with a black band and ``text`` in white along its bottom, readable at any size."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    band = max(14, h // 18)
    img = Image.new("RGB", (w, h + band), (0, 0, 0))
    img.paste(Image.fromarray(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)), (0, 0))
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=max(10, band * 2 // 3))
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    label = text
    while label and draw.textlength(label, font=font) > w - 6:
        label = label[:-1]
    draw.text((3, h + (band - font.size if hasattr(font, "size") else 0) // 2), label, fill=(255, 255, 255), font=font)
    return np.asarray(img, dtype=np.uint8)


def build_sc(source: Any, overlay_rgb: np.ndarray, finding: XrayFinding) -> Any:
    """The Secondary Capture of the Grad-CAM overlay (RGB uint8), "NOT FOR DIAGNOSIS" burned in."""
    import warnings

    from pydicom.dataset import Dataset

    source = complete_header(source)
    uids = object_uids(source, finding.model_version)
    pixels = burn_caption(overlay_rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's person-name style hints about the source
        sc = _sc_from(source, pixels, uids)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = str(source.get("BodyPartExamined", "") or "CHEST")
    sc.SeriesDescription = "medbatch Grad-CAM overlay (NOT FOR DIAGNOSIS)"
    sc.ImageComments = NOT_FOR_DIAGNOSIS
    sc.DerivationDescription = f"Grad-CAM attention of {finding.model_name} {finding.model_version}"[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    _fixed_times(sc, source)
    return sc


def _sc_from(source: Any, pixels: np.ndarray, uids: dict[str, str]) -> Any:
    import highdicom as hd

    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids["sc_series"],
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids["sc"],
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        laterality=None,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )


def _fixed_times(ds: Any, source: Any) -> None:
    """Every date/time of the object from the source study, so the same export twice gives the same object."""
    date = str(source.get("StudyDate", "") or "19000101")
    time = str(source.get("StudyTime", "") or "000000")
    for kw in ("ContentDate", "SeriesDate", "InstanceCreationDate", "DateOfSecondaryCapture"):
        if kw in ds:
            setattr(ds, kw, date)
    for kw in ("ContentTime", "SeriesTime", "InstanceCreationTime", "TimeOfSecondaryCapture"):
        if kw in ds:
            setattr(ds, kw, time)
    for item in ds.get("ContributingEquipmentSequence", []):  # highdicom stamps "now" on its own entry
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time


def to_bytes(ds: Any) -> bytes:
    """``ds`` as a DICOM Part 10 file."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
