"""``medbatch nightly``: take what arrived in the inbox since the last run, submit it, wait, and say
whether anything needs a human.

The inbox is one folder. Files are sorted by where they sit, then by what they hold:

    inbox/xray/...        radiographs (PNG, JPEG, DICOM; any depth)  -> one X-ray job per run
    inbox/risk/*.csv      patient records                            -> one risk job per file
    inbox/treatment/*.csv                                            -> one treatment job per file
    inbox/report/*.csv    patient facts                              -> one report job per file
    inbox/molecules/*.json  {"count": 1000, "seed": 1, "temperature": 1.0} -> one molecule job per file
    inbox/<anything else>  CSVs are matched to risk or treatment by their columns, images go to the
                           X-ray job, JSON to molecules; anything else is reported for a human.

Every file taken is recorded in the database (path + content hash), so a second run the same night
submits nothing twice, and a file replaced with new content is taken again. Files still being written
(modified within ``settle_s``) and hidden or partial files (``.part``, ``.tmp``) are left for the next
run.

One hostile file never stops the night: before anything is opened, a name with control characters,
a link out of the input roots and anything but a regular file (FIFO, device, socket, a link to a
folder) is refused with its reason; reads are bounded (CSV lines, request size, the hash stops at the
size seen); a file its producer cannot read is refused with the reason and the other files go on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from medbatch.config import error_reason
from medbatch.db import repository as repo
from medbatch.db.repository import inbox as ledger
from medbatch.db.session import session_scope
from medbatch.db.tables import FINISHED_JOB
from medbatch.errors import BrokerUnavailable, InvalidInput, MedbatchError
from medbatch.jobs import is_finished, wait_for_jobs
from medbatch.ml import images
from medbatch.producer import submit
from medbatch.producer.paths import check_input_path, file_kind, open_regular
from medbatch.producer.records import read_header
from medbatch.producer.send import Send
from medbatch.producer.staging import SubmitSummary

log = logging.getLogger("medbatch.nightly")

WORKLOAD_DIRS = ("xray", "risk", "treatment", "report", "molecules")
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart", ".swp")
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass
class Candidate:
    path: Path
    workload: str | None
    reason: str | None = None  # why it cannot be taken (then workload is None)
    sha256: str = ""
    size: int = 0
    readable: bool = True  # False: refused before anything was opened (never hashed)

    @property
    def key(self) -> str:
        """The path as recorded and shown: :func:`shown_path`."""
        return shown_path(self.path)


def shown_path(path: Path) -> str:
    """``path`` as text safe to store and print: bytes that are not UTF-8 and control characters are
    escaped (``\\x1b``), so a hostile name can neither break the ledger nor forge a line of output."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in text)


@dataclass
class NightlyOutcome:
    """What one run did and what needs a human. ``exit_code``: 0 clean, 1 something needs a human."""

    night: str
    claim: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    still_arriving: list[str] = field(default_factory=list)
    already_taken: int = 0
    needs_human: list[str] = field(default_factory=list)
    awaiting_review: dict[str, int] = field(default_factory=dict)
    summary_html: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.needs_human else 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}


def night_of(moment: datetime, tz: str = "UTC") -> date:
    """The night a moment belongs to: a night runs from noon to the next noon in time zone ``tz``.

    01:30 on 25 November belongs to the night of 24 November.
    """
    local = moment.astimezone(ZoneInfo(tz))
    return (local - timedelta(hours=12)).date()


def night_window(night: date, tz: str = "UTC") -> tuple[datetime, datetime]:
    """``[noon of night, noon of the next day)`` in time zone ``tz``, as aware datetimes."""
    start = datetime(night.year, night.month, night.day, 12, 0, tzinfo=ZoneInfo(tz))
    return start, start + timedelta(days=1)


# --------------------------------------------------------------------------- finding the new files


def _sha256(path: Path, size: int) -> str:
    """The hash of the first ``size`` bytes (the size the scan saw): a regular file only, never more."""
    h = hashlib.sha256()
    with open_regular(path) as fh:
        while size > 0 and (block := fh.read(min(1 << 20, size))):
            h.update(block)
            size -= len(block)
    return h.hexdigest()


