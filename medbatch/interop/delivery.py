"""Send an X-ray job's findings back to a PACS as DICOM, tracked per object in the database.

``export_job`` builds, for every result of a job whose source is a DICOM image, a Comprehensive SR and
(for a positive) a Secondary Capture of the Grad-CAM overlay (:mod:`medbatch.interop.dicom_objects`),
and sends them by STOW-RS (a ``http(s)://`` DICOMweb root) or C-STORE (``AET@host:port``). Each object's
outcome is a row in ``dicom_deliveries``: ``sent``, or ``failed`` with the destination's reason. A row
``sent`` is never sent again; everything else is tried again by the next export. Because every UID is
derived from the source instance, the model version and the kind, an object re-sent after a lost answer
(a PACS that went down mid-export) is the same object, and the PACS keeps one copy.

A destination that is down stops the export at once (:class:`~medbatch.errors.PacsUnavailable`, after
the tries so far are recorded), so the task's retry policy tries again later; a destination that refuses
an object records that object's reason and goes on with the next.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medbatch.config import error_reason
from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.errors import InvalidInput, PacsRefused, PacsUnavailable
from medbatch.extras import require
from medbatch.interop import dicom_objects as objects
from medbatch.interop.dicomweb import DicomWeb, PacsAccess, check_url

log = logging.getLogger("medbatch.interop.delivery")

_DIMSE = re.compile(r"^(?P<aet>[^@\s\\]{1,16})@(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class Sender(Protocol):
    def send(self, datasets: Sequence[Any]) -> dict[str, str | None]:
        """Store ``datasets``; ``{sop_uid: None}`` when stored, ``{sop_uid: reason}`` when refused.

        Raises:
            PacsUnavailable: the destination cannot be reached (nothing is known of what it stored).
        """
        ...

    def close(self) -> None: ...


def normalise_destination(to: str) -> str:
    """``to`` checked: a DICOMweb root URL (no credentials in it), or ``AET@host:port``."""
    to = to.strip()
    if to.startswith(("http://", "https://")):
        return check_url(to)
    m = _DIMSE.match(to)
    if not m or not 0 < int(m["port"]) < 65536:
        raise InvalidInput(f"--to must be a DICOMweb URL (http(s)://...) or AET@host:port, not {to!r}")
    return to


class StowSender:
    def __init__(self, url: str, access: PacsAccess | None):
        self.web = DicomWeb(url, access)

    def send(self, datasets: Sequence[Any]) -> dict[str, str | None]:
        return self.web.store(datasets)

    def close(self) -> None:
        self.web.close()


class CStoreSender:
    """A C-STORE SCU: one association per export, one presentation context per SOP class and transfer
    syntax (some PACS, Orthanc among them, accept a single transfer syntax per context)."""

    def __init__(self, destination: str, calling_aet: str, timeout_s: float = 30.0):
        m = _DIMSE.match(destination)
        assert m is not None
        self.called, self.host, self.port = m["aet"], m["host"].strip("[]"), int(m["port"])
        self.calling = calling_aet
        self.timeout_s = timeout_s
        self.assoc = None
        self.contexts: tuple[tuple[str, str], ...] = ()

    def _associate(self, datasets: Sequence[Any]) -> Any:
        from pynetdicom import AE

        wanted = tuple(sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}))
        if self.assoc is not None and self.assoc.is_established and set(wanted) <= set(self.contexts):
            return self.assoc
        self.close()
        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class, syntax in wanted:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(self.host, self.port, ae_title=self.called)
        if assoc.is_rejected:
            raise PacsRefused(f"PACS {self.called} at {self.host} rejected the association (calling AE {self.calling})")
        if not assoc.is_established:
            raise PacsUnavailable(f"PACS {self.called} at {self.host}:{self.port} unreachable (no association)")
        self.assoc, self.contexts = assoc, wanted
        return assoc

    def send(self, datasets: Sequence[Any]) -> dict[str, str | None]:
        assoc = self._associate(datasets)
        out: dict[str, str | None] = {}
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or "Status" not in status:
                self.close()
                raise PacsUnavailable(f"PACS {self.called} at {self.host}:{self.port} broke off the association")
            code = int(status.Status)
            if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success, or stored with a warning
                out[str(ds.SOPInstanceUID)] = None
            else:
                comment = str(status.get("ErrorComment", "") or "").strip()
                out[str(ds.SOPInstanceUID)] = f"PACS refused the object: C-STORE status 0x{code:04X}" + (
                    f" ({comment})" if comment else ""
                )
        return out

    def close(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            finally:
                self.assoc = None


def make_sender(destination: str, *, access: PacsAccess | None, calling_aet: str) -> Sender:
    if destination.startswith(("http://", "https://")):
        return StowSender(destination, access)
    return CStoreSender(destination, calling_aet, timeout_s=access.timeout_s if access else 30.0)


@dataclass
class ExportSummary:
    job_id: int
    destination: str
    results: int = 0
    objects: int = 0
    sent: int = 0
    already_sent: int = 0
    failed: int = 0
    not_dicom: int = 0
    unavailable: str | None = None
    reasons: list[str] = field(default_factory=list)

    def note(self, reason: str | None) -> None:
        """Keep up to five distinct failure reasons for the person who ran the export."""
        if reason and len(self.reasons) < 5 and reason not in self.reasons:
            self.reasons.append(reason)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class _Sources:
    """Reads source headers: from the PACS by WADO-RS metadata, or from the submitted file."""

    def __init__(self, access: PacsAccess | None):
        self.access = access
        self.webs: dict[str, DicomWeb] = {}

    def header(self, payload: dict) -> Any | None:
        import pydicom

        if "sop" in payload:
            web = self.webs.get(payload["pacs"]) or self.webs.setdefault(
                payload["pacs"], DicomWeb(payload["pacs"], self.access)
            )
            meta = web.instance_metadata(payload["study"], payload["series"], payload["sop"])
            meta = {k: v for k, v in meta.items() if "BulkDataURI" not in v and "InlineBinary" not in v}
            return pydicom.Dataset.from_json(meta)
        if payload.get("kind") == "dicom" and payload.get("path"):
            return pydicom.dcmread(payload["path"], stop_before_pixels=True, force=True)
        return None

    def close(self) -> None:
        for web in self.webs.values():
            web.close()


def _overlay(detail: dict) -> Any:
    import numpy as np
    from PIL import Image

    path = detail.get("heatmap")
    if not path or not Path(path).is_file():
        raise PacsRefused("the Grad-CAM overlay file is missing (results directory not shared with this host?)")
    with Image.open(io.BytesIO(Path(path).read_bytes())) as img:
        return np.asarray(img.convert("RGB"))


def _positive(row: Any) -> bool:
    """A finding for review: it gets an SC (the Grad-CAM overlay) besides its SR."""
    return bool((row.detail or {}).get("requires_review")) or row.label == "pneumonia"


def _objects_for(row: Any, source: Any, kinds_needed: set[str]) -> list[tuple[str, Any]]:
    detail = row.detail or {}
    finding = objects.XrayFinding(
        probability=float(row.score if row.score is not None else detail.get("probability", 0.0)),
        threshold=float(detail.get("threshold", 0.5)),
        positive=_positive(row),
        model_name=row.model_name,
        model_version=row.model_version,
        findings_text=detail.get("findings"),
    )
    out: list[tuple[str, Any]] = []
    if "sr" in kinds_needed:
        out.append(("sr", objects.build_sr(source, finding)))
    if "sc" in kinds_needed and finding.positive:
        out.append(("sc", objects.build_sc(source, _overlay(detail), finding)))
    return out


def export_job(
    job_id: int,
    destination: str,
    *,
    database_url: str,
    access: PacsAccess | None = None,
    calling_aet: str = "MEDBATCH",
    sender: Sender | None = None,
    on_item: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Send every not-yet-sent SR/SC of an X-ray job to ``destination``; see the module docstring.

    Raises:
        NotFound / InvalidInput: no such job, or not an X-ray job, or a bad destination.
        PacsUnavailable: the destination (or the source PACS) went away; the tries so far are recorded.
        MissingExtra: the ``imaging`` extra is not installed.
    """
    require("imaging", "`medbatch export dicom`")
    destination = normalise_destination(destination)
    with session_scope(database_url) as s:
        job = repo.get_job(s, job_id)
        if job.workload != "xray":
            raise InvalidInput(f"job {job_id} is a {job.workload} job: only X-ray results go back as DICOM")
        rows = repo.export_rows(s, job_id)
        done = {key for key, d in repo.deliveries_for(s, job_id, destination).items() if d.status == "sent"}
    summary = ExportSummary(job_id=job_id, destination=destination, results=len(rows))
    own_sender = sender is None
    sender = sender or make_sender(destination, access=access, calling_aet=calling_aet)
    sources = _Sources(access)
    try:
        for n, row in enumerate(rows, 1):
            needed = {k for k in ("sr", "sc") if (row.item_id, k) not in done}
            positive = _positive(row)
            summary.already_sent += sum(1 for k in ("sr", "sc") if (row.item_id, k) in done and (k == "sr" or positive))
            if not positive:
                needed.discard("sc")
            if not needed:
                continue
            if not _export_item(row, needed, job_id, destination, database_url, sender, sources, summary):
                break
            if on_item is not None:
                on_item(n)
    finally:
        sources.close()
        if own_sender:
            sender.close()
    log.info(
        "job %s: DICOM export %d sent, %d already sent, %d failed",
        job_id, summary.sent, summary.already_sent, summary.failed,
    )
    if summary.unavailable:
        raise PacsUnavailable(summary.unavailable)
    return summary


