"""DICOM objects and DICOMweb plumbing without a PACS: derived UIDs, dciodvfy on SR/SC, secrets kept out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medbatch.config import Settings
from medbatch.errors import InvalidInput, PacsUnavailable
from medbatch.interop import dicom_objects as objects
from medbatch.interop.delivery import normalise_destination
from medbatch.interop.dicomweb import DicomWeb, PacsAccess, check_study_date, check_url, first_part
from medbatch.interop.listener import instance_path
from tests.helpers import need
from tests.orthanc import dciodvfy_errors, dciodvfy_missing

DICOM_DIR = Path(pytest.importorskip("data_store").__file__).parent / "data"


def _source(name: str = "RG1_J2KR.dcm"):
    return pydicom.dcmread(DICOM_DIR / name, stop_before_pixels=True)


def _finding(positive: bool) -> objects.XrayFinding:
    return objects.XrayFinding(
        probability=0.91 if positive else 0.12, threshold=0.5, positive=positive, model_name="xray",
        model_version="0123456789abcdef",
        findings_text="DRAFT: patchy opacity, for clinician review" if positive else None,
    )


def test_uids_derive_from_source_model_and_kind_only():
    a, b = objects.object_uids(_source(), "v1"), objects.object_uids(_source(), "v1")
    assert a == b and len(set(a.values())) == len(a)
    assert objects.object_uids(_source(), "v2")["sr"] != a["sr"]
    assert objects.object_uids(_source("RG1_UNCR.dcm"), "v1")["sr"] != a["sr"]
    for uid in a.values():
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid
    # the same finding built twice is the same object, byte for byte
    assert objects.to_bytes(objects.build_sr(_source(), _finding(True))) == objects.to_bytes(
        objects.build_sr(_source(), _finding(True))
    )
    rgb = np.full((40, 40, 3), 90, np.uint8)
    sc = [objects.to_bytes(objects.build_sc(_source(), rgb, _finding(True))) for _ in range(2)]
    assert sc[0] == sc[1]


@pytest.mark.parametrize("positive", [True, False])
def test_sr_and_sc_pass_dciodvfy(tmp_path, positive):
    if dciodvfy_missing():
        need("dciodvfy", dciodvfy_missing())
    built = [("sr", objects.build_sr(_source(), _finding(positive)))]
    if positive:
        rgb = (np.random.default_rng(0).random((120, 100, 3)) * 255).astype(np.uint8)
        built.append(("sc", objects.build_sc(_source(), rgb, _finding(positive))))
    for kind, ds in built:
        assert dciodvfy_errors(objects.to_bytes(ds), tmp_path) == [], kind
        assert ds.StudyInstanceUID == _source().StudyInstanceUID and ds.PatientID == _source().PatientID
    sr = built[0][1]
    assert (sr.PreliminaryFlag, sr.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")


def test_caption_is_burned_into_the_pixels():
    rgb = np.zeros((80, 400, 3), np.uint8)
    out = objects.burn_caption(rgb)
    assert out.shape[0] > 80 and out[80:].max() > 200  # white text on the added band
    assert (out[:80] == 0).all()  # the image itself is untouched


def test_credentials_never_in_a_repr_url_or_error():
    access = Settings(pacs_username="u", pacs_password="pw-9f3c", pacs_token="tok-77aa").pacs_access()
    assert "pw-9f3c" not in repr(access) and "tok-77aa" not in repr(access)
    assert access.session().headers["Authorization"] == "Bearer tok-77aa"  # the token wins over basic auth
    with pytest.raises(InvalidInput) as exc:
        check_url("http://u:pw-9f3c@pacs:8042/dicom-web")
    assert "pw-9f3c" not in str(exc.value)
    web = DicomWeb("http://127.0.0.1:9/dicom-web", PacsAccess(password="pw-9f3c", username="u", timeout_s=2))
    with pytest.raises(PacsUnavailable) as down:
        list(web.search_studies())
    assert "pw-9f3c" not in str(down.value) and "127.0.0.1" in str(down.value)


def test_arguments_are_checked():
    assert check_study_date("20261130") == "20261130" and check_study_date("20261101-20261130")
    for bad in ("2026-11-30", "yesterday", "2026113"):
        with pytest.raises(InvalidInput):
            check_study_date(bad)
    assert normalise_destination("ORTHANC@pacs.lan:4242") == "ORTHANC@pacs.lan:4242"
    assert normalise_destination("http://pacs:8042/dicom-web/") == "http://pacs:8042/dicom-web"
    for bad in ("pacs:4242", "A@b:99999", "TOO-LONG-AE-TITLE-X@h:1", "ftp://pacs"):
        with pytest.raises(InvalidInput):
            normalise_destination(bad)


def test_multipart_first_part_and_listener_names():
    body = b'--b1\r\nContent-Type: application/dicom\r\n\r\nDICOMBYTES\r\n--b1--\r\n'
    assert first_part(body, 'multipart/related; type="application/dicom"; boundary=b1') == b"DICOMBYTES"
    assert first_part(b"raw", "application/dicom") == b"raw"
    path = instance_path(Path("/in"), "1.2.3", "../../etc/passwd")
    assert path.parent.parent == Path("/in") and ".." not in path.parts and path.suffix == ".dcm"