def _classify(path: Path, inbox: Path) -> tuple[str | None, str | None]:
    """(workload, None) or (None, reason) for one inbox file."""
    rel = path.relative_to(inbox)
    top = rel.parts[0].lower() if len(rel.parts) > 1 else None
    suffix = path.suffix.lower()
    if top in WORKLOAD_DIRS:
        if top in ("risk", "treatment", "report") and suffix not in (".csv", ".tsv", ".txt"):
            return None, f"inbox/{top}/ takes CSV files; {path.name} is not one"
        if top == "molecules" and suffix != ".json":
            return None, f'inbox/molecules/ takes JSON requests like {{"count": 1000}}; {path.name} is not one'
        return top, None
    if suffix in (".csv", ".tsv"):
        for workload in ("treatment", "risk"):  # treatment's columns include risk's age and smoking
            try:
                read_header(path, workload)
                return workload, None
            except InvalidInput:
                continue
        return None, (
            "CSV matches neither the risk nor the treatment columns; put patient facts for reports in inbox/report/"
        )
    if suffix == ".json":
        return "molecules", None
    if suffix in IMAGE_SUFFIXES or not suffix:
        return "xray", None
    with open_regular(path) as fh:
        if images.sniff(fh.read(132), path.name):
            return "xray", None
    return None, "not understood: put it in inbox/<workload>/ (xray, risk, treatment, report, molecules)"


def _refusal_before_reading(path: Path, rel: Path, roots) -> str | None:
    """Why ``path`` must not be opened at all (checked on names and ``stat`` only), or None."""
    if shown_path(rel) != str(rel):
        return "the file name holds control characters or bytes that are not UTF-8: rename it"
    if roots is not None:
        try:
            check_input_path(path, roots)
        except InvalidInput as exc:
            return str(exc)
    mode = os.stat(path).st_mode
    if not os.path.isfile(path):
        link = "a link to " if path.is_symlink() else ""
        return f"{link}a {file_kind(mode)}, not a regular file: only regular files are read"
    return None


def scan_inbox(
    inbox: Path, *, settle_s: float, now: float | None = None, roots=None
) -> tuple[list[Candidate], list[str]]:
    """Every file in the inbox that is complete: (candidates, paths still being written).

    ``roots`` (the input roots, None for anywhere) are checked for every entry before it is opened.
    """
    now = time.time() if now is None else now
    found: list[Candidate] = []
    arriving: list[str] = []
    for path in sorted(p for p in inbox.rglob("*") if p.is_symlink() or not p.is_dir()):
        rel = path.relative_to(inbox)
        if any(part.startswith(".") for part in rel.parts) or path.name.lower() in IGNORED_NAMES:
            continue
        if path.name.lower().endswith(PARTIAL_SUFFIXES) or path.name.startswith("~$"):
            arriving.append(shown_path(path))
            continue
        try:
            refusal = _refusal_before_reading(path, rel, roots)
            stat = path.stat()
        except OSError as exc:
            found.append(Candidate(path, None, f"unreadable: {exc.strerror or exc}", readable=False))
            continue
        if refusal is not None:
            found.append(Candidate(path, None, refusal, size=stat.st_size, readable=False))
            continue
        if now - stat.st_mtime < settle_s:
            arriving.append(shown_path(path))
            continue
        try:
            workload, reason = _classify(path, inbox)
        except OSError as exc:
            workload, reason = None, f"unreadable: {exc.strerror or exc}"
        except InvalidInput as exc:  # open_regular: the file changed under us
            workload, reason = None, str(exc)
        found.append(Candidate(path, workload, reason, size=stat.st_size))
    return found, arriving


# --------------------------------------------------------------------------- the run


