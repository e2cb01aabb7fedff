"""``medbatch export fhir JOB -o DIR``: a finished job's results as validated FHIR R4B Bulk Data NDJSON.

Rows stream from the database and lines are written as they are built, so memory stays flat whatever
the job's size. Every resource passes :func:`medbatch.interop.fhir.checks.check` before it is written;
an item whose resources fail is withheld whole (no dangling references) and reported as an
OperationOutcome line in the manifest's ``error`` list.

Items without a patient identifier are skipped and counted (``skipped_no_patient``): the EHR files a
result by patient, and medbatch invents no Patient resources. X-ray items refer to their ImagingStudy by
Study Instance UID: from the payload for PACS-sourced items, read from the DICOM header (no pixels) for
DICOM files; PNG/JPEG files, or a DICOM without the UID, get no study reference (counted ``without_study``).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from medbatch.db import repository as repo
from medbatch.db.repository.fhir import iter_fhir_rows
from medbatch.db.tables import FINISHED_JOB
from medbatch.errors import InvalidFhirResource, InvalidInput
from medbatch.interop.fhir import checks
from medbatch.interop.fhir import resources as res
from medbatch.interop.fhir.bulk import NdjsonWriter, dumps, manifest

log = logging.getLogger("medbatch.interop.fhir")

#: Payload keys that may hold the Study Instance UID (``study``: items pulled from a PACS).
STUDY_KEYS = ("study", "study_instance_uid", "study_uid")


def study_uid(payload: dict[str, Any] | None) -> str | None:
    """The item's Study Instance UID, or None (not DICOM, the file is gone, or it has none)."""
    payload = payload or {}
    for key in STUDY_KEYS:
        if payload.get(key):
            return res.valid_dicom_uid(payload[key])
    if payload.get("kind") != "dicom" or not payload.get("path"):
        return None
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                payload["path"], stop_before_pixels=True, specific_tags=["StudyInstanceUID"], force=True
            )
        return res.valid_dicom_uid(ds.get("StudyInstanceUID"))
    except Exception:  # noqa: BLE001 - a moved or unreadable file only loses the study reference
        return None


def export_job(
    session: Session, job_id: int, out_dir: Path, *, patient_system: str, jobs: int = 1
) -> dict[str, Any]:
    """Write the job's resources under ``out_dir`` and return the Bulk Data manifest (also ``manifest.json``).

    ``jobs`` > 1 builds and validates in that many processes (chunks of :data:`CHUNK` rows, at most two
    chunks per process in flight, written in item order): the files are the same for any ``jobs``.

    Raises:
        NotFound: no such job.
        InvalidInput: the job has not finished, or its workload has no FHIR mapping (molecules).
    """
    job = repo.get_job(session, job_id)
    if job.workload not in res.BUILDERS:
        raise InvalidInput(
            f"job {job_id} is a {job.workload} job: FHIR export covers {', '.join(sorted(res.BUILDERS))} jobs"
        )
    if job.status not in FINISHED_JOB:
        raise InvalidInput(
            f"job {job_id} has not finished (status {job.status}): export it once it has "
            f"(`medbatch status {job_id}` shows its progress)"
        )
    if not patient_system.strip():
        raise InvalidInput("MEDBATCH_FHIR_PATIENT_SYSTEM is empty: set the identifier system of the patient ids")
    ctx = res.Context(instance=repo.instance_id(session), patient_system=patient_system)
    writer = NdjsonWriter(out_dir)
    devices: set[str] = set()
    stats = {"items": 0, "exported": 0, "skipped_no_patient": 0, "invalid": 0}
    if job.workload == "xray":
        stats["without_study"] = 0
    rows = iter_fhir_rows(session, job_id, with_payload=job.workload == "xray")
    try:
        for outcome in _outcomes(ctx, job.workload, rows, jobs):
            stats["items"] += 1
            kind = outcome["kind"]
            if kind == "skipped":
                stats["skipped_no_patient"] += 1
                continue
            if outcome.get("without_study"):
                stats["without_study"] += 1
            if kind == "invalid":
                stats["invalid"] += 1
                writer.write_line("OperationOutcome", outcome["outcome"])
                continue
            dev = outcome["device"]
            if dev["id"] not in devices:
                checks.check(dev)
                writer.write(dev)
                devices.add(dev["id"])
            for rtype, line in outcome["lines"]:
                writer.write_line(rtype, line)
            stats["exported"] += 1
        files = writer.commit()
    except BaseException:
        writer.abort()
        raise
    finished = job.finished_at or job.updated_at
    out = manifest(
        transaction_time=res.instant(finished),
        request=f"medbatch export fhir {job_id}",
        files=files,
        counts=writer.counts,
        extra={"job": job_id, "workload": job.workload, **stats},
    )
    (Path(out_dir) / "manifest.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


#: Rows per chunk handed to a process when ``jobs`` > 1.
CHUNK = 500


def _outcomes(ctx: res.Context, workload: str, rows: Iterator[dict[str, Any]], jobs: int) -> Iterator[dict]:
    """One outcome per row, in row order: built here, or by ``jobs`` processes with bounded work in flight."""
    if jobs <= 1:
        for row in rows:
            yield build_item(ctx, workload, row)
        return
    pending: deque[Future] = deque()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for chunk in _chunks(rows, CHUNK):
            pending.append(pool.submit(build_chunk, ctx, workload, chunk))
            if len(pending) >= 2 * jobs:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_chunk(ctx: res.Context, workload: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [build_item(ctx, workload, row) for row in rows]


def build_item(ctx: res.Context, workload: str, row: dict[str, Any]) -> dict[str, Any]:
    """One result's resources (each with its Provenance), checked and serialised; or why there are none.

    Returns ``{"kind": "skipped"}`` (no patient id), ``{"kind": "invalid", "outcome": line}`` or
    ``{"kind": "ok", "device": dict, "lines": [(type, line), ...]}``; X-rays add ``without_study``.
    """
    if not row["patient_ref"]:
        return {"kind": "skipped"}
    out: dict[str, Any] = {}
    sources: list[dict[str, Any]] = []
    if workload == "xray":
        row["study_uid"] = study_uid(row.pop("payload", None))
        if row["study_uid"]:
            sources.append(res.study_ref(row["study_uid"]))
        else:
            out["without_study"] = True
    try:
        dev = res.device(row["model_name"], row["model_version"])
        built = res.BUILDERS[workload](ctx, row, dev)
        recorded = res.instant(row["created_at"])
        built += [res.provenance(ctx, row["item_id"], r, dev, recorded, sources) for r in built]
        for resource in built:
            checks.check(resource)
    except (InvalidFhirResource, KeyError, TypeError, ValueError) as exc:
        return {**out, "kind": "invalid", "outcome": dumps(_outcome(ctx, row["item_id"], exc))}
    return {**out, "kind": "ok", "device": dev, "lines": [(r["resourceType"], dumps(r)) for r in built]}


def _outcome(ctx: res.Context, item_id: int, exc: Exception) -> dict[str, Any]:
    """An OperationOutcome naming the item and the rule broken (messages carry no values)."""
    message = str(exc) if isinstance(exc, InvalidFhirResource) else f"could not build: {type(exc).__name__}"
    log.warning("item %s: FHIR resource withheld: %s", item_id, message)
    return {
        "resourceType": "OperationOutcome",
        "id": res.resource_id(ctx, item_id, "operationoutcome"),
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": f"item {item_id}: {message}"}],
    }
