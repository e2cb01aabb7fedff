"""``medbatch status|results|resume|reconcile``: one job (or the recent ones) after submission."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medbatch.cli._common import (
    AsJson,
    app,
    database_label,
    err,
    out,
    ready_db,
    sender,
    with_exit_codes,
)
from medbatch.config import get_settings
from medbatch.errors import InvalidInput
from medbatch.exit_codes import ExitCode, job_exit_code
from medbatch.jobs import job_status, wait_for_job
from medbatch.producer.identity import whoami
from medbatch.progress import job_progress


def follow(url: str, job_id: int, *, quiet: bool = False) -> dict:
    """Wait until the job finishes (``--wait``, ``--watch``), with a progress bar on a terminal."""
    with job_progress(err, job_id, quiet=quiet) as on_progress:
        return wait_for_job(
            url, job_id, on_progress=on_progress, measure_missing=True, broker_url=get_settings().broker_url
        )


def _print_status(c: dict, url: str) -> None:
    table = Table(
        title=f"job {c['job_id']} · {c['workload']} · {c['status']}", caption=database_label(url), show_header=False
    )
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
    if c.get("dicom_deliveries"):
        table.add_row("DICOM to PACS", ", ".join(f"{k} {v}" for k, v in sorted(c["dicom_deliveries"].items())))
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
    if c.get("drift"):
        table.add_row("drift", drift_text(c["drift"]))
    table.add_row("created", c["created_at"] or "")
    table.add_row("finished", c["finished_at"] or "")
    out.print(table)


def drift_text(d: dict) -> str:
    """One line: the drifted features with their PSI / out-of-range share, or that none drifted."""
    if not d.get("available"):
        return "not measured (the model stores no training reference)"
    feats = d.get("features") or {}
    if d["flagged"]:
        parts = [
            f"{k} (PSI {feats[k]['psi']:.2f}, {feats[k]['out_of_range_share']:.0%} outside training range)"
            for k in d["flagged"]
        ]
        text = "DRIFT in " + ", ".join(parts) + " (a human should check these inputs)"
    else:
        text = f"none flagged over {d.get('n')} rows"
    if d.get("scores"):
        text += f"; mean score {d['scores']['mean']:.3f} vs {d['scores']['reference_mean']:.3f} held out"
    return text


def _add_molecule_metrics(table: Table, m: dict) -> None:
    """What was delivered, then the raw model row and the delivered row beside the MOSES CharRNN row."""
    from medbatch import molecule_metrics as mm

    if mm.delivery_line(m):
        table.add_row("delivered", mm.delivery_line(m))
        table.add_row("every sample", mm.outcomes_line(m))
    table.add_row("molecules", f"{mm.counts(m)} (raw: every sample)")
    table.add_row("metric", "   ".join(f"{k:>10}" for k in mm.TABLE_KEYS))
    for label, cells in mm.comparison_rows(m):
        table.add_row(label, "   ".join(f"{v:>10}" for v in cells))
    note = mm.fewer_than_k_note(m)
    if note:
        table.add_row("note", note)
    table.add_row("properties", f"{mm.properties(m)} (unique valid molecules)")
    if m.get("delivered"):
        table.add_row("delivered set", mm.properties(m["delivered"]))


@app.command()
@with_exit_codes
def status(
    job_id: Annotated[int | None, typer.Argument(help="Job id; omit to list recent jobs.")] = None,
    as_json: AsJson = False,
    watch: Annotated[bool, typer.Option("--watch", help="Follow until the job finishes.")] = False,
) -> None:
    """Counts by state, progress and errors of a job (or the recent jobs). Exits 0; with --watch, with the
    job's outcome (0 done, 5 rows rejected, 6 items failed, 1 failed)."""
    url = ready_db()
    if job_id is None:
        from medbatch.db import repository as repo
        from medbatch.db.session import session_scope

        with session_scope(url) as s:
            jobs = [repo.job_counts(s, j.id) for j in repo.list_jobs(s)]
        if as_json:
            out.print_json(json.dumps(jobs))
            return
        table = Table(
            "job", "workload", "status", "items", "done", "failed", "rejected", "created", caption=database_label(url)
        )
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
    counts = follow(url, job_id, quiet=as_json) if watch else job_status(url, job_id, measure_missing=True)
    if as_json:
        out.print_json(json.dumps(counts))
    else:
        _print_status(counts, url)
    if watch:  # the job's outcome, as `submit --wait` ends with it
        raise typer.Exit(job_exit_code(counts))


@app.command()
@with_exit_codes
def results(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json (JSON Lines) or parquet.")] = "csv",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write; default standard output.")
    ] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Export the recorded errors instead of results.")] = False,
) -> None:
    """Export a job's results (or errors), each row naming its source file, row and patient id. A job that has
    not finished exports what it has so far, says so on stderr and exits 7."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.export import ERROR_COLUMNS, FORMATS, RESULT_COLUMNS, result_columns, write_rows

    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise InvalidInput("parquet is binary: give --output FILE")
    url = ready_db()
    with session_scope(url) as s:
        counts = repo.job_counts(s, job_id)  # NotFound for no such job
        rows = repo.iter_errors(s, job_id) if errors else repo.iter_results(s, job_id)
        columns = () if errors else result_columns(repo.result_detail_keys(s, job_id))
        try:
            n = write_rows(
                rows, fmt, output, columns=columns, empty_columns=ERROR_COLUMNS if errors else RESULT_COLUMNS
            )
        except BrokenPipeError:
            raise  # `| head` had enough: with_exit_codes ends quietly
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
    if output:
        err.print(f"{n} {'errors' if errors else 'results'} written to {output}")
    if job_exit_code(counts) == ExitCode.UNFINISHED:
        done = counts["items_done"] + counts["items_failed"]
        err.print(
            f"job {job_id} has not finished ({counts['status']}, {done} of {counts['items_total']} items so far): "
            f"these {'errors' if errors else 'results'} are partial; `medbatch status {job_id} --watch` waits for it",
            highlight=False,
        )
        raise typer.Exit(ExitCode.UNFINISHED)


@app.command()
@with_exit_codes
def resume(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Re-send every unfinished batch of a job (after a broker loss, say). Safe to repeat: writes are idempotent."""
    from medbatch.producer.recovery import resume_job

    url = ready_db()
    sent = resume_job(job_id, database_url=url, send=sender())
    err.print(f"job {job_id}: {sent} unfinished batch(es) re-sent")


@app.command("reconcile")
@with_exit_codes
def reconcile_cmd(
    older_than_s: Annotated[
        int | None, typer.Option(help="Re-send batches untouched this long [MEDBATCH_RECONCILE_AFTER_S].")
    ] = None,
) -> None:
    """Find batches stuck past their deadline (lost messages, a Redis that lost its data) and re-send them."""
    from medbatch.producer.recovery import reconcile

    settings = get_settings()
    url = ready_db()
    sent = reconcile(database_url=url, send=sender(), older_than_s=older_than_s or settings.reconcile_after_s)
    err.print(f"{sum(sent.values())} stuck batch(es) re-sent" + (f" for jobs {sorted(sent)}" if sent else ""))