@dataclass
class NightlyConfig:
    """Plain values the run needs (from the settings)."""

    database_url: str
    batch_size: int
    imaging_batch_size: int
    report_batch_size: int
    molecule_batch_size: int
    llm_provider: str
    llm_model: str
    input_roots: tuple[Path, ...] | None
    modalities: tuple[str, ...]
    imaging_max_bytes: int
    settle_s: float = 120.0
    timezone: str = "UTC"
    #: The broker's Redis, whose job-end announcements end the wait's naps early (None: it glances instead).
    broker_url: str | None = None

    @classmethod
    def from_settings(cls, settings) -> NightlyConfig:
        return cls(
            database_url=settings.database_url,
            batch_size=settings.batch_size,
            imaging_batch_size=settings.imaging_batch_size,
            report_batch_size=settings.report_batch_size,
            molecule_batch_size=settings.molecule_batch_size,
            llm_provider=settings.resolved_llm_provider(),
            llm_model=settings.llm_model,
            input_roots=settings.allowed_input_roots(),
            modalities=settings.modality_list(),
            imaging_max_bytes=settings.imaging_max_file_mb * 2**20,
            settle_s=settings.nightly_settle_s,
            timezone=settings.timezone,
            broker_url=settings.broker_url,
        )


def run_nightly(
    inbox: Path,
    cfg: NightlyConfig,
    send: Send,
    *,
    wait: bool = True,
    timeout_s: float = 6 * 3600,
    poll_s: float = 2.0,
    progress: Callable[[str], None] = lambda _m: None,
    now: datetime | None = None,
) -> NightlyOutcome:
    """Take the inbox's new files, submit one job per workload unit, optionally wait, and judge the night.

    Raises:
        InvalidInput: the inbox is missing or outside the input roots.
        BrokerUnavailable, DatabaseUnavailable: nothing can be submitted right now (nothing is lost:
            claimed files are re-linked or taken again by the next run).
    """
    inbox = check_input_path(inbox, cfg.input_roots)
    if not inbox.is_dir():
        raise InvalidInput(f"inbox {inbox} is not a folder")
    started = now or datetime.now(UTC)
    outcome = NightlyOutcome(night=night_of(started, cfg.timezone).isoformat(), claim=str(uuid.uuid4()))
    _recover_lost_claims(cfg.database_url, progress)
    candidates, outcome.still_arriving = scan_inbox(inbox, settle_s=cfg.settle_s, roots=cfg.input_roots)
    for c in candidates:
        try:
            c.sha256 = _sha256(c.path, c.size) if c.readable else "unread"
        except OSError as exc:
            c.workload, c.reason = None, f"unreadable: {exc.strerror or exc}"
            c.sha256 = "unreadable"
        except InvalidInput as exc:  # no longer a regular file
            c.workload, c.reason, c.sha256 = None, str(exc), "unreadable"
    with session_scope(cfg.database_url) as s:
        taken = ledger.taken_pairs(s, [(c.key, c.sha256) for c in candidates])
    new = [c for c in candidates if (c.key, c.sha256) not in taken]
    outcome.already_taken = len(candidates) - len(new)
    progress(
        f"inbox {inbox}: {len(new)} new file(s), {outcome.already_taken} already taken, "
        f"{len(outcome.still_arriving)} still arriving"
    )
    with session_scope(cfg.database_url) as s:
        ledger.claim_entries(
            s,
            outcome.claim,
            [
                {
                    "path": c.key,
                    "sha256": c.sha256,
                    "size": c.size,
                    "workload": c.workload,  # none: recorded rejected, with the reason
                    "reason": c.reason,
                }
                for c in new
            ],
        )
    outcome.rejected += [{"path": c.key, "reason": c.reason or ""} for c in new if c.workload is None]

    units: list[tuple[str, list[Candidate]]] = []
    xrays = [c for c in new if c.workload == "xray"]
    if xrays:
        units.append(("xray", xrays))
    units += [(c.workload, [c]) for c in new if c.workload not in (None, "xray")]
    for workload, members in units:
        _submit_unit(workload, members, inbox, cfg, send, outcome, progress)

    if wait and outcome.jobs:
        _wait_for(outcome, cfg, timeout_s=timeout_s, poll_s=poll_s, progress=progress)
    _judge(outcome, cfg.database_url, waited=wait)
    return outcome


#: What reading a hostile file can raise besides our own errors: one file refused, never the night lost.
UNREADABLE = (ValueError, TypeError, OverflowError, RecursionError, UnicodeError, OSError, csv.Error)


