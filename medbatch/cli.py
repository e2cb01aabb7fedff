"""The ``medbatch`` command line. Importing it must stay light: no TensorFlow, no model loading."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medbatch.config import get_settings, redact_url
from medbatch.errors import BrokerUnavailable, DatabaseUnavailable, InvalidInput, MedbatchError, NotFound
from medbatch.producer.identity import whoami

app = typer.Typer(
    help="medbatch: overnight AI batch processing for hospital data.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
submit_app = typer.Typer(help="Stage inputs as a job and queue its batches.", no_args_is_help=True)
train_app = typer.Typer(help="Train a model, evaluate it on held-out data and register it.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
worker_app = typer.Typer(help="Run a Celery worker (default) or check one.", invoke_without_command=True)
app.add_typer(submit_app, name="submit")
app.add_typer(train_app, name="train")
app.add_typer(db_app, name="db")
app.add_typer(worker_app, name="worker")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_INVALID_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _handle(exc: MedbatchError) -> typer.Exit:
    if isinstance(exc, InvalidInput):
        return _fail(str(exc), EXIT_INVALID_INPUT)
    if isinstance(exc, NotFound):
        return _fail(str(exc), EXIT_NOT_FOUND)
    if isinstance(exc, BrokerUnavailable):
        return _fail(
            f"{exc}. Is Redis running at {redact_url(get_settings().broker_url)}, with the password and TLS "
            "settings of that URL?",
            EXIT_UNAVAILABLE,
        )
    if isinstance(exc, DatabaseUnavailable):
        return _fail(f"{exc} ({redact_url(get_settings().database_url)})", EXIT_UNAVAILABLE)
    return _fail(str(exc), 1)


def _db() -> str:
    """The database URL, with the schema brought up to date (cheap when it already is)."""
    from medbatch.db.migrate import upgrade

    url = get_settings().database_url
    try:
        upgrade(url)
    except Exception as exc:  # noqa: BLE001 - say what is wrong, not a traceback
        from medbatch.db.session import describe, is_transient

        if is_transient(exc):
            raise _handle(DatabaseUnavailable(f"database unreachable: {describe(exc)}")) from None
        raise
    return url


def _sender():
    from medbatch.producer.enqueue import celery_sender
    from medbatch.worker.app import create_app

    settings = get_settings()
    return celery_sender(create_app(settings), settings.database_url)


# --------------------------------------------------------------------------- submit


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
    from medbatch.producer.enqueue import submit_records

    settings = get_settings()
    url = _db()
    size = file.stat().st_size if file.is_file() else 0
    try:
        with _staging_progress("staging", file.name, size, show=not as_json) as progress:
            summary = submit_records(
                file,
                workload,
                database_url=url,
                send=_sender(),
                batch_size=batch_size or settings.batch_size,
                id_column=id_column,
                progress=progress,
                input_roots=settings.allowed_input_roots(),
            )
    except MedbatchError as exc:
        raise _handle(exc) from None
    _after_submit(summary, url, as_json, wait)


def _after_submit(summary, url: str, as_json: bool, wait: bool) -> None:
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
        final = _wait(url, summary.job_id, quiet=as_json)
        if as_json:
            out.print_json(json.dumps({**summary.as_dict(), "final": final}))
        else:
            err.print(
                f"job {final['job_id']} {final['status']}: {final['items_done']} done, {final['items_failed']} failed, "
                f"{final['rows_rejected']} rows rejected (see `medbatch results {final['job_id']} --errors`)"
            )
        raise typer.Exit(1 if final["status"] == "failed" else 0)


BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Items per batch message \\[default: 500].")]
IdColumn = Annotated[
    str | None, typer.Option(help="Column holding the patient identifier (default: patient_id, mrn...).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the job has finished.")]
CsvFile = Annotated[Path, typer.Argument(help="Patient CSV file.")]


@submit_app.command("risk")
def submit_risk(
    file: CsvFile, batch_size: BatchSize = None, id_column: IdColumn = None, as_json: AsJson = False, wait: Wait = False
) -> None:
    """Health-risk prediction over a CSV with age, bmi, exercise_frequency, smoking_history."""
    _submit_tabular("risk", file, batch_size, id_column, as_json, wait)


@submit_app.command("treatment")
def submit_treatment(
    file: CsvFile, batch_size: BatchSize = None, id_column: IdColumn = None, as_json: AsJson = False, wait: Wait = False
) -> None:
    """Treatment plan over a CSV with age, blood_pressure, cholesterol, smoking_history, diabetes."""
    _submit_tabular("treatment", file, batch_size, id_column, as_json, wait)


@submit_app.command("report")
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
    from medbatch.producer.enqueue import submit_reports

    settings = get_settings()
    url = _db()
    provider = settings.resolved_llm_provider()
    try:
        summary = submit_reports(
            database_url=url,
            send=_sender(),
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
    except MedbatchError as exc:
        raise _handle(exc) from None
    _after_submit(summary, url, as_json, wait)
    if provider == "offline" and not as_json:
        err.print("[yellow]note:[/] no OpenAI API key is set: reports are OFFLINE TEMPLATE drafts, labelled as such")


@submit_app.command("xray")
def submit_xray(
    folder: Annotated[Path, typer.Argument(help="Folder of PNG, JPEG or DICOM radiographs (searched recursively).")],
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
    """Chest X-ray pneumonia classification over a folder of images, with Grad-CAM and draft findings."""
    from medbatch.producer.enqueue import submit_images

    settings = get_settings()
    url = _db()
    try:
        with _staging_progress("hashing", folder.name, None, show=not as_json) as progress:
            summary = submit_images(
                folder,
                database_url=url,
                send=_sender(),
                batch_size=batch_size or settings.imaging_batch_size,
                include=include or ("*",),
                exclude=exclude or (),
                max_bytes=settings.imaging_max_file_mb * 2**20,
                modalities=settings.modality_list(),
                input_roots=settings.allowed_input_roots(),
                progress=progress,
            )
    except MedbatchError as exc:
        raise _handle(exc) from None
    _after_submit(summary, url, as_json, wait)


@submit_app.command("molecules")
def submit_molecules(
    count: Annotated[int, typer.Option("--count", "-n", help="How many molecules to generate (1 to 1,000,000).")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and model give the same molecules.")] = 0,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature, 0.05 to 3.0: 1.0 samples the model as trained.")
    ] = 1.0,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Molecules per batch message \\[default: 500].")
    ] = None,
    as_json: AsJson = False,
    wait: Wait = False,
) -> None:
    """Generate drug-like molecules (SMILES CharRNN), scored with RDKit and measured against MOSES."""
    from medbatch.producer.generation import DEFAULT_BATCH_SIZE, submit_molecules

    url = _db()
    try:
        summary = submit_molecules(
            database_url=url,
            send=_sender(),
            count=count,
            seed=seed,
            temperature=temperature,
            batch_size=batch_size or DEFAULT_BATCH_SIZE,
        )
    except MedbatchError as exc:
        raise _handle(exc) from None
    _after_submit(summary, url, as_json, wait)


# --------------------------------------------------------------------------- status, results, resume


def _counts(url: str, job_id: int) -> dict:
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.db.tables import FINISHED_JOB

    try:
        with session_scope(url) as s:
            counts = repo.job_counts(s, job_id)
            if counts["workload"] in ("risk", "treatment", "xray"):
                counts["labels"] = {str(k): v for k, v in repo.label_counts(s, job_id).items()}
        if counts["workload"] == "molecules" and counts["status"] in FINISHED_JOB and counts.get("metrics") is None:
            # The worker that finished the job died before measuring it: measure it now (idempotent).
            from medbatch.pipeline.molecules import finalize_job

            counts["metrics"] = finalize_job(url, job_id)
        return counts
    except MedbatchError as exc:
        raise _handle(exc) from None


#: Seconds without progress before `--wait` reminds the user that a worker must be running.
NO_PROGRESS_HINT_S = 30.0


def _wait(url: str, job_id: int, *, quiet: bool = False, poll_s: float = 1.0, timeout_s: float | None = None) -> dict:
    """Poll the job until it finishes (or ``timeout_s``), with a progress bar on a terminal."""
    from contextlib import nullcontext

    from medbatch.db.tables import FINISHED_JOB

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    show = not quiet and err.is_terminal
    counts = _counts(url, job_id)
    last_done, last_change, hinted = -1, time.monotonic(), False
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn(f"job {job_id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[s]}"),
            TimeElapsedColumn(),
            console=err,
        )
    with bar if show else nullcontext():
        task = bar.add_task("", total=counts["items_total"] or 1, s=counts["status"]) if show else None
        while counts["status"] not in FINISHED_JOB and (deadline is None or time.monotonic() < deadline):
            time.sleep(poll_s)
            counts = _counts(url, job_id)
            done = counts["items_done"] + counts["items_failed"]
            if show:
                bar.update(task, total=counts["items_total"] or 1, completed=done, s=counts["status"])
            if done != last_done:
                last_done, last_change = done, time.monotonic()
            elif not hinted and not quiet and time.monotonic() - last_change > NO_PROGRESS_HINT_S:
                from medbatch.worker.routing import route_for

                queue = route_for(counts["workload"]).queue
                err.print(
                    f"[yellow]no progress for {NO_PROGRESS_HINT_S:.0f}s:[/] is a worker consuming the "
                    f"'{queue}' queue? Start one with `medbatch worker -Q {queue}`."
                )
                hinted = True
    return counts


def _print_status(c: dict) -> None:
    table = Table(title=f"job {c['job_id']} · {c['workload']} · {c['status']}", show_header=False)
    table.add_row("source", c["source"])
    table.add_row("model", f"{c['model']['name']} {c['model']['version']}")
    table.add_row("progress", f"{c['progress']:.1%}")
    table.add_row(
        "items",
        f"{c['items_total']} total · {c['items_done']} done · {c['items_failed']} failed · "
        f"{c['items_pending']} pending",
    )
    table.add_row("files rejected" if c["workload"] == "xray" else "rows rejected", str(c["rows_rejected"]))
    if c.get("labels"):
        review = " (awaiting clinician review)" if c["workload"] == "xray" else ""
        table.add_row(
            "labels",
            " · ".join(f"{k} {v}{review if k == 'pneumonia' else ''}" for k, v in sorted(c["labels"].items())),
        )
    table.add_row("batches", ", ".join(f"{k} {v}" for k, v in sorted(c["batches"].items())) or "none")
    if c["errors_by_stage"]:
        table.add_row("errors", ", ".join(f"{k} {v}" for k, v in sorted(c["errors_by_stage"].items())))
    if c.get("provider_batch"):
        pb = c["provider_batch"]
        counts = pb.get("request_counts") or {}
        table.add_row(
            "provider batch",
            f"{pb.get('id')} · {pb.get('status')} · "
            + ", ".join(f"{k} {v}" for k, v in counts.items() if v is not None),
        )
    if c["error"]:
        table.add_row("job error", c["error"])
    if c.get("metrics") and c["workload"] == "molecules":
        _add_molecule_metrics(table, c["metrics"])
    table.add_row("created", c["created_at"] or "")
    table.add_row("finished", c["finished_at"] or "")
    out.print(table)


def _add_molecule_metrics(table: Table, m: dict) -> None:
    """Job metrics beside the MOSES CharRNN row."""

    def f(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    ref = m.get("reference") or {}
    table.add_row(
        "molecules",
        f"{m['generated']} generated · {m['valid']} valid · {m['unique']} unique · {m['duplicates']} duplicates",
    )
    keys = ("validity", "unique@1k", "unique@10k", "novelty", "intdiv", "filters")
    table.add_row("metric", "   ".join(f"{k:>10}" for k in keys))
    table.add_row("this job", "   ".join(f"{f(m.get(k)):>10}" for k in keys))
    table.add_row("MOSES CharRNN", "   ".join(f"{f(ref.get(k)) if k in ref else '-':>10}" for k in keys))
    used = (m.get("unique@k_used") or {}).get("10k")
    if used is not None and used < 10_000:
        k = "unique@1k and unique@10k are" if used < 1000 else "unique@10k is"
        table.add_row("note", f"{k} over the {used} valid molecules there are (fewer than k; as MOSES does)")
    table.add_row(
        "properties",
        f"QED mean {f(m.get('qed_mean'))} · SA mean {f(m.get('sa_mean'))} · Lipinski pass {f(m.get('lipinski_pass'))}"
        f" · PAINS-free {f(m.get('pains_free'))} (unique valid molecules)",
    )


@app.command()
def status(
    job_id: Annotated[int | None, typer.Argument(help="Job id; omit to list recent jobs.")] = None,
    as_json: AsJson = False,
    watch: Annotated[bool, typer.Option("--watch", help="Follow until the job finishes.")] = False,
) -> None:
    """Counts by state, progress and errors of a job (or the recent jobs)."""
    url = _db()
    if job_id is None:
        from medbatch.db import repository as repo
        from medbatch.db.session import session_scope

        with session_scope(url) as s:
            jobs = [repo.job_counts(s, j.id) for j in repo.list_jobs(s)]
        if as_json:
            out.print_json(json.dumps(jobs))
            return
        table = Table("job", "workload", "status", "items", "done", "failed", "rejected", "created")
        for c in jobs:
            table.add_row(
                str(c["job_id"]),
                c["workload"],
                c["status"],
                str(c["items_total"]),
                str(c["items_done"]),
                str(c["items_failed"]),
                str(c["rows_rejected"]),
                c["created_at"] or "",
            )
        out.print(table)
        return
    counts = _wait(url, job_id, quiet=as_json) if watch else _counts(url, job_id)
    if as_json:
        out.print_json(json.dumps(counts))
    else:
        _print_status(counts)


@app.command()
def results(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json (JSON Lines) or parquet.")] = "csv",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write; default standard output.")
    ] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Export the recorded errors instead of results.")] = False,
) -> None:
    """Export a job's results (or errors), each row naming its source file, row and patient id."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.export import ERROR_COLUMNS, FORMATS, RESULT_COLUMNS, write_rows

    if fmt not in FORMATS:
        raise _fail(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}", EXIT_INVALID_INPUT)
    if fmt == "parquet" and output is None:
        raise _fail("parquet is binary: give --output FILE", EXIT_INVALID_INPUT)
    url = _db()
    try:
        with session_scope(url) as s:
            repo.get_job(s, job_id)
            rows = repo.iter_errors(s, job_id) if errors else repo.iter_results(s, job_id)
            try:
                n = write_rows(rows, fmt, output, empty_columns=ERROR_COLUMNS if errors else RESULT_COLUMNS)
            except OSError as exc:
                raise InvalidInput(f"cannot write {output}: {exc.strerror or exc}") from None
        with session_scope(url) as s:
            repo.audit(
                s,
                actor=whoami(),
                action="export",
                job_id=job_id,
                detail={
                    "what": "errors" if errors else "results",
                    "format": fmt,
                    "rows": n,
                    "output": str(output) if output else "stdout",
                },
            )
    except MedbatchError as exc:
        raise _handle(exc) from None
    if output:
        err.print(f"{n} {'errors' if errors else 'results'} written to {output}")


