"""``medbatch submit risk|treatment|report|xray|molecules``: stage inputs as a job and queue its batches."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from medbatch.cli._common import (
    AsJson,
    BatchSize,
    IdColumn,
    Wait,
    app,
    err,
    out,
    ready_db,
    sender,
    with_exit_codes,
)
from medbatch.cli.jobs import follow
from medbatch.config import get_settings
from medbatch.exit_codes import job_exit_code

submit_app = typer.Typer(help="Stage inputs as a job and queue its batches.", no_args_is_help=True)
app.add_typer(submit_app, name="submit")

CsvFile = Annotated[Path, typer.Argument(help="Patient CSV file.")]


@contextmanager
def _staging_progress(verb: str, name: str, total_bytes: int | None, *, show: bool):
    """A progress bar on stderr while a producer stages inputs; yields its progress callback (None when
    the bar is hidden: --json, or stderr is not a terminal)."""
    if not (show and err.is_terminal):
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"{verb} {{task.description}}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[staged]} staged, {task.fields[rejected]} rejected"),
        TimeRemainingColumn(),
        console=err,
    )
    with bar:
        task = bar.add_task(name, total=total_bytes or None, staged=0, rejected=0)
        yield lambda done, staged, rejected: bar.update(task, completed=done, staged=staged, rejected=rejected)


def _submit_tabular(
    workload: str, file: Path, batch_size: int | None, id_column: str | None, as_json: bool, wait: bool
) -> None:
    from medbatch.producer.submit import submit_records

    settings = get_settings()
    url = ready_db()
    size = file.stat().st_size if file.is_file() else 0
    with _staging_progress("staging", file.name, size, show=not as_json) as progress:
        summary = submit_records(
            file,
            workload,
            database_url=url,
            send=sender(),
            batch_size=batch_size or settings.batch_size,
            id_column=id_column,
            progress=progress,
            input_roots=settings.allowed_input_roots(),
        )
    _after_submit(summary, url, as_json, wait)


def _after_submit(summary, url: str, as_json: bool, wait: bool) -> None:
    from medbatch.cli import allow_fast_exit

    allow_fast_exit()  # everything is committed and sent: the process may skip the interpreter's teardown
    if as_json and not wait:
        out.print_json(json.dumps(summary.as_dict()))
    elif not as_json:
        err.print(
            f"job [bold]{summary.job_id}[/]: {summary.items_staged} items in {summary.batches} batches queued, "
            f"{summary.rows_rejected} {'files' if summary.workload == 'xray' else 'rows'} rejected "
            f"(model {summary.model['name']} {summary.model['version']})"
        )
        for w in summary.warnings:
            err.print(f"[yellow]warning:[/] {w}")
    if wait:
        final = follow(url, summary.job_id, quiet=as_json)
        if as_json:
            out.print_json(json.dumps({**summary.as_dict(), "final": final}))
        else:
            err.print(
                f"job {final['job_id']} {final['status']}: {final['items_done']} done, {final['items_failed']} failed, "
                f"{final['rows_rejected']} rows rejected (see `medbatch results {final['job_id']} --errors`)"
            )
        raise typer.Exit(job_exit_code(final))


@submit_app.command("risk")
@with_exit_codes
def submit_risk(
    file: CsvFile, batch_size: BatchSize = None, id_column: IdColumn = None, as_json: AsJson = False, wait: Wait = False
) -> None:
    """Health-risk prediction over a CSV with age, bmi, exercise_frequency, smoking_history."""
    _submit_tabular("risk", file, batch_size, id_column, as_json, wait)


@submit_app.command("treatment")
@with_exit_codes
def submit_treatment(
    file: CsvFile, batch_size: BatchSize = None, id_column: IdColumn = None, as_json: AsJson = False, wait: Wait = False
) -> None:
    """Treatment plan over a CSV with age, blood_pressure, cholesterol, smoking_history, diabetes."""
    _submit_tabular("treatment", file, batch_size, id_column, as_json, wait)


@submit_app.command("report")
@with_exit_codes
def submit_report(
    file: Annotated[Path | None, typer.Argument(help="Patient-facts CSV (omit with --from-job).")] = None,
    from_job: Annotated[
        int | None, typer.Option("--from-job", help="Draft reports for the patients of this job.")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="online (now, per patient) or batch (OpenAI Batch API, within 24 h).")
    ] = "online",
    budget_tokens: Annotated[
        int | None, typer.Option(help="Stop sending once the job has used this many tokens.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="With --from-job: only the first N patients.")] = None,
    batch_size: BatchSize = None,
    id_column: IdColumn = None,
    as_json: AsJson = False,
    wait: Wait = False,
) -> None:
    """Draft medical reports (condition, recommended treatment, follow-up) for clinician review."""
    from medbatch.producer.submit import submit_reports

    settings = get_settings()
    url = ready_db()
    provider = settings.resolved_llm_provider()
    summary = submit_reports(
        database_url=url,
        send=sender(),
        provider=provider,
        llm_model=settings.llm_model,
        path=file,
        from_job=from_job,
        limit=limit,
        mode=mode,
        budget_tokens=budget_tokens,
        batch_size=batch_size or settings.report_batch_size,
        id_column=id_column,
        input_roots=settings.allowed_input_roots(),
    )
    _after_submit(summary, url, as_json, wait)
    if provider == "offline" and not as_json:
        err.print("[yellow]note:[/] no OpenAI API key is set: reports are OFFLINE TEMPLATE drafts, labelled as such")


@submit_app.command("xray")
@with_exit_codes
def submit_xray(
    folder: Annotated[
        Path | None, typer.Argument(help="Folder of PNG, JPEG or DICOM radiographs (searched recursively).")
    ] = None,
    from_pacs: Annotated[
        str | None,
        typer.Option(
            "--from-pacs",
            help="DICOMweb root of a PACS (e.g. http://pacs:8042/dicom-web) instead of a folder; credentials "
            "from MEDBATCH_PACS_USERNAME/_PASSWORD or MEDBATCH_PACS_TOKEN.",
        ),
    ] = None,
    study_date: Annotated[
        str | None, typer.Option("--study-date", help="With --from-pacs: YYYYMMDD or YYYYMMDD-YYYYMMDD.")
    ] = None,
    modality: Annotated[
        str | None, typer.Option("--modality", help="With --from-pacs: studies with these modalities, e.g. CR,DX.")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="File-name pattern to take (repeatable) \\[default: *].")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="File-name pattern to skip (repeatable).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Images per batch message \\[default: 64].")
    ] = None,
    as_json: AsJson = False,
    wait: Wait = False,
) -> None:
    """Chest X-ray pneumonia classification over a folder of images (or a PACS's studies, --from-pacs), with
    Grad-CAM and draft findings."""
    from medbatch.errors import InvalidInput
    from medbatch.producer.submit import submit_images

    settings = get_settings()
    if (folder is None) == (from_pacs is None):
        raise InvalidInput("give a folder or --from-pacs URL (one of them)")
    if from_pacs is None and (study_date or modality):
        raise InvalidInput("--study-date and --modality go with --from-pacs")
    url = ready_db()
    if from_pacs is not None:
        from medbatch.producer.pacs import submit_pacs

        summary = submit_pacs(
            from_pacs,
            database_url=url,
            send=sender(),
            batch_size=batch_size or settings.imaging_batch_size,
            access=settings.pacs_access(),
            study_date=study_date,
            modalities=[m.strip() for m in (modality or "").split(",") if m.strip()],
            accepted_modalities=settings.modality_list(),
        )
        _after_submit(summary, url, as_json, wait)
        return
    with _staging_progress("hashing", folder.name, None, show=not as_json) as progress:
        summary = submit_images(
            folder,
            database_url=url,
            send=sender(),
            batch_size=batch_size or settings.imaging_batch_size,
            include=include or ("*",),
            exclude=exclude or (),
            max_bytes=settings.imaging_max_file_mb * 2**20,
            modalities=settings.modality_list(),
            input_roots=settings.allowed_input_roots(),
            progress=progress,
        )
    _after_submit(summary, url, as_json, wait)


@submit_app.command("molecules")
@with_exit_codes
def submit_molecules(
    count: Annotated[int, typer.Option("--count", "-n", help="How many molecules to deliver (1 to 1,000,000).")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and model give the same molecules.")] = 0,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature, 0.05 to 3.0: 1.0 samples the model as trained.")
    ] = 1.0,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Molecules per batch message \\[default: MEDBATCH_MOLECULE_BATCH_SIZE]."),
    ] = None,
    max_samples: Annotated[
        int | None,
        typer.Option("--max-samples", help="Sample budget: stop there, short if need be \\[default: 3 x count]."),
    ] = None,
    allow_known: Annotated[
        bool, typer.Option("--allow-known", help="Deliver molecules of the MOSES training set too (else novel only).")
    ] = False,
    min_likelihood: Annotated[
        float | None,
        typer.Option(
            "--min-likelihood",
            help="Skip valid samples whose log-likelihood (nats, at --temperature) is below this, e.g. -30 "
            "(docs/models.md: its measured effect).",
        ),
    ] = None,
    as_json: AsJson = False,
    wait: Wait = False,
) -> None:
    """Deliver COUNT drug-like molecules (SMILES CharRNN): valid, distinct, passing the MOSES filters and novel;
    every sample is kept with its reason, and the model is measured against MOSES over all of them."""
    from medbatch.producer.generation import default_batch_size, submit_molecules

    url = ready_db()
    summary = submit_molecules(
        database_url=url,
        send=sender(),
        count=count,
        seed=seed,
        temperature=temperature,
        batch_size=batch_size or default_batch_size(get_settings().molecule_batch_size),
        max_samples=max_samples,
        allow_known=allow_known,
        min_likelihood=min_likelihood,
    )
    _after_submit(summary, url, as_json, wait)