def _submit_unit(workload, members, inbox, cfg, send, outcome, progress) -> None:
    paths = [c.key for c in members]
    try:
        summary = _submit(workload, members, inbox, cfg, send)
    except BrokerUnavailable:
        raise  # claimed entries stay claimed; the next run re-links the staged job or takes them again
    except (MedbatchError, *UNREADABLE) as exc:  # unusable input: recorded with its reason, the night goes on
        if not isinstance(exc, MedbatchError):
            log.exception("%s: %d file(s) could not be submitted", workload, len(paths))
        reason = str(exc) if isinstance(exc, MedbatchError) else f"could not be read: {error_reason(exc)}"
        with session_scope(cfg.database_url) as s:
            ledger.reject_entries(s, outcome.claim, paths, reason=reason)
        outcome.rejected += [{"path": p, "reason": reason} for p in paths]
        progress(f"  {workload}: {len(paths)} file(s) refused: {reason}")
        return
    with session_scope(cfg.database_url) as s:
        ledger.take_entries(s, outcome.claim, paths, job_id=summary.job_id)
    outcome.jobs.append(
        {
            "job_id": summary.job_id,
            "workload": workload,
            "source": summary.source,
            "files": len(paths),
            "items_staged": summary.items_staged,
            "rejected": summary.rows_rejected,
            "warnings": summary.warnings,
        }
    )
    progress(f"  job {summary.job_id} {workload}: {summary.items_staged} items staged from {len(paths)} file(s)")