@app.command()
def resume(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Re-send every unfinished batch of a job (after a broker loss, say). Safe to repeat: writes are idempotent."""
    from medbatch.producer.enqueue import resume_job

    url = _db()
    try:
        sent = resume_job(job_id, database_url=url, send=_sender())
    except MedbatchError as exc:
        raise _handle(exc) from None
    err.print(f"job {job_id}: {sent} unfinished batch(es) re-sent")


@app.command("reconcile")
def reconcile_cmd(
    older_than_s: Annotated[
        int | None, typer.Option(help="Re-send batches untouched this long [MEDBATCH_RECONCILE_AFTER_S].")
    ] = None,
) -> None:
    """Find batches stuck past their deadline (lost messages, a Redis that lost its data) and re-send them."""
    from medbatch.producer.enqueue import reconcile

    settings = get_settings()
    url = _db()
    try:
        sent = reconcile(database_url=url, send=_sender(), older_than_s=older_than_s or settings.reconcile_after_s)
    except MedbatchError as exc:
        raise _handle(exc) from None
    err.print(f"{sum(sent.values())} stuck batch(es) re-sent" + (f" for jobs {sorted(sent)}" if sent else ""))


@app.command()
def beat() -> None:
    """Run Celery beat: the reconciler every MEDBATCH_RECONCILE_INTERVAL_S (one beat per deployment)."""
    from medbatch.worker.app import app as celery_app

    celery_app.Beat(loglevel=get_settings().log_level, schedule="/tmp/medbatch-beat-schedule").run()


# --------------------------------------------------------------------------- the night


@app.command()
def nightly(
    inbox: Annotated[
        Path | None, typer.Option("--inbox", help="Inbox folder [MEDBATCH_NIGHTLY_INBOX].", show_default=False)
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the jobs, then judge the night.")] = True,
    timeout_s: Annotated[
        int | None, typer.Option(help="Longest wait in seconds [MEDBATCH_NIGHTLY_TIMEOUT_S].", show_default=False)
    ] = None,
    settle_s: Annotated[
        int | None, typer.Option(help="Leave files modified this recently [MEDBATCH_NIGHTLY_SETTLE_S].")
    ] = None,
    summary: Annotated[bool, typer.Option("--summary/--no-summary", help="Write the night's HTML page.")] = True,
    as_json: AsJson = False,
) -> None:
    """Submit what arrived in the inbox since the last run, wait, and exit 1 if anything needs a human."""
    from dataclasses import replace

    from medbatch.nightly import NightlyConfig, run_nightly

    settings = get_settings()
    folder = inbox or settings.nightly_inbox
    if folder is None:
        raise _fail("give --inbox DIR or set MEDBATCH_NIGHTLY_INBOX", EXIT_INVALID_INPUT)
    url = _db()
    cfg = NightlyConfig.from_settings(settings)
    if settle_s is not None:
        cfg = replace(cfg, settle_s=settle_s)
    say = (lambda m: None) if as_json else (lambda m: err.print(m, highlight=False))
    try:
        outcome = run_nightly(
            folder,
            cfg,
            _sender(),
            wait=wait,
            timeout_s=timeout_s if timeout_s is not None else settings.nightly_timeout_s,
            progress=say,
        )
        if summary and wait:
            from datetime import date

            from medbatch.summary import write_night

            outcome.summary_html = str(
                write_night(url, date.fromisoformat(outcome.night), settings.results_dir / "nights", settings.timezone)
            )
    except MedbatchError as exc:
        raise _handle(exc) from None
    if as_json:
        out.print_json(json.dumps(outcome.as_dict(), default=str))
    else:
        for j in outcome.jobs:
            err.print(
                f"job {j['job_id']} {j['workload']}: {j.get('status')} ({j.get('items_done', 0)} done, "
                f"{j.get('items_failed', 0)} failed, {j['rejected']} rejected)",
                highlight=False,
            )
        review = outcome.awaiting_review
        err.print(
            f"awaiting clinical review: {review.get('xray_positives', 0)} X-ray positive(s), "
            f"{review.get('draft_reports', 0)} draft report(s)"
        )
        if outcome.summary_html:
            err.print(f"summary: {outcome.summary_html}")
        if outcome.needs_human:
            err.print("[bold red]needs a human:[/]")
            for line in outcome.needs_human:
                err.print(f"  - {line}", highlight=False)
        elif not outcome.jobs:
            err.print("nothing new in the inbox")
        else:
            err.print("[green]every job of the night completed cleanly[/]")
    raise typer.Exit(outcome.exit_code)


@app.command("report-night")
def report_night(
    night: Annotated[
        str | None, typer.Argument(help="The night, YYYY-MM-DD (noon to noon) [default: the last one].")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for the page [MEDBATCH_RESULTS_DIR/nights].")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Write the morning summary of a night as one self-contained HTML page (plots inside)."""
    from datetime import UTC, date, datetime

    from medbatch.nightly import night_of
    from medbatch.summary import collect, write_night

    settings = get_settings()
    url = _db()
    try:
        day = date.fromisoformat(night) if night else night_of(datetime.now(UTC), settings.timezone)
    except ValueError:
        raise _fail(f"not a date: {night!r} (use YYYY-MM-DD)", EXIT_INVALID_INPUT) from None
    if as_json:
        data = collect(url, day, settings.timezone)
        out.print_json(json.dumps(data, default=str))
        return
    path = write_night(url, day, output or settings.results_dir / "nights", settings.timezone)
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    with session_scope(url) as s:
        repo.audit(s, actor=whoami(), action="export", detail={"night": day.isoformat(), "file": str(path)})
    out.print(str(path))


# --------------------------------------------------------------------------- models


@train_app.command("risk")
def train_risk(
    csv_file: Annotated[
        Path | None, typer.Argument(help="CSV with the risk input columns and a target column.")
    ] = None,
    target: Annotated[str, typer.Option(help="Outcome column (0/1).")] = "outcome",
    dataset: Annotated[str | None, typer.Option(help="Train on a built-in dataset instead: nhefs.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the LogisticRegression risk model, evaluate it on a held-out split and register it."""
    _train("risk", csv_file, target, dataset or ("nhefs" if csv_file is None else None), out_dir, seed)


@train_app.command("treatment")
def train_treatment(
    csv_file: Annotated[
        Path | None, typer.Argument(help="CSV with the treatment input columns and a plan column.")
    ] = None,
    target: Annotated[str, typer.Option(help="Plan label column (any number of classes).")] = "outcome",
    dataset: Annotated[str | None, typer.Option(help="Train on a built-in dataset instead: framingham.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the RandomForest treatment-plan model, evaluate it on a held-out split and register it."""
    _train("treatment", csv_file, target, dataset or ("framingham" if csv_file is None else None), out_dir, seed)


@train_app.command("xray")
def train_xray(
    data_dir: Annotated[
        Path, typer.Argument(help="The chest_xray folder: train/NORMAL, train/PNEUMONIA, optional val/ and test/.")
    ],
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping on validation AUC).")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per training step.")] = 32,
    input_size: Annotated[int, typer.Option(min=32, max=1024, help="Square input side in pixels.")] = 150,
    filters: Annotated[str, typer.Option(help="Conv filters per block, comma-separated.")] = "32,64,128",
    dense_units: Annotated[int, typer.Option(min=1, help="Units of the dense layer.")] = 512,
    learning_rate: Annotated[float, typer.Option(min=1e-6, help="Adam learning rate.")] = 1e-3,
    threshold: Annotated[
        str, typer.Option(help="youden (chosen on validation data) or a fixed probability such as 0.5.")
    ] = "youden",
    holdout: Annotated[
        float, typer.Option(min=0.05, max=0.5, help="Share of train held out when val/ or test/ is missing or tiny.")
    ] = 0.15,
    augment: Annotated[bool, typer.Option(help="Random rotation, shift, zoom and contrast while training.")] = True,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the article's X-ray CNN, report held-out AUC/sensitivity/specificity and register it."""
    from medbatch.ml import registry, xray

    url = _db()
    try:
        try:
            config = xray.XrayConfig(
                input_size=input_size,
                filters=tuple(int(f) for f in filters.split(",") if f.strip()),
                dense_units=dense_units,
                learning_rate=learning_rate,
                batch_size=batch_size,
                epochs=epochs,
                augment=augment,
            )
            chosen: str | float = threshold if threshold == "youden" else float(threshold)
        except ValueError:
            raise InvalidInput(
                f"--filters takes integers like 32,64,128, --threshold youden or 0..1 (got {filters!r}, {threshold!r})"
            ) from None
        if not isinstance(chosen, str) and not 0 < chosen < 1:
            raise InvalidInput("--threshold must be between 0 and 1 (or youden)")
        trained = xray.train_xray(
            data_dir,
            config=config,
            seed=seed,
            holdout_fraction=holdout,
            threshold=chosen,
            threads=get_settings().imaging_decode_threads,
            log=lambda m: err.print(m, highlight=False),
        )
        directory = Path(out_dir or get_settings().model_dir)
        path = registry.save_versioned(
            lambda d: xray.save_model(trained.keras_model, trained.meta, d), directory, "xray"
        )
        card = xray.write_card(trained, path)
        version = _register_trained(url, "xray", path, trained.meta["metrics"], trained.meta["training_data"]["root"])
    except MedbatchError as exc:
        raise _handle(exc) from None
    test = trained.meta["metrics"]["test"]
    err.print(f"saved {path} (version {version}), registered as the active xray model; card {card}")
    out.print_json(
        json.dumps(
            {
                "name": "xray",
                "version": version,
                "artifact": str(path),
                "threshold": trained.meta["threshold"],
                "held_out_test": test,
                "splits": trained.meta["training_data"]["splits"],
                "notes": trained.meta["training_data"]["notes"],
            },
            default=str,
        )
    )


@train_app.command("molecules")
def train_molecules(
    subset: Annotated[
        int, typer.Option(min=0, help="MOSES training SMILES to use, a seeded random subset (0 = all 1.58M).")
    ] = 280_000,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the subset.")] = 1,
    units: Annotated[int, typer.Option(min=8, help="LSTM units per layer.")] = 256,
    layers: Annotated[int, typer.Option(min=1, max=6, help="LSTM layers.")] = 2,
    learning_rate: Annotated[float, typer.Option(min=1e-6, help="Adam learning rate (cosine decay).")] = 2e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="SMILES per training step.")] = 128,
    eval_samples: Annotated[
        int, typer.Option(min=0, help="Molecules sampled after training to measure the MOSES metrics.")
    ] = 10_000,
    time_budget_min: Annotated[
        float | None, typer.Option(help="Stop training after this many minutes (recorded; not reproducible).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (subset, weights, evaluation samples).")] = 0,
) -> None:
    """Train the SMILES CharRNN on the MOSES training set, measure it (MOSES metrics) and register it."""
    from medbatch.ml import molecules, registry

    url = _db()
    try:
        trained = molecules.train_on_moses(
            subset=subset or None,
            epochs=epochs,
            seed=seed,
            config=molecules.MolConfig(units=units, layers=layers, learning_rate=learning_rate, batch_size=batch_size),
            eval_samples=eval_samples,
            time_budget_s=None if time_budget_min is None else time_budget_min * 60,
            log=lambda m: err.print(m, highlight=False),
        )
        directory = Path(out_dir or get_settings().model_dir)
        path = registry.save_versioned(lambda d: molecules.save_model(trained, d), directory, "molecules")
        card = molecules.write_card(trained, path)
        version = _register_trained(url, "molecules", path, trained.meta["metrics"], trained.meta["training_source"])
    except MedbatchError as exc:
        raise _handle(exc) from None
    err.print(f"saved {path} (version {version}), registered as the active molecules model; card {card}")
    out.print_json(
        json.dumps(
            {
                "name": "molecules",
                "version": version,
                "artifact": str(path),
                "metrics": trained.meta["metrics"],
                "reference_moses_charrnn": molecules.MOSES_CHARRNN,
            },
            default=str,
        )
    )


def _register_trained(url: str, name: str, path: Path, metrics: dict, source: str) -> str:
    """Register a freshly saved artifact as the active ``name`` model and audit the training; returns its version."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.ml import registry

    version = registry.file_version(path)
    with session_scope(url) as s:
        repo.register_model(
            s, name=name, version=version, uri=str(path.resolve()), metrics=metrics, training_source=source
        )
        repo.audit(s, actor=whoami(), action="train", detail={"model": name, "version": version, "source": source})
    return version


def _train(name: str, csv_file: Path | None, target: str, dataset: str | None, out_dir: Path | None, seed: int) -> None:
    from medbatch.ml import registry, tabular

    url = _db()
    try:
        if csv_file is not None:
            frame = tabular.load_training_csv(csv_file, name, target)
            source = str(csv_file.resolve())
        else:
            loaders = {"nhefs": tabular.load_nhefs, "framingham": tabular.load_framingham}
            if dataset not in loaders:
                raise InvalidInput(f"unknown dataset {dataset!r}; choose {', '.join(loaders)} or give a CSV")
            frame, source = loaders[dataset](), dataset
        err.print(f"training {name} on {len(frame)} rows from {source} ...")
        trainer = tabular.train_risk if name == "risk" else tabular.train_treatment
        trained = trainer(frame, seed=seed)
        directory = out_dir or get_settings().model_dir
        path = registry.save_versioned(
            lambda d: tabular.save_model(trained, d, training_source=source), Path(directory), name
        )
        version = _register_trained(url, name, path, trained.metrics, source)
    except MedbatchError as exc:
        raise _handle(exc) from None
    m = trained.metrics
    err.print(f"saved {path} (version {version}), registered as the active {name} model")
    err.print(f"model card: {path.with_suffix('.card.md')}")
    headline = ("auc", "accuracy", "balanced_accuracy", "brier", "sensitivity", "specificity")
    summary = {
        "name": name,
        "version": version,
        "artifact": str(path),
        "n_train": m.get("n_train"),
        "n_test": m.get("n_test"),
        "held_out": {k: m.get("model", {}).get(k) for k in headline if k in m.get("model", {})},
        "baseline": {k: m.get("baseline", {}).get(k) for k in ("description", "auc", "accuracy")},
        "winner_by_heldout_auc": m.get("winner_by_heldout_auc"),
    }
    out.print_json(json.dumps(summary, default=str))


@app.command()
def models(as_json: AsJson = False) -> None:
    """List registered models (the active one is used by new jobs)."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    with session_scope(_db()) as s:
        rows = [
            {
                "name": m.name,
                "version": m.version,
                "active": m.active,
                "uri": m.uri,
                "training_source": m.training_source,
                "created_at": m.created_at.isoformat(),
            }
            for m in repo.list_models(s)
        ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "version", "active", "uri", "trained on")
    for r in rows:
        table.add_row(r["name"], r["version"], "yes" if r["active"] else "", r["uri"], r["training_source"])
    out.print(table)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply the Alembic migrations to the configured database."""
    from medbatch.db.migrate import current_revision, upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    err.print(f"database {redact_url(url)} at revision {current_revision(url)}")


# --------------------------------------------------------------------------- processes


@worker_app.callback()
def worker(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated queues.")] = "tabular",
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", help="Processes or threads.")] = None,
    pool: Annotated[str, typer.Option("--pool", "-P", help="prefork, solo or threads.")] = "prefork",
    loglevel: Annotated[str | None, typer.Option(help="Log level [MEDBATCH_LOG_LEVEL].")] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", "-n", help="Worker name.")] = None,
    max_tasks_per_child: Annotated[int | None, typer.Option(help="Recycle a child after this many tasks.")] = None,
) -> None:
    """Run a Celery worker on the given queues."""
    if ctx.invoked_subcommand is not None:
        return
    from medbatch.worker.app import app as celery_app

    settings = get_settings()
    _db()
    argv = [
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "--loglevel",
        loglevel or settings.log_level,
        "-E",
        "-n",
        hostname or f"{queues.replace(',', '+')}@%h",
    ]
    if concurrency is None and pool == "prefork" and {"imaging", "molecules"} & set(queues.split(",")):
        # TensorFlow uses every core of its process already: one child on CPU (run one worker per GPU).
        concurrency = 1
    if concurrency:
        argv += ["-c", str(concurrency)]
    if max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
    celery_app.worker_main(argv=argv)


@worker_app.command("check")
def worker_check(
    hostname: Annotated[str, typer.Option("--hostname", "-n", help="The worker's name, e.g. tabular@host.")],
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Queues it consumes, comma-separated.")] = "tabular",
    stall_s: Annotated[int | None, typer.Option(help="Seconds without progress [MEDBATCH_WORKER_STALL_S].")] = None,
) -> None:
    """Exit non-zero when the worker is silent, or answers but finishes nothing while work waits."""
    from medbatch.worker.app import app as celery_app
    from medbatch.worker.health import check_worker

    settings = get_settings()
    health = check_worker(
        celery_app,
        settings.broker_url,
        hostname=hostname,
        queues=queues.split(","),
        stall_s=stall_s if stall_s is not None else settings.worker_stall_s,
    )
    (out if health.healthy else err).print(health.reason, highlight=False)
    raise typer.Exit(0 if health.healthy else 1)


@app.command()
def flower(
    port: Annotated[int | None, typer.Option(help="Port [MEDBATCH_FLOWER_PORT].")] = None,
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Start Flower, the Celery monitor, on this app (basic auth from MEDBATCH_FLOWER_BASIC_AUTH)."""
    settings = get_settings()
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "medbatch.worker.app",
        "flower",
        f"--port={port or settings.flower_port}",
        f"--address={address}",
    ]
    env = dict(os.environ)
    if settings.flower_basic_auth:
        # Through the environment, not argv, so the password does not show in the process list.
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    elif settings.environment == "production":
        raise _fail("set MEDBATCH_FLOWER_BASIC_AUTH=user:password before exposing Flower", EXIT_INVALID_INPUT)
    os.execve(sys.executable, argv, env)


@app.command()
def metrics(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9808,
    address: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    items_every_s: Annotated[
        float, typer.Option(help="Recount items at most this often (one index entry per item of tonight's jobs).")
    ] = 60.0,
) -> None:
    """Serve job-level Prometheus metrics on /metrics: items, batches, queue depth, age of the oldest, stalls."""
    import threading

    from medbatch.monitoring import serve

    settings = get_settings()
    try:
        server, _thread = serve(
            settings.database_url, settings.broker_url, port=port, address=address, item_counts_every_s=items_every_s
        )
    except OSError as exc:
        raise _fail(f"cannot listen on {address}:{port}: {exc.strerror or exc}", EXIT_UNAVAILABLE) from None
    err.print(f"serving medbatch metrics on http://{address}:{port}/metrics", highlight=False)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its inputs and results.")] = Path(
        "medbatch-demo"
    ),
    patients: Annotated[int, typer.Option(help="Synthetic patients per workload.")] = 2000,
    molecules: Annotated[int, typer.Option(min=0, help="Molecules to generate (0 skips the molecule job).")] = 200,
) -> None:
    """The main job on embedded defaults: local Redis if none, SQLite, workers, sample jobs, summary."""
    from medbatch.demo import run_demo

    code = run_demo(workdir=workdir, patients=patients, console=err, molecules=molecules)
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except MedbatchError as exc:  # anything a command did not handle itself
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