def _export_item(row, needed, job_id, destination, database_url, sender, sources, summary) -> bool:
    """Build and send one item's objects and record each outcome; False when the destination is down."""
    try:
        source = sources.header(row.payload or {})
        if source is None:
            summary.not_dicom += 1
            return True
        built = _objects_for(row, source, needed)
    except PacsUnavailable as exc:
        summary.unavailable = str(exc)
        _record(database_url, job_id, row.item_id, destination, sorted(needed), f"source unavailable: {exc}", summary)
        return False
    except Exception as exc:  # noqa: BLE001 - one source that cannot be described fails its objects only
        reason = f"could not build the DICOM objects: {error_reason(exc)}"
        _record(database_url, job_id, row.item_id, destination, sorted(needed), reason, summary)
        return True
    try:
        outcome = sender.send([ds for _, ds in built])
    except PacsUnavailable as exc:
        outcome = {str(ds.SOPInstanceUID): f"destination unavailable: {exc}" for _, ds in built}
        summary.unavailable = str(exc)
    except PacsRefused as exc:
        outcome = {str(ds.SOPInstanceUID): str(exc) for _, ds in built}
    with session_scope(database_url) as s:
        for kind, ds in built:
            uid = str(ds.SOPInstanceUID)
            reason = outcome.get(uid, "the destination did not answer for this object")
            repo.record_delivery(
                s, job_id=job_id, item_id=row.item_id, destination=destination, kind=kind, sop_instance_uid=uid,
                status="sent" if uid in outcome and reason is None else "failed", reason=reason,
            )
            summary.objects += 1
            if uid in outcome and reason is None:
                summary.sent += 1
            else:
                summary.failed += 1
                summary.note(reason)
    return summary.unavailable is None