def _submit(workload: str, members: list[Candidate], inbox: Path, cfg: NightlyConfig, send) -> SubmitSummary:
    first = members[0].path
    if workload == "xray":
        xray_dir = inbox / "xray"
        return submit.submit_images(
            xray_dir if all(_under(c.path, xray_dir) for c in members) else inbox,
            database_url=cfg.database_url,
            send=send,
            batch_size=cfg.imaging_batch_size,
            files=[c.path for c in members],
            input_roots=cfg.input_roots,
            max_bytes=cfg.imaging_max_bytes,
            modalities=cfg.modalities,
            submitted_by="nightly",
        )
    if workload in ("risk", "treatment"):
        return submit.submit_records(
            first,
            workload,
            database_url=cfg.database_url,
            send=send,
            batch_size=cfg.batch_size,
            input_roots=cfg.input_roots,
            submitted_by="nightly",
        )
    if workload == "report":
        return submit.submit_reports(
            database_url=cfg.database_url,
            send=send,
            provider=cfg.llm_provider,
            llm_model=cfg.llm_model,
            path=first,
            batch_size=cfg.report_batch_size,
            input_roots=cfg.input_roots,
            submitted_by="nightly",
        )
    if workload == "molecules":
        from medbatch.producer.generation import default_batch_size, submit_molecules

        request = _read_request(first)
        return submit_molecules(
            database_url=cfg.database_url,
            send=send,
            batch_size=default_batch_size(cfg.molecule_batch_size),
            submitted_by="nightly",
            **request,
        )
    raise InvalidInput(f"no producer for workload {workload!r}")


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _read_request(path: Path) -> dict[str, Any]:
    """A molecule generation request: ``{"count": N, "seed": S, "temperature": T}`` (seed, temperature optional).

    At most ``MAX_REQUEST_BYTES`` are read; every value is checked for its type (``1.9`` is no count).
    """
    from medbatch.producer.generation import MAX_REQUEST_BYTES, request_from_json

    with open_regular(path) as fh:
        raw = fh.read(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidInput(f"{path.name}: larger than {MAX_REQUEST_BYTES // 1024} KiB, not a generation request")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, a 5,000-digit int
        raise InvalidInput(f"{path.name}: not a JSON generation request ({type(exc).__name__})") from None
    try:
        return request_from_json(data)
    except InvalidInput as exc:
        raise InvalidInput(f"{path.name}: {exc}") from None


def _recover_lost_claims(database_url: str, progress) -> None:
    """A run that stopped between claiming files and recording their job: re-link the job if it was
    created, otherwise forget the claim so this run takes the files again."""
    with session_scope(database_url) as s:
        lost = ledger.lost_claims(s)
        forget: list[int] = []
        for entry in lost:
            source = str(Path(entry.path).resolve()) if entry.workload != "xray" else None
            job = ledger.job_for_source(s, source, entry.taken_at) if source else None
            if job is None and entry.workload == "xray":
                job = _xray_job_since(s, entry.taken_at)
            if job is None:
                forget.append(entry.id)
            else:
                ledger.relink_lost_claim(s, entry.id, job)
        ledger.forget_entries(s, forget)
    if lost:
        progress(f"recovered {len(lost)} claim(s) left by an interrupted run ({len(forget)} to take again)")


def _xray_job_since(session, since: datetime) -> int | None:
    for job in repo.jobs_between(session, since, datetime.now(UTC) + timedelta(days=1)):
        if job.workload == "xray" and job.submitted_by == "nightly":
            return job.id
    return None


def _wait_for(outcome: NightlyOutcome, cfg: NightlyConfig, *, timeout_s: float, poll_s: float, progress) -> None:
    pending = {j["job_id"] for j in outcome.jobs}
    last = ""

    def report(latest: dict[int, dict]) -> None:  # one line over the jobs still running at the last look
        nonlocal pending, last
        counts = {j: c for j, c in latest.items() if j in pending}
        pending = {j for j, c in counts.items() if not is_finished(c)}
        line = ", ".join(
            f"job {j}: {c['items_done'] + c['items_failed']}/{c['items_total']}" for j, c in counts.items()
        )
        if line != last:
            progress(f"  waiting: {line}")
            last = line

    wait_for_jobs(
        cfg.database_url,
        sorted(pending),
        timeout_s=timeout_s,
        poll_s=poll_s,
        on_progress=report,
        broker_url=cfg.broker_url,
    )


def _drift_of(database_url: str, job: dict, counts: dict) -> list[str]:
    """The drifted features of a finished tabular or X-ray job (measured now if its worker has not yet)."""
    if job["workload"] not in repo.DRIFT_WORKLOADS or counts["status"] not in FINISHED_JOB:
        return []
    metrics = counts.get("metrics")
    if metrics is None:
        from medbatch.pipeline.drift import finalize_job

        metrics = finalize_job(database_url, job["job_id"])
    return list(((metrics or {}).get("drift") or {}).get("flagged") or [])


def _judge(outcome: NightlyOutcome, database_url: str, *, waited: bool) -> None:
    from medbatch.db.repository import morning as q

    ids = [j["job_id"] for j in outcome.jobs]
    measured: list[tuple[dict, dict]] = []
    with session_scope(database_url) as s:
        for j in outcome.jobs:
            c = repo.job_counts(s, j["job_id"])
            j.update(status=c["status"], items_done=c["items_done"], items_failed=c["items_failed"])
            if waited and c["status"] not in FINISHED_JOB:
                outcome.needs_human.append(f"job {j['job_id']} ({j['workload']}) did not finish: {c['status']}")
            elif c["status"] == "failed":
                outcome.needs_human.append(f"job {j['job_id']} ({j['workload']}) failed")
            elif c["items_failed"] or c["rows_rejected"]:
                outcome.needs_human.append(
                    f"job {j['job_id']} ({j['workload']}): {c['items_failed']} item(s) failed, "
                    f"{c['rows_rejected']} input(s) rejected; see `medbatch results {j['job_id']} --errors`"
                )
            measured.append((j, c))
        dead = q.dead_batches(s, ids)
        flagged, _ = q.flagged_xrays(s, ids, limit=0)
        reports = q.reports_to_review(s, ids)
    for j, c in measured:  # outside the session above: measuring drift may write the job's metrics
        drift = _drift_of(database_url, j, c)
        j["drift_flagged"] = drift
        if drift:
            outcome.needs_human.append(
                f"job {j['job_id']} ({j['workload']}): tonight's inputs drifted from the training data in "
                f"{', '.join(drift)}; the model's held-out figures may not hold for them "
                f"(see `medbatch status {j['job_id']}`)"
            )
    if dead:
        outcome.needs_human.append(f"{dead} batch(es) dead-lettered after repeated failures")
    for r in outcome.rejected:
        outcome.needs_human.append(f"inbox file refused: {r['path']}: {r['reason']}")
    outcome.awaiting_review = {"xray_positives": flagged, "draft_reports": reports}
