"""``medbatch status|results|resume|reconcile``: one job (or the recent ones) after submission."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medbatch.cli._common import (
    AsJson,
    app,
    err,
    out,
    ready_db,
    sender,
    with_exit_codes,
)
from medbatch.config import get_settings
from medbatch.errors import InvalidInput
from medbatch.producer.identity import whoami


def _counts(url: str, job_id: int) -> dict:
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.db.tables import FINISHED_JOB

    with session_scope(url) as s:
        counts = repo.job_counts(s, job_id)
        if counts["workload"] in ("risk", "treatment", "xray"):
            counts["labels"] = {str(k): v for k, v in repo.label_counts(s, job_id).items()}
    if counts["workload"] == "molecules" and counts["status"] in FINISHED_JOB and counts.get("metrics") is None:
        # The worker that finished the job died before measuring it: measure it now (idempotent).
        from medbatch.pipeline.molecules import finalize_job

        counts["metrics"] = finalize_job(url, job_id)
    return counts


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
@with_exit_codes
def status(
    job_id: Annotated[int | None, typer.Argument(help="Job id; omit to list recent jobs.")] = None,
    as_json: AsJson = False,
    watch: Annotated[bool, typer.Option("--watch", help="Follow until the job finishes.")] = False,
) -> None:
    """Counts by state, progress and errors of a job (or the recent jobs)."""
    url = ready_db()
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
@with_exit_codes
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
    from medbatch.export import ERROR_COLUMNS, FORMATS, RESULT_COLUMNS, result_columns, write_rows

    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise InvalidInput("parquet is binary: give --output FILE")
    url = ready_db()
    with session_scope(url) as s:
        repo.get_job(s, job_id)
        rows = repo.iter_errors(s, job_id) if errors else repo.iter_results(s, job_id)
        columns = () if errors else result_columns(repo.result_detail_keys(s, job_id))
        try:
            n = write_rows(
                rows, fmt, output, columns=columns, empty_columns=ERROR_COLUMNS if errors else RESULT_COLUMNS
            )
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
