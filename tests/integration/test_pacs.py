"""X-rays from a real PACS (Orthanc) and findings back into it as DICOM SR and Secondary Capture.

Orthanc is Debian's, started by the fixture with its own configuration, free ports and storage
(tests/orthanc.py). Images: pydicom-data's RG1 chest film uncompressed and JPEG 2000, generated CR
instances with patient names, and a CT instance in the same study (refused with a reason). Every SR and
SC produced is read back from Orthanc, checked by dciodvfy (0 errors) and parsed with highdicom.
"""

from __future__ import annotations

import logging

import pydicom
import pytest
from sqlalchemy import select

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import DicomDelivery
from medbatch.errors import PacsUnavailable
from medbatch.interop.delivery import export_job
from medbatch.interop.dicomweb import PacsAccess
from medbatch.producer.pacs import submit_pacs
from tests.helpers import need, register_xray
from tests.orthanc import check_every_object, dciodvfy_errors, dciodvfy_missing, process, start_orthanc, upload_night

pytestmark = pytest.mark.integration

#: STOW-RS refused with 403 (the store itself is refused; reads stay allowed).
REFUSE_STOW = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
   if method == 'POST' and string.find(uri, 'dicom%-web/studies') then
      return false
   end
   return true
end
"""


def _coded_items(ds) -> set[tuple[str, str]]:
    """(concept name, coded value) of every CODE item in an SR content tree."""
    found = set()
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "CODE":
            found.add((item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue))
        elif "ConceptNameCodeSequence" in item:
            found.add((item.ConceptNameCodeSequence[0].CodeValue, ""))
        found |= _coded_items(item)
    return found


def pull_job(db_url, pacs, tmp_path, xray_artifact, *, rg1: bool = True) -> tuple[int, dict]:
    register_xray(db_url, xray_artifact)
    night = upload_night(pacs, tmp_path, rg1=rg1)
    summary = submit_pacs(pacs.dicomweb, database_url=db_url, send=lambda *a: None, batch_size=3)
    process(db_url, summary.job_id, tmp_path / "results")
    return summary.job_id, {**night, "summary": summary}


def test_pacs_pull_classify_export_read_back(sqlite_url, pacs, tmp_path, xray_artifact, caplog):
    if dciodvfy_missing():
        need("dciodvfy", dciodvfy_missing())
    caplog.set_level(logging.INFO, logger="medbatch")
    # Given a PACS holding the RG1 film twice (uncompressed, JPEG 2000), three CR films and a CT in their study
    job_id, night = pull_job(sqlite_url, pacs, tmp_path, xray_artifact)
    summary = night["summary"]
    # Then each radiograph is one item, the CT a rejection with the files' reason, and every item has a result
    assert summary.items_staged == 5 and summary.rows_rejected == 1
    with session_scope(sqlite_url) as s:
        counts = repo.job_counts(s, job_id)
        errors = list(repo.iter_errors(s, job_id))
        rows = list(repo.iter_results(s, job_id))
    assert counts["items_done"] == 5 and counts["status"] == "completed_with_errors"
    assert len(errors) == 1 and "DICOM modality CT is not a radiograph" in errors[0]["reason"]
    assert {r["detail"]["modality"] for r in rows} == {"CR"} and all(r["detail"]["kind"] == "dicom" for r in rows)
    positives = [r for r in rows if r["label"] == "pneumonia"]
    assert positives, "the synthetic pneumonia films should score positive"
    # When the findings go back by STOW-RS
    first = export_job(job_id, pacs.dicomweb, database_url=sqlite_url, access=PacsAccess())
    assert (first.sent, first.failed, first.already_sent) == (5 + len(positives), 0, 0), first.reasons
    # Then QIDO-RS finds one SR per radiograph and one SC per positive
    assert pacs.count_instances(Modality="SR") == 5
    assert pacs.count_instances(Modality="OT") == len(positives)
    # Each object read back from Orthanc passes dciodvfy and parses with highdicom
    import highdicom as hd

    with session_scope(sqlite_url) as s:
        deliveries = list(s.scalars(select(DicomDelivery).where(DicomDelivery.job_id == job_id)))
    assert {d.status for d in deliveries} == {"sent"} and len(deliveries) == first.sent
    for d in deliveries:
        data = pacs.instance_bytes(d.sop_instance_uid)
        assert dciodvfy_errors(data, tmp_path) == [], d.kind
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        if d.kind == "sr":
            sr = hd.sr.ComprehensiveSR.from_dataset(ds)
            flags = (sr.PreliminaryFlag, sr.VerificationFlag, sr.CompletionFlag)
            assert flags == ("PRELIMINARY", "UNVERIFIED", "COMPLETE")
            groups = sr.content.get_image_measurement_groups()
            assert len(groups) == 1 and groups[0].finding_type.value == "233604007"  # Pneumonia
            measured = {m.name.value: m.value for m in groups[0].get_measurements()}
            threshold = rows[0]["detail"]["threshold"]
            assert 0 <= measured["111012"] <= 100 and measured["THRESHOLD"] == pytest.approx(100 * threshold)
            present = groups[0].get_qualitative_evaluations()[0].value.value
            assert present == ("52101004" if measured["111012"] >= 100 * threshold else "272519000")
            assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == ds.StudyInstanceUID
            assert ("121005", "121007") in _coded_items(ds)  # Observer Type: Device, never a person
            assert not any(name == "121008" for name, _ in _coded_items(ds))  # no Person Observer Name
        else:
            sc = hd.Image.from_dataset(ds)
            assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
            assert sc.get_frame(1).shape[-1] == 3 and sc.SeriesInstanceUID != ds.StudyInstanceUID
            assert list(sc.ImageType)[:1] == ["DERIVED"] and sc.BurnedInAnnotation == "YES"
            assert "NOT FOR DIAGNOSIS" in sc.ImageComments
            source_uid = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
            assert source_uid in {r["source_uri"].rsplit("/", 1)[-1] for r in positives}
    # When exported again, nothing new is sent and the PACS holds no duplicate
    again = export_job(job_id, pacs.dicomweb, database_url=sqlite_url, access=PacsAccess())
    assert (again.sent, again.already_sent) == (0, first.sent)
    assert pacs.count_instances(Modality="SR") == 5 and pacs.count_instances(Modality="OT") == len(positives)
    # No UID and no patient name reached a log line
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert night["study"] not in logged and not any(n.split("^")[0] in logged for n in night["names"])


def test_pacs_down_mid_export_then_up_every_object_once(sqlite_url, tmp_path, xray_artifact):
    # Given a PACS of its own (this test stops it) and a job pulled from it
    own = start_orthanc(tmp_path / "own-orthanc")
    try:
        job_id, night = pull_job(sqlite_url, own, tmp_path, xray_artifact, rg1=False)
        with session_scope(sqlite_url) as s:
            rows = list(repo.iter_results(s, job_id))
        expected = len(rows) + sum(r["label"] == "pneumonia" for r in rows)

        # When the PACS stops after the first item's objects were sent
        with pytest.raises(PacsUnavailable):
            export_job(
                job_id, own.dicomweb, database_url=sqlite_url, on_item=lambda n: own.stop() if n == 1 else None
            )
        with session_scope(sqlite_url) as s:
            counts = repo.delivery_counts(s, job_id)
            failed = list(s.scalars(select(DicomDelivery).where(DicomDelivery.status == "failed")))
        # Then what was sent is recorded as sent, the rest as failed with the reason, nothing lost
        assert counts.get("sent", 0) >= 1 and counts.get("failed", 0) >= 1
        assert all("unavailable" in d.reason for d in failed)
        # When the PACS is back, the next export sends the rest: every object arrives exactly once
        own.start()
        done = export_job(job_id, own.dicomweb, database_url=sqlite_url)
        assert done.failed == 0 and done.sent + done.already_sent == expected
        assert own.count_instances(Modality="SR") == len(rows)
        assert own.count_instances(Modality="SR") + own.count_instances(Modality="OT") == expected
        with session_scope(sqlite_url) as s:
            assert repo.delivery_counts(s, job_id) == {"sent": expected}
        assert check_every_object(own, tmp_path) == expected
    finally:
        own.stop()


def test_refused_objects_are_recorded_with_the_pacs_reason_and_cstore_delivers(
    sqlite_url, pacs, tmp_path, xray_artifact
):
    # Given a job pulled from the PACS and a second PACS that refuses every STOW-RS (but accepts C-STORE)
    job_id, night = pull_job(sqlite_url, pacs, tmp_path, xray_artifact, rg1=False)
    refusing = start_orthanc(tmp_path / "refusing", lua=REFUSE_STOW)
    try:
        # When the findings are sent there by STOW-RS
        refused = export_job(job_id, refusing.dicomweb, database_url=sqlite_url)
        # Then every object is a recorded delivery error carrying the PACS's answer
        assert refused.sent == 0 and refused.failed == refused.objects > 0
        with session_scope(sqlite_url) as s:
            rows = list(s.scalars(select(DicomDelivery).where(DicomDelivery.destination == refusing.dicomweb)))
            total, listed = repo.delivery_failures(s, [job_id])
        assert rows and all(d.status == "failed" and "403 Forbidden" in d.reason for d in rows)
        assert total == len(rows) and "403" in listed[0]["reason"]
        # and the morning page names them, with the reason, instead of saying all went well
        from datetime import UTC, datetime

        from medbatch.nightly import night_of
        from medbatch.summary import collect, render

        page = render(collect(sqlite_url, night_of(datetime.now(UTC))))
        assert f"Findings not delivered to the PACS ({len(rows)})" in page and "403 Forbidden" in page
        assert "Every job completed cleanly" not in page
        # When they go by C-STORE instead, they arrive (one presentation context per transfer syntax)
        stored = export_job(job_id, refusing.dimse, database_url=sqlite_url, calling_aet="MEDBATCH")
        assert stored.failed == 0 and stored.sent == refused.objects
        assert refusing.count_instances(Modality="SR") == night["radiographs"]
        assert check_every_object(refusing, tmp_path) == stored.sent
    finally:
        refusing.stop()
