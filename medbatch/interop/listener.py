"""``medbatch dicom listen``: a DICOM node the PACS routes studies to (C-ECHO and C-STORE SCP, pynetdicom).

- Only the configured calling AE titles may associate (C-ECHO and C-STORE); others are rejected.
- Each instance is written to a name medbatch chooses (hashes of its study and SOP Instance UIDs, under
  the listener's inbox inside the input root), never a path from the sender: written to a temporary file,
  flushed to disk and renamed, then recorded in the ``dicom_received`` ledger, and only then is the
  sender told it is stored. A listener that dies before that answer loses nothing the sender thinks it
  delivered: the sender sends it again.
- The same instance sent twice is stored once (the ledger is keyed by SOP Instance UID).
- A study quiet for ``MEDBATCH_DICOM_STUDY_SETTLE_S`` becomes one X-ray job: its instances are claimed
  (``claimed``, with a claim ID the job's options carry), staged, then marked ``staged`` with the job.
  A listener restarted between those steps finds the claim: if its job exists the instances are linked
  to it, else they wait again. No instance is staged twice.

Nothing here logs a UID, a patient attribute or a path derived from them: counts and job IDs only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import utcnow
from medbatch.errors import BrokerUnavailable, InvalidInput
from medbatch.extras import require

log = logging.getLogger("medbatch.interop.listener")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class ListenerConfig:
    """Plain values from the settings."""

    database_url: str
    inbox: Path
    aet: str = "MEDBATCH"
    port: int = 11112
    host: str = "0.0.0.0"
    allowed_aets: tuple[str, ...] = ()
    settle_s: float = 60.0
    batch_size: int = 64
    modalities: tuple[str, ...] = ("CR", "DX", "DR", "RG")
    max_bytes: int = 512 * 2**20


def instance_path(inbox: Path, study_uid: str, sop_uid: str) -> Path:
    """Where an instance is written: names derived from the UIDs by hashing, never taken from the sender."""
    study = hashlib.sha256(study_uid.encode()).hexdigest()[:24]
    sop = hashlib.sha256(sop_uid.encode()).hexdigest()[:40]
    return Path(inbox) / study / f"{sop}.dcm"


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class DicomListener:
    """The C-STORE SCP and the study stager. ``send`` publishes a batch (``None``: stage without sending)."""

    def __init__(self, config: ListenerConfig, send: Callable[[str, str, int], None] | None):
        if not config.allowed_aets:
            raise InvalidInput(
                "no calling AE title is allowed: set MEDBATCH_DICOM_ALLOWED_AETS to the PACS's AE title(s)"
            )
        self.config = config
        self.send = send
        self.server = None
        self.received = 0
        self.refused = 0
        self._stop = threading.Event()

    # ------------------------------------------------------------------ the SCP

    def _ae(self):
        require("imaging", "the DICOM listener")
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.aet)
        ae.require_calling_aet = list(self.config.allowed_aets)
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS)]
        return ae, handlers

    def start(self) -> None:
        """Start accepting associations (in background threads) and recover any claim left by a crash."""
        self.recover()
        ae, handlers = self._ae()
        self.server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        log.info("DICOM listener %s on port %s (calling AE titles allowed: %d)", self.config.aet,
                 self.config.port, len(self.config.allowed_aets))

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def handle_store(self, event) -> int:
        """Write, record, then acknowledge; any failure before the ledger commit answers "out of resources"
        so the sender keeps the instance and sends it again."""
        try:
            ds = event.dataset
            sop, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        except Exception:  # noqa: BLE001 - an instance without readable UIDs cannot be named or staged
            self.refused += 1
            return STATUS_CANNOT_UNDERSTAND
        if not (_UID.match(sop) and _UID.match(study)) or len(sop) > 64 or len(study) > 64:
            self.refused += 1
            return STATUS_CANNOT_UNDERSTAND
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            with session_scope(self.config.database_url) as s:
                if repo.received_instance(s, sop) is not None:
                    return STATUS_SUCCESS  # already stored: the same instance twice is kept once
            path = instance_path(self.config.inbox, study, sop)
            _write_atomically(path, event.encoded_dataset())
            with session_scope(self.config.database_url) as s:
                repo.record_received(
                    s, sop_instance_uid=sop, study_instance_uid=study, calling_aet=calling, path=str(path)
                )
        except Exception as exc:  # noqa: BLE001 - the sender must keep and re-send what we could not record
            from sqlalchemy.exc import IntegrityError

            if isinstance(exc, IntegrityError):
                return STATUS_SUCCESS  # a concurrent association stored the same instance first
            log.error("could not store a received instance: %s", type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        self.received += 1
        return STATUS_SUCCESS

    # ------------------------------------------------------------------ the stager

    def recover(self) -> None:
        """Finish or release claims left by a listener that stopped mid-staging."""
        with session_scope(self.config.database_url) as s:
            for claim in repo.open_claims(s):
                job_id = repo.job_for_claim(s, claim)
                if job_id is not None:
                    repo.mark_study_staged(s, claim, job_id)
                    log.info("recovered a staged study: job %s", job_id)
                else:
                    repo.release_study_claim(s, claim)

    def stage_settled(self, now: datetime | None = None) -> list[int]:
        """Stage every study quiet for ``settle_s`` as one X-ray job each; returns the new job IDs."""
        quiet_since = (now or utcnow()) - timedelta(seconds=self.config.settle_s)
        with session_scope(self.config.database_url) as s:
            studies = repo.settled_studies(s, quiet_since=quiet_since)
        jobs = []
        for study in studies:
            job_id = self._stage_study(study)
            if job_id is not None:
                jobs.append(job_id)
        return jobs

    def _stage_study(self, study: str) -> int | None:
        from medbatch.producer.images import ImageScan, iter_image_chunks
        from medbatch.producer.staging import ensure_model, stage_job

        claim = str(uuid.uuid4())
        with session_scope(self.config.database_url) as s:
            paths = [Path(p) for p in repo.claim_study(s, study, claim)]
        if not paths:
            return None
        try:
            model = ensure_model(self.config.database_url, "xray")
            scan = ImageScan(files=sorted(paths), total_bytes=0)
            summary = stage_job(
                database_url=self.config.database_url,
                workload="xray",
                source=str(paths[0].parent),
                model=model,
                options={"dicom_claim": claim, "instances": len(paths), "received_by": self.config.aet},
                chunks=iter_image_chunks(
                    scan, chunk_size=self.config.batch_size, max_bytes=self.config.max_bytes,
                    modalities=self.config.modalities,
                ),
                batch_size=self.config.batch_size,
                send=self.send,
                submitted_by=f"dicom-listener:{self.config.aet}",
            )
            job_id = summary.job_id
        except BrokerUnavailable:
            with session_scope(self.config.database_url) as s:  # staged; the reconciler sends it later
                job_id = repo.job_for_claim(s, claim)
            if job_id is None:
                raise
        except Exception:
            with session_scope(self.config.database_url) as s:
                job_id = repo.job_for_claim(s, claim)
                if job_id is None:
                    repo.release_study_claim(s, claim)
            if job_id is None:
                raise
        with session_scope(self.config.database_url) as s:
            repo.mark_study_staged(s, claim, job_id)
        log.info("job %s: a received study of %d instances staged", job_id, len(paths))
        return job_id

    def serve_forever(self, poll_s: float | None = None) -> None:
        """Accept instances and stage settled studies until :meth:`stop` (or SIGINT/SIGTERM in the CLI)."""
        poll = poll_s if poll_s is not None else max(0.2, min(5.0, self.config.settle_s / 4))
        if self.server is None:
            self.start()
        while not self._stop.wait(poll):
            try:
                self.stage_settled()
            except Exception as exc:  # noqa: BLE001 - a bad study must not stop the node; it is retried
                log.error("staging a received study failed: %s", type(exc).__name__)
