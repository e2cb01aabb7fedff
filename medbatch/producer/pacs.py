"""X-rays from a PACS: a QIDO-RS search becomes an X-ray job of one item per SOP Instance UID.

The producer reads headers only (the QIDO-RS answer): no pixel crosses it. Each item's payload names
the instance (study, series and SOP Instance UIDs and the DICOMweb root); the imaging **worker**
retrieves it by WADO-RS when it processes the batch, so workers on other hosts need no shared disk.
The same instance listed twice is one item (its key is ``sop:<SOP Instance UID>``, as a file's content
hash is for folders). An instance of a modality that is not a radiograph, or without pixels, is a
rejection with the same reason a file would get. UIDs and patient IDs stay in the database: they are
never logged and never put on the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from medbatch.errors import InvalidInput, PacsUnavailable
from medbatch.interop.dicomweb import DicomWeb, PacsAccess, check_study_date, check_url, json_value
from medbatch.ml import images
from medbatch.producer.chunks import RecordChunk, shown

log = logging.getLogger("medbatch.producer.pacs")


@dataclass
class PacsScan:
    """What a PACS search found (filled in as the chunks are consumed)."""

    studies: int = 0
    instances: int = 0
    duplicates: int = 0
    modalities: dict[str, int] = field(default_factory=dict)


def instance_uri(url: str, study: str, series: str, sop: str) -> str:
    """The WADO-RS URI of an instance: an item's ``source_uri`` (kept in the database, never logged)."""
    return f"{url}/studies/{study}/series/{series}/instances/{sop}"


def iter_pacs_instances(
    web: DicomWeb, *, study_date: str | None, modalities: Sequence[str], scan: PacsScan
) -> Iterator[dict]:
    """Every instance of every study matching (DICOM JSON), study by study."""
    for study in web.search_studies(study_date=study_date, modalities=modalities):
        uid = json_value(study, "StudyInstanceUID")
        if not uid:
            continue
        scan.studies += 1
        yield from web.search_instances(uid)


def iter_pacs_chunks(
    url: str,
    instances: Iterable[dict],
    *,
    scan: PacsScan,
    chunk_size: int = 1000,
    modalities: Sequence[str] = tuple(images.RADIOGRAPH_MODALITIES),
    progress: Callable[[int], None] | None = None,
) -> Iterator[RecordChunk]:
    """Turn QIDO-RS instance answers into items (one per SOP Instance UID) and rejections."""
    allowed = frozenset(m.upper() for m in modalities)
    seen: set[str] = set()
    chunk = RecordChunk()
    for ds in _until_broken(instances, scan):
        study, series, sop = (json_value(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        if not (study and series and sop):
            continue  # a PACS answer without the identifying UIDs cannot be retrieved: nothing to name
        scan.instances += 1
        modality = str(json_value(ds, "Modality") or "").strip().upper()
        scan.modalities[modality or "?"] = scan.modalities.get(modality or "?", 0) + 1
        source = instance_uri(url, study, series, sop)
        patient = str(json_value(ds, "PatientID") or "").strip()[:128] or None
        reason = None
        if "\x00" in "".join(map(str, (study, series, sop, patient or ""))):
            # no text column can store one; the answer is recorded with the character written as \x00
            reason = "the PACS answer holds a NUL character in the patient ID or a UID: a damaged header?"
            source, patient, sop = shown(source), shown(patient), shown(str(sop))
        elif modality and modality not in allowed:
            reason = f"DICOM modality {modality} is not a radiograph (accepted: {', '.join(sorted(allowed))})"
        elif json_value(ds, "Rows") is None and json_value(ds, "Columns") is None:
            reason = "DICOM has no image (no rows/columns: a DICOMDIR, report or other non-image)"
        if sop in seen:
            scan.duplicates += 1
        elif reason is not None:
            seen.add(sop)
            chunk.rejected.append({"source_uri": source, "source_row": None, "patient_ref": patient, "reason": reason})
        else:
            seen.add(sop)
            chunk.items.append(
                {
                    "item_key": f"sop:{sop}"[:128],
                    "source_uri": source,
                    "source_row": None,
                    "patient_ref": patient,
                    "payload": {"kind": "dicom", "pacs": url, "study": study, "series": series, "sop": sop},
                }
            )
        if len(chunk.items) + len(chunk.rejected) >= chunk_size:
            yield chunk
            chunk = RecordChunk()
        if progress is not None:
            progress(scan.instances)
    yield chunk


def submit_pacs(
    url: str,
    *,
    database_url: str,
    send,
    batch_size: int,
    access: PacsAccess | None = None,
    study_date: str | None = None,
    modalities: Sequence[str] = (),
    accepted_modalities: Sequence[str] | None = None,
    model: tuple[str, str] | None = None,
    progress=None,
    submitted_by: str | None = None,
):
    """Search the PACS at ``url`` (a DICOMweb root) and stage every instance found as an X-ray job.

    ``modalities`` narrows the study search (``ModalitiesInStudy``); within the studies found, an
    instance of a modality outside ``accepted_modalities`` (the radiograph list) is a recorded rejection.

    Raises:
        InvalidInput: a bad URL or date, or the search found no study.
        PacsUnavailable: the PACS could not be searched (nothing was staged).
        MissingExtra: the ``imaging`` extra is not installed.
    """
    from medbatch.extras import require_workload
    from medbatch.producer.staging import ensure_model, stage_job

    require_workload("xray")
    url = check_url(url)
    study_date = check_study_date(study_date)
    web = DicomWeb(url, access)
    scan = PacsScan()
    try:
        wanted = [m.upper() for m in modalities]
        instances = iter_pacs_instances(web, study_date=study_date, modalities=wanted, scan=scan)
        first = next(instances, None)  # fail fast, before a job exists: the PACS is up and has something
        if first is None:
            raise InvalidInput(
                "the PACS search found no study"
                + (f" dated {study_date}" if study_date else "")
                + (f" with modality {', '.join(modalities)}" if modalities else "")
            )
        model = model or ensure_model(database_url, "xray")
        summary = stage_job(
            database_url=database_url,
            workload="xray",
            source=url,
            model=model,
            options={
                "pacs": url,
                "study_date": study_date,
                "modalities": wanted,
            },
            chunks=iter_pacs_chunks(
                url,
                _chain(first, instances),
                scan=scan,
                chunk_size=batch_size,
                modalities=tuple(accepted_modalities or images.RADIOGRAPH_MODALITIES),
                progress=progress,
            ),
            batch_size=batch_size,
            send=send,
            submitted_by=submitted_by,
        )
    finally:
        web.close()
    if scan.duplicates:
        summary.warnings.append(f"{scan.duplicates} instance(s) were listed more than once and are processed once")
    log.info("job %s: %d studies, %d instances searched", summary.job_id, scan.studies, scan.instances)
    return summary


def _until_broken(instances: Iterable[dict], scan: PacsScan) -> Iterator[dict]:
    """``instances``; a PACS that breaks off mid-search fails the job with the reason (what was staged stays)."""
    try:
        yield from instances
    except PacsUnavailable as exc:
        raise InvalidInput(f"the PACS search broke off after {scan.instances} instances: {exc}") from None


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest
