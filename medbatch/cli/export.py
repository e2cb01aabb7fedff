"""``medbatch export``: a finished job's results in the hospital's own formats (FHIR for the EHR)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from medbatch.cli._common import ExitCode, app, err, out, ready_db, with_exit_codes
from medbatch.config import get_settings, redact_url
from medbatch.errors import InvalidInput
from medbatch.producer.identity import whoami

export_app = typer.Typer(help="Export a finished job's results for the hospital's systems.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("fhir")
@with_exit_codes
def fhir(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the NDJSON files (made if missing).")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="FHIR server base URL: also POST the files as transaction Bundles (PUT by id)."),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, max=64, help="Processes building and validating (same files).")
    ] = 1,
) -> None:
    """Write a finished job's results as FHIR R4B Bulk Data NDJSON (one file per resource type) and print the
    manifest. Patients are referred to by identifier (MEDBATCH_FHIR_PATIENT_SYSTEM); the same job exported
    again gives identical files. --to sends them too (bearer token: MEDBATCH_FHIR_TOKEN)."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.interop.fhir.export import export_job

    settings = get_settings()
    if to is not None:
        parts = urlsplit(to)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"--to must be an http(s) FHIR base URL, not {redact_url(to)!r}")
        if parts.username or parts.password:
            raise InvalidInput("--to carries credentials: put a bearer token in MEDBATCH_FHIR_TOKEN instead")
    url = ready_db()
    with session_scope(url) as s:
        try:
            manifest = export_job(s, job_id, output, patient_system=settings.fhir_patient_system, jobs=jobs)
        except OSError as exc:
            raise InvalidInput(f"cannot write {output}: {exc.strerror or exc}") from None
    stats = manifest["extension"]["medbatch"]
    with session_scope(url) as s:
        repo.audit(
            s,
            actor=whoami(),
            action="export",
            job_id=job_id,
            detail={"what": "fhir", "output": str(output), **{k: v for k, v in stats.items() if k != "job"}},
        )
    out.print_json(json.dumps(manifest))
    skipped = stats["skipped_no_patient"]
    if skipped:
        err.print(f"{skipped} results without a patient identifier were not exported (FHIR files them by patient)")
    if stats.get("without_study"):
        err.print(f"{stats['without_study']} X-ray results have no Study Instance UID (not DICOM): no ImagingStudy")
    if stats["invalid"]:
        err.print(f"[bold red]error:[/] {stats['invalid']} results failed validation: see OperationOutcome.ndjson")
        raise typer.Exit(ExitCode.FAILED)
    if to is not None:
        from medbatch.interop.fhir.push import send

        token = settings.fhir_token.get_secret_value() if settings.fhir_token else None
        sent = send(output, to, token=token, timeout_s=settings.fhir_timeout_s)
        with session_scope(url) as s:
            repo.audit(s, actor=whoami(), action="export", job_id=job_id, detail={"what": "fhir-post", **sent})
        err.print(f"{sent['entries']} resources sent to {redact_url(to)} in {sent['bundles']} transaction Bundles")


@export_app.command("dicom")
@with_exit_codes
def dicom(
    job_id: Annotated[int, typer.Argument(help="Job id (an X-ray job whose sources are DICOM).")],
    to: Annotated[
        str,
        typer.Option(
            "--to", help="Destination PACS: a DICOMweb root (STOW-RS, http(s)://...) or AET@host:port (C-STORE)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Send an X-ray job's findings into a PACS: a Comprehensive SR (TID 1500, PRELIMINARY, UNVERIFIED) per
    result and, for each positive, a Secondary Capture of the Grad-CAM overlay marked NOT FOR DIAGNOSIS.
    Objects already delivered are not sent again (their UIDs are derived, so a PACS keeps one copy); failed
    ones are tried again. Credentials: MEDBATCH_PACS_USERNAME/_PASSWORD or MEDBATCH_PACS_TOKEN."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.interop.delivery import audit_detail, export_job

    settings = get_settings()
    url = ready_db()
    summary = export_job(
        job_id, to, database_url=url, access=settings.pacs_access(), calling_aet=settings.dicom_aet
    )
    with session_scope(url) as s:
        repo.audit(s, actor=whoami(), action="export", job_id=job_id, detail=audit_detail(summary))
    if as_json:
        out.print_json(json.dumps(summary.as_dict()))
    else:
        err.print(
            f"job {job_id}: {summary.sent} DICOM objects sent, {summary.already_sent} already there, "
            f"{summary.failed} failed ({summary.not_dicom} results without a DICOM source)"
        )
        for reason in summary.reasons:
            err.print(f"  [yellow]{reason}[/]", highlight=False)
    if summary.failed:
        raise typer.Exit(ExitCode.FAILED)
