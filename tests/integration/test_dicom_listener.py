"""``medbatch dicom listen``'s node: C-STORE a study from pynetdicom, a job appears and completes.

The listener runs in this process on a free port; the sending modality is a pynetdicom SCU. Studies
settle by a ``now`` handed to the stager (no sleeping on the settle time).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import DicomReceived, Job, utcnow
from medbatch.errors import InvalidInput
from medbatch.interop.listener import DicomListener, ListenerConfig, instance_path
from tests.helpers import register_xray, wait_for
from tests.orthanc import DICOM_DIR, generated_study, process, start_orthanc
from tests.services import free_port

pytestmark = pytest.mark.integration


def scu_send(port: int, files: list[Path], calling: str = "ROUTER") -> list[int]:
    """C-STORE ``files`` as a modality would (one presentation context per SOP class and syntax)."""
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for cls, ts in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(cls, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDBATCH")
    if not assoc.is_established:
        return []
    try:
        return [int(assoc.send_c_store(d).Status) for d in datasets]
    finally:
        assoc.release()


def echo(port: int, calling: str) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDBATCH")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


@pytest.fixture
def study_files(tmp_path) -> list[Path]:
    data, _ = generated_study(tmp_path / "make", [("DOE^JANE", 1), ("ROE^RICHARD", 0)], seed=4)
    out = []
    for i, blob in enumerate(data):
        path = tmp_path / f"send-{i}.dcm"
        path.write_bytes(blob)
        out.append(path)
    return out  # two CR films and, last, a CT of the same study


def make_listener(db_url: str, inbox: Path, port: int) -> DicomListener:
    config = ListenerConfig(
        database_url=db_url, inbox=inbox, port=port, host="127.0.0.1", allowed_aets=("ROUTER",), settle_s=30
    )
    return DicomListener(config, send=None)


def test_listener_stores_stages_a_study_once_and_the_job_completes(sqlite_url, tmp_path, xray_artifact, study_files):
    register_xray(sqlite_url, xray_artifact)
    port, inbox = free_port(), tmp_path / "inbox"
    node = make_listener(sqlite_url, inbox, port)
    node.start()
    try:
        # C-ECHO and C-STORE from a configured AE title are accepted; any other calling AE is refused
        assert echo(port, "ROUTER") and not echo(port, "INTRUDER")
        assert scu_send(port, study_files[:1], calling="INTRUDER") == []
        assert scu_send(port, study_files) == [0, 0, 0]
        assert scu_send(port, study_files[:1]) == [0]  # the same instance again: stored once
        # A study still receiving is not staged
        assert node.stage_settled() == []
    finally:
        node.stop()
    # Instances lie under the inbox under names medbatch chose
    with session_scope(sqlite_url) as s:
        rows = list(s.scalars(select(DicomReceived)))
    assert len(rows) == 3 and {r.calling_aet for r in rows} == {"ROUTER"}
    for r in rows:
        path = Path(r.path)
        assert path.is_file() and inbox in path.parents
        assert path == instance_path(inbox, r.study_instance_uid, r.sop_instance_uid)
    # A restarted listener, once the study has been quiet long enough, stages it as one job
    later = utcnow() + timedelta(seconds=31)
    node = make_listener(sqlite_url, inbox, free_port())
    node.recover()
    [job_id] = node.stage_settled(now=later)
    assert node.stage_settled(now=later) == []
    with session_scope(sqlite_url) as s:
        counts = repo.job_counts(s, job_id)
        errors = list(repo.iter_errors(s, job_id))
    assert counts["items_total"] == 2 and len(errors) == 1
    assert "DICOM modality CT is not a radiograph" in errors[0]["reason"]
    # The job completes through the imaging pipeline
    process(sqlite_url, job_id, tmp_path / "results")
    with session_scope(sqlite_url) as s:
        counts = repo.job_counts(s, job_id)
    assert counts["status"] == "completed_with_errors" and counts["items_done"] == 2


def test_listener_restart_mid_staging_stages_nothing_twice(sqlite_url, tmp_path, xray_artifact, study_files):
    register_xray(sqlite_url, xray_artifact)
    port, inbox = free_port(), tmp_path / "inbox"
    node = make_listener(sqlite_url, inbox, port)
    node.start()
    try:
        assert scu_send(port, study_files[:2]) == [0, 0]
    finally:
        node.stop()
    later = utcnow() + timedelta(seconds=31)
    # A listener that died after claiming the study, before its job existed: the claim is released
    with session_scope(sqlite_url) as s:
        study = s.scalar(select(DicomReceived.study_instance_uid))
        repo.claim_study(s, study, "lost-claim-before-job")
    node = make_listener(sqlite_url, inbox, free_port())
    node.recover()
    [job_id] = node.stage_settled(now=later)
    # A listener that died after creating the job, before marking the study staged: relinked, not restaged
    with session_scope(sqlite_url) as s:
        s.execute(update(DicomReceived).values(status="claimed"))
    node = make_listener(sqlite_url, inbox, free_port())
    node.recover()
    assert node.stage_settled(now=later + timedelta(hours=1)) == []
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert {(r.status, r.job_id) for r in s.scalars(select(DicomReceived))} == {("staged", job_id)}


def test_listener_needs_configured_calling_aets(sqlite_url, tmp_path):
    with pytest.raises(InvalidInput, match="MEDBATCH_DICOM_ALLOWED_AETS"):
        DicomListener(ListenerConfig(database_url=sqlite_url, inbox=tmp_path), send=None)


def test_the_documented_orthanc_routing_rule_routes_chest_films_to_the_listener(sqlite_url, tmp_path):
    # Given Orthanc running the routing rule of docs/deploy.md, with the listener as its "medbatch" modality
    import re

    rule = re.search(r"```lua\n(.*?)```", (Path(__file__).parents[2] / "docs" / "deploy.md").read_text(), re.S)
    port = free_port()
    node = DicomListener(
        ListenerConfig(
            database_url=sqlite_url, inbox=tmp_path / "inbox", port=port, host="127.0.0.1",
            allowed_aets=("ORTHANC",), settle_s=30,
        ),
        send=None,
    )
    node.start()
    orthanc = start_orthanc(
        tmp_path / "orthanc", lua=rule.group(1), modalities={"medbatch": ["MEDBATCH", "127.0.0.1", port]}
    )
    try:
        # When a CR chest film and a CT arrive in Orthanc and their studies become stable
        orthanc.upload(Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes())
        orthanc.upload((DICOM_DIR / "RG1_UNCR.dcm").read_bytes())

        # Then the chest film reaches the listener, and once both studies are stable the CT has not
        def received():
            with session_scope(sqlite_url) as s:
                return repo.received_counts(s)

        assert wait_for(received, timeout_s=60, what="Orthanc's routed C-STORE") == {"received": 1}
        wait_for(lambda: orthanc.all_studies_stable(), timeout_s=60, what="both studies stable in Orthanc")
        assert received() == {"received": 1}
    finally:
        orthanc.stop()
        node.stop()
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(DicomReceived.calling_aet)) == "ORTHANC"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dicom_listen_command_stages_a_routed_study_and_a_worker_completes_it(
    db_url, service_env, start_worker, xray_artifact, study_files, tmp_path
):
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import wait_for_job

    register_xray(db_url, xray_artifact)
    start_worker("imaging")
    port = free_port()
    env = {
        **os.environ,
        **service_env,
        "MEDBATCH_DICOM_ALLOWED_AETS": "ROUTER",
        "MEDBATCH_DICOM_STUDY_SETTLE_S": "0.5",
        "MEDBATCH_DICOM_INBOX": str(tmp_path / "received"),
    }
    log = (tmp_path / "listen.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medbatch.cli", "dicom", "listen", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: proc.poll() is not None or echo(port, "ROUTER"), timeout_s=60, what="the listener")
        assert proc.poll() is None, (tmp_path / "listen.log").read_text()
        assert scu_send(port, study_files) == [0, 0, 0]

        def staged():
            with session_scope(db_url) as s:
                return s.scalar(select(DicomReceived.job_id).where(DicomReceived.status == "staged"))

        job_id = wait_for(staged, timeout_s=60, what="the study staged as a job")
        counts = wait_for_job(db_url, job_id, timeout_s=180)
        assert counts["items_done"] == 2 and counts["rows_rejected"] == 1  # the CT is refused with its reason
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log.close()