def _record(database_url, job_id, item_id, destination, kinds, reason, summary) -> None:
    with session_scope(database_url) as s:
        for kind in kinds:
            repo.record_delivery(
                s, job_id=job_id, item_id=item_id, destination=destination, kind=kind,
                sop_instance_uid="", status="failed", reason=reason,
            )
            summary.objects += 1
            summary.failed += 1
    summary.note(reason)


def return_destination(job_options: dict, configured: str) -> str | None:
    """Where an automatic return goes: ``MEDBATCH_PACS_RETURN_TO``, else the PACS the job came from."""
    return configured.strip() or (job_options or {}).get("pacs")


def return_due(database_url: str, batch_id: int, enabled: bool) -> int | None:
    """After a batch: the job whose findings should now go back automatically (``MEDBATCH_PACS_RETURN``), once."""
    if not enabled:
        return None
    with session_scope(database_url) as s:
        job_id = repo.job_of_batch(s, batch_id)
        return job_id if repo.pacs_return_due(s, job_id) else None


def return_job(
    job_id: int,
    *,
    database_url: str,
    configured_destination: str,
    access: PacsAccess | None,
    calling_aet: str,
    expected_db: str | None = None,
) -> dict[str, Any]:
    """The automatic return of a PACS-sourced job's findings (the task retries a destination that is down)."""
    with session_scope(database_url) as s:
        repo.check_instance(s, expected_db)
        job = repo.get_job(s, job_id)
        destination = return_destination(job.options or {}, configured_destination)
    if not destination:
        log.warning("job %s: no destination for its findings (set MEDBATCH_PACS_RETURN_TO)", job_id)
        return {"job_id": job_id, "skipped": "no destination"}
    summary = export_job(job_id, destination, database_url=database_url, access=access, calling_aet=calling_aet)
    with session_scope(database_url) as s:
        repo.audit(s, actor="pacs-return", action="export", job_id=job_id, detail=audit_detail(summary))
    return {k: v for k, v in summary.as_dict().items() if k != "reasons"}


def audit_detail(summary: ExportSummary) -> dict[str, Any]:
    from medbatch.config import redact_url

    return {
        "what": "dicom",
        "to": redact_url(summary.destination),
        **{k: getattr(summary, k) for k in ("objects", "sent", "already_sent", "failed", "not_dicom")},
    }
