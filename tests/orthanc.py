"""A real PACS for the tests: Debian's Orthanc with its DICOMweb and GDCM plugins, one per test session.

Orthanc runs from its own JSON configuration, on free ports, with its own storage directory and
``RemoteAccessAllowed: false``; it is stopped by PID and waited for (its SQLite index stays locked until
the old process has exited, so a restart waits too). Orthanc 1.10 has no bind option: both ports bind
every interface, which is why the ports are free ones and remote access is off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from sqlalchemy import select

from medbatch.db.session import session_scope
from medbatch.db.tables import Batch
from medbatch.interop.dicomweb import PacsAccess
from medbatch.pipeline.imaging import ImagingOptions, classify_batch
from medbatch.producer.synthetic import synthetic_xray, write_synthetic_dicom
from tests.helpers import need
from tests.services import free_port

PLUGINS = Path("/usr/share/orthanc/plugins")
#: Calling AE titles allowed to C-STORE into the test Orthanc (medbatch's SCU sends as MEDBATCH).
TEST_MODALITIES = {"medbatch": ["MEDBATCH", "127.0.0.1", 11112]}


def orthanc_binary() -> str | None:
    found = shutil.which("Orthanc")  # /usr/sbin is not on every user's PATH
    return found or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None)


def orthanc_missing() -> str | None:
    """Why Orthanc cannot be started here, or None."""
    if orthanc_binary() is None:
        return "Orthanc not installed (apt-get install orthanc orthanc-dicomweb orthanc-gdcm)"
    for lib in ("libOrthancDicomWeb.so", "libOrthancGdcm.so"):
        if not (PLUGINS / lib).exists():
            return f"{PLUGINS / lib} missing (apt-get install orthanc-dicomweb orthanc-gdcm)"
    return None


def dciodvfy_missing() -> str | None:
    return None if shutil.which("dciodvfy") else "dciodvfy not installed (apt-get install dicom3tools)"


@dataclass
class Orthanc:
    workdir: Path
    aet: str = "ORTHANC"
    lua: str | None = None  # a Lua script (a filter that refuses some requests, a routing rule)
    modalities: dict | None = None  # DicomModalities; default TEST_MODALITIES
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def _config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medbatch-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpsVerifyPeers": False,
            "DicomCheckCalledAet": True,
            # Only the listed modalities may C-STORE or C-ECHO: unknown calling AE titles are refused.
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": self.modalities or TEST_MODALITIES,
            "OverwriteInstances": False,
            "StableAge": 1,
            "Plugins": [str(PLUGINS / "libOrthancDicomWeb.so"), str(PLUGINS / "libOrthancGdcm.so")],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
            "Gdcm": {"Enable": True},
            "StorageCompression": False,
            "SaveJobs": False,
        }
        if self.lua:
            script = self.workdir / "filter.lua"
            script.write_text(self.lua)
            config["LuaScripts"] = [str(script)]
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout_s: float = 30) -> None:
        config = self._config()
        log = (self.workdir / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            [orthanc_binary(), str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer in {timeout_s}s: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 2000) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    # ------------------------------------------------------------------ REST helpers for assertions

    def upload(self, data: bytes) -> dict:
        r = requests.post(f"{self.url}/instances", data=data, timeout=30)
        r.raise_for_status()
        return r.json()

    def clear(self) -> None:
        for pid in requests.get(f"{self.url}/patients", timeout=10).json():
            requests.delete(f"{self.url}/patients/{pid}", timeout=30).raise_for_status()

    def all_studies_stable(self) -> bool:
        """Every study has been quiet for StableAge (Orthanc has run its OnStableStudy rules)."""
        studies = requests.get(f"{self.url}/studies", params={"expand": ""}, timeout=10).json()
        return bool(studies) and all(st.get("IsStable") for st in studies)

    def count_instances(self, **filters: str) -> int:
        """How many instances a QIDO-RS search finds (e.g. ``Modality="SR"``)."""
        r = requests.get(f"{self.dicomweb}/instances", params=filters, timeout=10)
        r.raise_for_status()
        return len(r.json()) if r.content else 0

    def files_of_modality(self, modality: str) -> list[bytes]:
        """Every stored instance of ``modality`` (e.g. SR, OT), as DICOM files."""
        found = requests.post(
            f"{self.url}/tools/find", json={"Level": "Series", "Query": {"Modality": modality}}, timeout=10
        ).json()
        out = []
        for series in found:
            for inst in requests.get(f"{self.url}/series/{series}/instances", timeout=10).json():
                out.append(requests.get(f"{self.url}/instances/{inst['ID']}/file", timeout=30).content)
        return out

    def instance_bytes(self, sop_uid: str) -> bytes:
        found = requests.post(
            f"{self.url}/tools/find",
            json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}},
            timeout=10,
        ).json()
        assert len(found) == 1, f"{len(found)} instances with that UID"
        return requests.get(f"{self.url}/instances/{found[0]}/file", timeout=30).content


# --------------------------------------------------------------------------- PACS test data and steps

DICOM_DIR = Path(pytest.importorskip("data_store").__file__).parent / "data"
CT = Path(pydicom.data.get_testdata_file("CT_small.dcm"))


def start_orthanc(workdir: Path, lua: str | None = None, modalities: dict | None = None) -> Orthanc:
    why = orthanc_missing()
    if why:
        need("Orthanc", why)
    orthanc = Orthanc(workdir, lua=lua, modalities=modalities)
    orthanc.start()
    return orthanc


def generated_study(tmp: Path, names: list[tuple[str, int]], *, seed: int = 3) -> tuple[list[bytes], str]:
    """CR instances (one per (patient name, label)) in one new study, and a CT instance in the same study."""
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study = pydicom.uid.generate_uid()
    series = pydicom.uid.generate_uid()
    out = []
    for i, (name, label) in enumerate(names):
        path = write_synthetic_dicom(tmp / f"cr-{i}.dcm", synthetic_xray(label, 160, rng), patient_id="PACS-0001")
        ds = pydicom.dcmread(path)
        ds.PatientName = name
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261130", "221500", "ACC-1"
        ds.InstanceNumber = i + 1
        ds.save_as(path, enforce_file_format=True)
        out.append(path.read_bytes())
    ct = pydicom.dcmread(CT)
    ct.StudyInstanceUID, ct.PatientID, ct.PatientName = study, "PACS-0001", names[0][0]
    ct.SOPInstanceUID = pydicom.uid.generate_uid()
    ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    path = tmp / "ct.dcm"
    ct.save_as(path, enforce_file_format=True)
    out.append(path.read_bytes())
    return out, study


def upload_night(pacs: Orthanc, tmp: Path, *, rg1: bool = True) -> dict:
    """RG1 uncompressed and JPEG 2000, three generated CR (two pneumonia-like), one CT in their study."""
    names = [("DOE^JANE", 1), ("ROE^RICHARD", 1), ("POE^EDGAR", 0)]
    files, study = generated_study(tmp, names)
    if rg1:
        files += [(DICOM_DIR / "RG1_UNCR.dcm").read_bytes(), (DICOM_DIR / "RG1_J2KR.dcm").read_bytes()]
    for data in files:
        pacs.upload(data)
    return {"study": study, "names": [n for n, _ in names], "radiographs": len(names) + (2 if rg1 else 0)}


def process(db_url: str, job_id: int, results: Path) -> None:
    """Run every batch of the job through the imaging pipeline (the worker's code, called directly)."""
    with session_scope(db_url) as s:
        batch_ids = list(s.scalars(select(Batch.id).where(Batch.job_id == job_id)))
    opts = ImagingOptions(results_dir=results, decode_threads=2, pacs=PacsAccess(timeout_s=30))
    for batch_id in batch_ids:
        classify_batch(batch_id, database_url=db_url, max_attempts=5, options=opts)


def dciodvfy_errors(data: bytes, tmp: Path) -> list[str]:
    path = tmp / "check.dcm"
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def check_every_object(pacs: Orthanc, tmp: Path) -> int:
    """dciodvfy (0 errors) on every SR and SC the PACS holds; returns how many were checked."""
    if dciodvfy_missing():
        need("dciodvfy", dciodvfy_missing())
    files = pacs.files_of_modality("SR") + pacs.files_of_modality("OT")
    for data in files:
        assert dciodvfy_errors(data, tmp) == []
    return len(files)
